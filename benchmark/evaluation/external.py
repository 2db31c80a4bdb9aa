"""A user's predictions file, matched to a test split's own sample ids (`dermbench evaluate`).

The file is CSV or parquet (by its suffix: .csv, .csv.gz, .tsv, .parquet, .pq; parquet needs
pyarrow, the optional extra `dermbench[parquet]`) with one row per sample: the id column
(`sample_id` unless told otherwise), an optional `test_set` column (needed when one file covers
several test sets), and one probability column per class, named by the class index or name:
`prob_0`, `prob_1`, ... or `prob_<class>` or `<class>` (e.g. `benign`, `malignant`). A binary file
may give only P(class 1) (`prob_1`, `prob_<class 1>` or `<class 1>`); P(class 0) is then
1 - P(class 1).

Matching never joins partially: every row of the split needs exactly one row of the file, every
row of the file must name a sample of the split, and every probability must be finite, in
[0, 1], with rows summing to 1 (within SUM_TOLERANCE). Anything else is a PredictionFileError
that lists each problem with its count and the first ids (unmatched, missing, duplicated,
non-finite, out of range, not summing to 1). A file that passes is used as given (rows are
renormalised to sum exactly to 1 only within the tolerance).

Imports data/ and the bottom layer only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from dermbench.data.model import Split
from dermbench.errors import DataError

ID_COLUMN = "sample_id"
TEST_SET_COLUMN = "test_set"
#: how far a row's probabilities may sum from 1
SUM_TOLERANCE = 1e-3
#: ids named per problem in an error message
SHOWN = 10
CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")


class PredictionFileError(DataError):
    """A predictions file that cannot be scored as it is; the message names the file and every problem."""


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (the fingerprint a record keeps of a predictions or weights file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


#: the optional extra that installs what reading parquet needs (pyproject.toml)
PARQUET_EXTRA = "dermbench[parquet]"


def _require_pyarrow(path: Path) -> None:
    """pyarrow is an optional dependency (a large wheel that CSV files do not need): without it a
    parquet file is refused naming the extra to install, not with pandas' generic ImportError."""
    try:
        import pyarrow  # noqa: F401, PLC0415 (only parquet files need it)
    except ImportError:
        raise PredictionFileError(
            f"{path}: reading parquet needs pyarrow, which is not installed: "
            f"pip install '{PARQUET_EXTRA}' (or pip install pyarrow), or save the predictions "
            "as CSV"
        ) from None


def read_prediction_file(path: str | Path, *, id_column: str = ID_COLUMN) -> pd.DataFrame:
    """The file as a table, ids as strings; a PredictionFileError for an unreadable file or one
    without the id column."""
    path = Path(path)
    if not path.is_file():
        raise PredictionFileError(f"predictions file {path} does not exist")
    name = path.name.lower()
    try:
        if name.endswith(PARQUET_SUFFIXES):
            _require_pyarrow(path)
            table = pd.read_parquet(path, engine="pyarrow")
        elif name.endswith(CSV_SUFFIXES):
            table = pd.read_csv(path, sep="\t" if name.endswith(".tsv") else ",", dtype={id_column: str})
        else:
            raise PredictionFileError(f"{path}: unknown file type; use .csv (or .tsv) or .parquet")
    except PredictionFileError:
        raise
    except Exception as exc:  # pandas raises several kinds on a malformed file
        raise PredictionFileError(
            f"{path}: cannot be read as a table ({type(exc).__name__}: {exc})"
        ) from None
    if id_column not in table.columns:
        raise PredictionFileError(
            f"{path}: no id column {id_column!r} (columns: {', '.join(map(str, table.columns))}); "
            "name the column with --id-column"
        )
    table = table.copy()
    table[id_column] = table[id_column].astype(str).str.strip()
    return table


def probability_columns(table: pd.DataFrame, classes: Sequence[str], *, where: str) -> tuple[list[str], bool]:
    """The columns holding each class's probability, in class order, and whether only P(class 1) is
    given (binary). A PredictionFileError says which names it looked for."""
    columns = set(map(str, table.columns))
    per_class = []
    for k, name in enumerate(classes):
        found = [c for c in (f"prob_{k}", f"prob_{name}", str(name)) if c in columns]
        per_class.append(found[0] if found else None)
    if all(per_class):
        return [str(c) for c in per_class], False
    if len(classes) == 2 and per_class[1] and not per_class[0]:
        return [str(per_class[1])], True
    wanted = " / ".join(f"prob_{k}, prob_{n} or {n}" for k, n in enumerate(classes))
    raise PredictionFileError(
        f"{where}: no probability column for class(es) "
        f"{', '.join(n for n, c in zip(classes, per_class) if not c)}; expected one column per class "
        f"({wanted}); a binary task may give P({classes[-1]}) alone"
    )


def _listed(label: str, ids: Sequence[str], total: int | None = None) -> str:
    total = len(ids) if total is None else total
    shown = ", ".join(repr(i) for i in list(ids)[:SHOWN])
    more = f", ... ({total - SHOWN} more)" if total > SHOWN else ""
    return f"{total} {label}: {shown}{more}"


def match_predictions(
    table: pd.DataFrame, split: Split, *, where: str, id_column: str = ID_COLUMN, test_set: str | None = None
) -> np.ndarray:
    """(n, K) probabilities for `split`'s rows in its order, from `table` (a read predictions file).

    With a `test_set` column only the rows naming `test_set` are matched; without it the whole file
    must be this split's. Every problem is collected into one PredictionFileError."""
    if TEST_SET_COLUMN in table.columns and test_set is not None:
        rows = table[table[TEST_SET_COLUMN].astype(str) == test_set]
        if rows.empty:
            named = sorted(table[TEST_SET_COLUMN].astype(str).unique())
            raise PredictionFileError(
                f"{where}: no row has {TEST_SET_COLUMN} {test_set!r} (the file names {', '.join(named)})"
            )
        where = f"{where} ({TEST_SET_COLUMN} {test_set})"
    else:
        rows = table
    classes = list(split.classes)
    columns, only_positive = probability_columns(rows, classes, where=where)
    ids = rows[id_column].astype(str).to_numpy()
    own = split.table["sample_id"].astype(str).to_numpy()
    own_set, file_set = set(own), set(ids)
    problems = []
    counts = pd.Series(ids).value_counts()
    duplicated = counts[counts > 1]
    if len(duplicated):
        problems.append(
            _listed(
                "duplicated id(s) (rows per id: "
                + ", ".join(f"{i!r} x{c}" for i, c in duplicated.head(SHOWN).items())
                + ")",
                duplicated.index.tolist(),
            )
        )
    unmatched = [i for i in dict.fromkeys(ids) if i not in own_set]
    if unmatched:
        problems.append(_listed(f"id(s) that are not samples of test set {split.name!r}", unmatched))
    missing = [i for i in own if i not in file_set]
    if missing:
        problems.append(_listed(f"sample(s) of test set {split.name!r} without a row", missing))
    values = rows[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    if only_positive:
        values = np.column_stack([1.0 - values[:, 0], values[:, 0]])
    finite = np.isfinite(values).all(axis=1)
    if (~finite).any():
        problems.append(_listed("row(s) with a missing or non-finite probability", ids[~finite].tolist()))
    in_range = finite & ((values >= 0) & (values <= 1)).all(axis=1)
    if (finite & ~in_range).any():
        problems.append(_listed("row(s) with a probability outside [0, 1]", ids[finite & ~in_range].tolist()))
    sums = values.sum(axis=1)
    bad_sum = in_range & (np.abs(sums - 1.0) > SUM_TOLERANCE)
    if bad_sum.any():
        problems.append(
            _listed(
                f"row(s) whose probabilities do not sum to 1 (within {SUM_TOLERANCE:g})",
                ids[bad_sum].tolist(),
            )
        )
    if problems:
        raise PredictionFileError(
            f"{where}: cannot score test set {split.name!r} ({len(own)} samples) from "
            f"{len(rows)} row(s); nothing was scored:\n  - " + "\n  - ".join(problems)
        )
    position = pd.Series(np.arange(len(ids)), index=ids)
    out = values[position.loc[own].to_numpy()]
    return out / out.sum(axis=1, keepdims=True)
