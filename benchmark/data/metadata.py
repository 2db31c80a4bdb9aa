"""Reading published metadata files: a strict CSV reader and file checksums.

`read_csv` keeps every value as a stripped string and raises a `DataError` naming the file
for a missing, empty, non-UTF-8 or malformed file, for a column name that appears twice in the
header (pandas would rename the copy `name.1` and a reader would silently take the first), and
for missing columns (naming the delimiter when the header holds them joined by another one).
`sha256_file` pins split files and run ids to the exact metadata they were made from.
"""

from __future__ import annotations

import csv
import hashlib
import io
import warnings
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from dermbench.errors import DataError


def read_csv(path: Path, *, required: Iterable[str] = ()) -> pd.DataFrame:
    """Read a metadata CSV as stripped strings, failing clearly on anything malformed.

    Only UTF-8 (with or without a byte-order mark) is accepted: every supported release is
    UTF-8, so another encoding means the file was re-saved by some tool and its text values
    may have changed; the error says so instead of guessing an encoding.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}, line {line}); "
            "the published file is UTF-8, so re-download it or re-save it as UTF-8"
        ) from exc
    if not text.strip():
        raise DataError(f"{path}: the file is empty (expected a CSV header and rows)")
    header = _header(path, text)
    try:
        with warnings.catch_warnings():
            # rows longer than the header: pandas would drop fields (or shift them into an index)
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(
                io.StringIO(text), dtype=str, keep_default_na=False, na_filter=False, index_col=False
            )
    except pd.errors.ParserWarning as exc:
        raise DataError(f"{path}: malformed CSV: {_longest_row(text)}") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: malformed CSV: {exc}") from exc
    frame.columns = [str(c).strip() for c in frame.columns]  # no `name.1` copies: _header refused repeats
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(frame.columns)})"
            + _other_delimiter(header, missing)
        )
    if frame.empty:
        raise DataError(f"{path}: the file has a header but no rows")
    for column in frame.columns:
        frame[column] = frame[column].astype(str).str.strip()
    return frame.reset_index(drop=True)


#: delimiters a re-saved metadata file may use instead of commas, as the error names them
OTHER_DELIMITERS = {";": "semicolons (;)", "\t": "tabs", "|": "vertical bars (|)"}


def _header(path: Path, text: str) -> list[str]:
    """The header's column names (stripped); a DataError naming a name that appears more than once
    and its positions (1-based)."""
    try:
        names = [name.strip() for name in next(csv.reader(io.StringIO(text, newline="")), [])]
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV header: {exc}") from exc
    positions: dict[str, list[int]] = {}
    for number, name in enumerate(names, start=1):
        positions.setdefault(name, []).append(number)
    for name, where in positions.items():
        if len(where) > 1:
            listed = ", ".join(map(str, where[:-1])) + f" and {where[-1]}"
            raise DataError(
                f"{path}: column {name!r} appears {len(where)} times in the header (columns {listed}); "
                "a reader would take one copy and ignore the other, so remove or rename the extra one"
            )
    return names


def _other_delimiter(header: list[str], missing: list[str]) -> str:
    """A hint when the header holds the missing columns joined by another delimiter than commas."""
    line = ",".join(header)
    for delimiter, name in OTHER_DELIMITERS.items():
        parts = {part.strip().strip('"') for part in line.split(delimiter)}
        if len(parts) > 1 and all(column in parts for column in missing):
            return (
                f"; the header holds them separated by {name}, not commas: the file is {name.split(' (')[0]}-"
                "separated (re-saved by a spreadsheet?); save it comma-separated or re-download it"
            )
    return ""


def _longest_row(text: str) -> str:
    """Which line has more fields than the header (for the error message)."""
    rows = csv.reader(io.StringIO(text, newline=""))  # "\r" ends a line, as it does for pandas
    try:
        header = len(next(rows, []))
        for number, row in enumerate(rows, start=2):
            if len(row) > header:
                return f"line {number} has {len(row)} fields but the header has {header}"
    except csv.Error as exc:
        return f"{exc} (line {rows.line_num})"
    return "a row has more fields than the header"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (pins a split file to the metadata it was made from)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
