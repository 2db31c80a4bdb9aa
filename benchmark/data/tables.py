"""Shared pieces of the real-dataset loaders.

Every published dataset is a metadata CSV (or a few) plus image files. The loaders differ
only in column names and value spellings, so the strict parts live here once:

- `read_csv` (in `dermbench.data.metadata`): strict UTF-8 CSV reading.
- `RowChecker`: a bad value in a row (an unknown label, a boolean spelled "maybe") either
  stops with an error naming the file, column, line and value, or (on_error=skip) drops the
  row and counts it by reason. Nothing is dropped without a count.
- `FileIndex`: finds image files from directory listings (one listing per folder), falling
  back to a case-insensitive match, because some releases (Derm7pt) name files in a
  different letter case than their CSV.
- `TableDataset`: the base class of the real datasets: option checking, locating the
  release under a data root, image resolution, split assignment, exclusion counts.
"""

from __future__ import annotations

import fnmatch
import os
from abc import abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import numpy as np
import pandas as pd

import dermbench.data.images as images
from dermbench.data.metadata import sha256_file
from dermbench.data.model import KNOWN_OPTIONS, Dataset, content_digest, image_list, select_options
from dermbench.data.splits import describe_split, resolve_split, split_in_use
from dermbench.errors import ConfigError, DataError

#: class names of the binary `malignant` task, shared by every dataset so test sets line up
MALIGNANT_CLASSES = ("benign", "malignant")
ON_ERROR = ("stop", "skip")
#: boolean spellings accepted in metadata files (compared lower-case)
TRUE_WORDS = frozenset({"true", "t", "yes", "y", "1", "1.0"})
FALSE_WORDS = frozenset({"false", "f", "no", "n", "0", "0.0"})
#: image statuses that keep a row; every other status is a reason to exclude it
USABLE_STATUS = ("ok", "case")
#: columns a loader may add to the sample table besides REQUIRED_COLUMNS
EXTRA_COLUMNS = ("tone3", "sex")


def require_unique(values: pd.Series, *, path: Path, column: str) -> None:
    """Ids must be unique: a repeated id makes every later join ambiguous, so it always stops."""
    dup = values[values.duplicated(keep=False)]
    if len(dup):
        lines = ", ".join(f"line {i + 2}" for i in dup.index[:6])
        shown = ", ".join(repr(v) for v in dup.unique()[:5])
        raise DataError(f"{path}: duplicate {column} value(s) {shown} ({lines})")


def parse_bool(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(parsed, bad): common boolean spellings (True/false/1/0/yes/no, any case) to bool."""
    lowered = values.astype(str).str.strip().str.lower()
    is_true = lowered.isin(TRUE_WORDS).to_numpy()
    is_false = lowered.isin(FALSE_WORDS).to_numpy()
    return is_true, ~(is_true | is_false)


def parse_int(values: pd.Series, allowed: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(parsed as float with NaN for bad, bad): integers among `allowed`; "3.0" counts as 3."""
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    ok = np.isin(numbers, np.asarray(allowed, dtype=float))
    return np.where(ok, numbers, np.nan), ~ok


class RowChecker:
    """Bad values in one metadata file: stop at the first problem, or mark rows and count them.

    Rows are positions in the frame `read_csv` returned, so line numbers are position + 2
    (the header is line 1).
    """

    def __init__(self, path: Path, n: int, on_error: str) -> None:
        self.path = Path(path)
        self.on_error = on_error
        self.bad = np.zeros(n, dtype=bool)
        self.counts: dict[str, int] = {}

    def flag(self, mask: np.ndarray, *, reason: str, column: str, values: pd.Series, expected: str) -> None:
        """Rows where `mask` is true have a bad `column` value; `reason` keys the exclusion count."""
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return
        if self.on_error == "stop":
            where = np.flatnonzero(mask)
            shown = "; ".join(f"line {i + 2}: {values.iloc[i]!r}" for i in where[:5])
            more = f" and {len(where) - 5} more" if len(where) > 5 else ""
            raise DataError(
                f"{self.path}: column {column!r} has {len(where)} bad value(s) ({reason}): {shown}{more}; "
                f"expected {expected}. Fix the file, or set data.on_error=skip to drop and count such rows."
            )
        new = mask & ~self.bad
        if new.any():
            self.counts[reason] = self.counts.get(reason, 0) + int(new.sum())
        self.bad |= mask

    @property
    def keep(self) -> np.ndarray:
        return ~self.bad


class FileIndex:
    """Finds files under a root from cached directory listings, exactly or ignoring letter case."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        #: per folder: ({name: is_dir}, {lower-case name: [names]}), or None when not a folder
        self._listings: dict[tuple[str, ...], tuple[dict[str, bool], dict[str, list[str]]] | None] = {}

    def _listing(self, parts: tuple[str, ...]) -> tuple[dict[str, bool], dict[str, list[str]]] | None:
        if parts not in self._listings:
            folder = self.root.joinpath(*parts)
            try:
                with os.scandir(folder) as entries:
                    kinds = {e.name: e.is_dir() for e in entries}
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                self._listings[parts] = None
            else:
                lower: dict[str, list[str]] = {}
                for name in kinds:
                    lower.setdefault(name.lower(), []).append(name)
                self._listings[parts] = (kinds, lower)
        return self._listings[parts]

    def find(self, relative: str) -> tuple[str | None, bool]:
        """(the path as it exists on disk, whether letter case had to change), or (None, False)."""
        parts = PurePosixPath(str(relative).replace("\\", "/")).parts
        if not parts:
            return None, False
        found: tuple[str, ...] = ()
        changed = False
        for position, part in enumerate(parts):
            listing = self._listing(found)
            if listing is None:
                return None, False
            kinds, lower = listing
            want_dir = position < len(parts) - 1
            if kinds.get(part) == want_dir:
                found += (part,)
                continue
            matches = [n for n in lower.get(part.lower(), []) if kinds[n] == want_dir]
            if len(matches) != 1:
                return None, False
            found += (matches[0],)
            changed = True
        return "/".join(found), changed


SPLIT_OPTIONS = ("split_rule", "split_dir", "split_mismatch")


def check_choice(dataset: str, option: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ConfigError(
            f"dataset {dataset!r}: option {option}={value!r} is not one of {', '.join(map(str, choices))}"
        )
    return value


class TableDataset(Dataset):
    """A published dataset read from its metadata CSV(s) and image files.

    Subclasses set `metadata` (the main CSV, relative to the release folder; alternatives in
    `metadata_alternatives`), `domain`, `layout` (one line for error messages) and implement
    `read` (metadata to records) and `encode` (records to labels for a task). Datasets without
    an official split set `split_rules` (see `dermbench.data.splits`).
    """

    metadata: ClassVar[str]
    metadata_alternatives: ClassVar[tuple[str, ...]] = ()
    #: other files of the release that must exist (relative to the release folder)
    other_files: ClassVar[tuple[str, ...]] = ()
    #: sub-folder names under a data root where the release may sit (besides the dataset name)
    aliases: ClassVar[tuple[str, ...]] = ()
    domain: ClassVar[str]
    layout: ClassVar[str] = ""
    #: dataset-specific options and their defaults (on_error is common to all)
    option_defaults: ClassVar[dict[str, Any]] = {}
    #: named split rules for datasets without an official split; empty = official splits
    split_rules: ClassVar[dict] = {}
    default_split_rule: ClassVar[str | None] = None

    def __init__(self, root: Path | None = None, **options: Any) -> None:
        super().__init__(root, **options)
        self.options = self._resolve_options(options)
        self.root = self._locate(self.root)
        self._records: pd.DataFrame | None = None
        self._splits: dict[bool, pd.Series] = {}
        #: rows dropped for bad values (on_error=skip), by reason
        self.problems: dict[str, int] = {}
        #: rows left out by the dataset's own rules (not errors), by reason
        self.policy_excluded: dict[str, int] = {}
        #: facts worth reporting that drop nothing (case-fixed names, unknown tones)
        self.notes: dict[str, int] = {}

    # ----- options and files -------------------------------------------------------------

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        KNOWN_OPTIONS.update(cls.option_defaults)
        if cls.split_rules:
            KNOWN_OPTIONS.update(SPLIT_OPTIONS)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every option of this dataset with its default."""
        defaults: dict[str, Any] = {"on_error": "stop", **cls.option_defaults}
        if cls.split_rules:
            defaults.update(split_rule=cls.default_split_rule, split_dir=None, split_mismatch="error")
        return defaults

    def _resolve_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The config's shared `data.options` over the defaults (see data.select_options), checked."""
        resolved = select_options(self.name, options, self.defaults())
        check_choice(self.name, "on_error", resolved["on_error"], ON_ERROR)
        if self.split_rules:
            check_choice(self.name, "split_rule", resolved["split_rule"], tuple(self.split_rules))
            check_choice(self.name, "split_mismatch", resolved["split_mismatch"], ("error", "resplit"))
        return resolved

    def _candidates(self) -> tuple[str, ...]:
        return (self.metadata, *self.metadata_alternatives)

    def _locate(self, root: Path | None) -> Path | None:
        """The release folder: `root` itself or its sub-folder named like the dataset or an alias."""
        if root is None:
            return None
        root = Path(root).expanduser()
        for sub in ("", self.name, *self.aliases):
            folder = root / sub if sub else root
            if any((folder / c).is_file() for c in self._candidates()):
                return folder
        return root

    def metadata_path(self) -> Path:
        """The main metadata file, or a DataError saying where it was looked for."""
        assert self.root is not None
        for candidate in self._candidates():
            if (self.root / candidate).is_file():
                return self.root / candidate
        looked = " or ".join(self._candidates())
        subs = ", ".join(f"{s}/" for s in (self.name, *self.aliases))
        raise DataError(
            f"dataset {self.name!r}: metadata file not found: no {looked} in {self.root} or its sub-folders "
            f"{subs}. Expected layout: {self.layout}. See docs/datasets.md, and run "
            f"`dermbench data check {self.name} --root DIR`."
        )

    def present(self) -> bool:
        """Whether the release's metadata files are all there (a cheap test, no parsing)."""
        return self.root is not None and all(exists for _, exists in self.expected_files())

    def expected_files(self) -> list[tuple[str, bool]]:
        """(relative path, exists) for each metadata file the release must have."""
        assert self.root is not None
        meta = next((c for c in self._candidates() if (self.root / c).is_file()), self.metadata)
        files = [meta, *self.other_files]
        return [(f, (self.root / f).is_file()) for f in files]

    def split_dir(self) -> Path:
        """Where generated split files are written: option split_dir, else <root>/splits."""
        assert self.root is not None
        chosen = self.options.get("split_dir")
        return Path(chosen).expanduser() if chosen else self.root / "splits"

    # ----- subclass hooks ----------------------------------------------------------------

    @abstractmethod
    def read(self) -> pd.DataFrame:
        """Metadata to records: one row per sample with sample_id, image, fst, tone_source and
        (official splits) split, plus whatever `encode` needs. Bad values go through a RowChecker."""

    @abstractmethod
    def encode(self, records: pd.DataFrame, task: str) -> tuple[np.ndarray, tuple[str, ...]]:
        """(labels 0..K-1 for every record, class names) for `task`."""

    def checker(self, path: Path, frame: pd.DataFrame) -> RowChecker:
        return RowChecker(path, len(frame), self.options["on_error"])

    def absorb(self, checker: RowChecker) -> None:
        """Add a checker's skip counts to this dataset's problem counts."""
        for reason, count in checker.counts.items():
            self.problems[reason] = self.problems.get(reason, 0) + count

    # ----- records, images, splits -------------------------------------------------------

    def records(self) -> pd.DataFrame:
        """All usable metadata rows with image status columns `_status` and `_listed` (the
        path as the CSV wrote it); cached, since several tasks share it."""
        if self._records is None:
            self.metadata_path()
            for other in self.other_files:
                if not (self.root / other).is_file():
                    raise DataError(
                        f"dataset {self.name!r}: {self.root / other} "
                        f"not found. Expected layout: {self.layout}"
                    )
            records = self.read().reset_index(drop=True)
            if records.empty:
                raise DataError(f"dataset {self.name!r}: no usable rows in {self.metadata_path()}")
            self._records = self._resolve_images(records)
        return self._records

    def _resolve_images(self, records: pd.DataFrame) -> pd.DataFrame:
        # RootResolver resolves each folder once (resolve_under_root per file is ~0.4 ms)
        resolve = images.RootResolver(self.root)
        index = FileIndex(self.root)
        status, actual = [], []
        for listed in records["image"].astype(str):
            try:
                resolve(listed)
            except images.ImageError as exc:
                status.append(exc.reason)
                actual.append(listed)
                continue
            found, changed = index.find(listed)
            if found is None:
                status.append("missing image file")
                actual.append(listed)
            else:
                status.append("case" if changed else "ok")
                actual.append(found)
        out = records.copy()
        out["_listed"] = records["image"].astype(str).to_numpy()
        out["image"] = actual
        out["_status"] = status
        fixed = status.count("case")
        if fixed:
            self.notes["image name differs in letter case from the metadata (matched ignoring case)"] = fixed
        return out

    def splits(self, *, create: bool = True) -> pd.Series:
        """The split of every record: official, or from the split file of the chosen rule.

        With create=False a missing or stale split file gives "unassigned" instead of writing one.
        """
        if create not in self._splits:
            records = self.records()
            if not self.split_rules:
                self._splits[create] = records["split"]
            else:
                rule = self.split_rules[self.options["split_rule"]]
                dropped = sum(self.problems.values())
                self._splits[create] = resolve_split(
                    records,
                    dataset=self.name,
                    rule=rule,
                    metadata_path=self.metadata_path(),
                    user_dir=self.split_dir(),
                    on_mismatch=self.options["split_mismatch"],
                    create=create,
                    refuse_create=f"{dropped} metadata row(s) were dropped under on_error=skip"
                    if dropped
                    else None,
                )
        return self._splits[create]

    def fingerprint(self) -> dict[str, Any]:
        """The release's content, independent of where it lies: the SHA-256 of every metadata file,
        the checksum of the split file in use (none for an official split, which the metadata
        holds), and the image list (paths relative to the release folder, byte sizes). A fixed
        CSV row, another split or other image files give another digest; a copy elsewhere the same."""
        records = self.records()
        self.splits()  # makes the split file when none exists yet, as loading would
        split: dict[str, Any] = {"official": True}
        if self.split_rules:
            rule = self.split_rules[self.options["split_rule"]]
            used = split_in_use(
                dataset=self.name, rule=rule, metadata_path=self.metadata_path(), user_dir=self.split_dir()
            )
            if used is None:  # splits() above returned, so one matches: only a file removed since
                raise DataError(
                    f"dataset {self.name!r}: the split file of rule {rule.name!r} vanished while reading it"
                )
            split = {"rule": rule.name, "file": used.csv.name, "sha256": sha256_file(used.csv)}
        assert self.root is not None
        content = {
            "dataset": self.name,
            "kind": "files",
            "metadata": {
                rel: sha256_file(self.root / rel) for rel, exists in self.expected_files() if exists
            },
            "split": split,
            "images": image_list(self.root, records["image"].astype(str)),
        }
        return {**content, "digest": content_digest(content)}

    def split_status(self) -> str:
        """One line on where this dataset's split comes from (for `dermbench data check`)."""
        if not self.split_rules:
            return "official split of the release"

        rule = self.split_rules[self.options["split_rule"]]
        return describe_split(
            dataset=self.name, rule=rule, metadata_path=self.metadata_path(), user_dir=self.split_dir()
        )

    # ----- the sample table --------------------------------------------------------------

    def table(self, task: str) -> pd.DataFrame:
        return self.samples(task)

    def classes(self, task: str) -> tuple[str, ...]:
        self.check_task(task)
        return self.encode(self.records(), task)[1]

    def samples(self, task: str, *, create_split: bool = True) -> pd.DataFrame:
        """The sample table for `task`: every usable row of every split, with exclusion counts
        in attrs["excluded"] ({reason: rows}) and facts in attrs["notes"]."""
        self.check_task(task)
        records = self.records()
        labels, _ = self.encode(records, task)
        split = self.splits(create=create_split)
        table = pd.DataFrame(
            {
                "sample_id": records["sample_id"].astype(str).to_numpy(),
                "image": records["image"].astype(str).to_numpy(),
                "label": np.asarray(labels, dtype=np.int64),
                "fst": records["fst"].to_numpy(dtype=float),
                "tone_source": records["tone_source"].astype(str).to_numpy(),
                "domain": self.domain,
                "split": split.astype(str).to_numpy(),
            }
        )
        for column in EXTRA_COLUMNS:
            if column in records:
                values = [None if v is None or v != v else v for v in records[column]]
                table[column] = pd.Series(values, index=table.index, dtype=object)  # None = missing
        keep = records["_status"].isin(USABLE_STATUS).to_numpy()
        excluded = {**self.problems, **self.policy_excluded}
        if not keep.all():
            self._refuse_or_count(records, keep, excluded)
            table = table[keep].reset_index(drop=True)
        if table.empty:
            raise DataError(f"dataset {self.name!r}: no usable rows under {self.root}")
        excluded.update(self.scheme_exclusions(table))
        table.attrs["excluded"] = excluded
        table.attrs["notes"] = dict(self.notes)
        return table

    def _refuse_or_count(self, records: pd.DataFrame, keep: np.ndarray, excluded: dict[str, int]) -> None:
        bad = records[~keep]
        if self.options["on_error"] == "stop":
            shown = "; ".join(
                f"{listed} ({why})" for listed, why in zip(bad["_listed"][:5], bad["_status"][:5])
            )
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            raise DataError(
                f"dataset {self.name!r}: {len(bad)} row(s) of {self.metadata_path()} have no usable image "
                f"under {self.root}: {shown}{more}. Run `dermbench data check {self.name}` for the full "
                "list, or set data.on_error=skip to drop and count them."
            )
        for reason, count in bad["_status"].value_counts().items():
            excluded[str(reason)] = excluded.get(str(reason), 0) + int(count)

    def scheme_exclusions(self, table: pd.DataFrame) -> dict[str, int]:
        """Rows kept in the table but outside one group scheme (DDI's "34" under tone2)."""
        return {}


def label_codes(values: pd.Series, classes: Sequence[str]) -> np.ndarray:
    """Positions of `values` in `classes` (every value must be a class)."""
    lookup = {c: i for i, c in enumerate(classes)}
    return np.array([lookup[v] for v in values.astype(str)], dtype=np.int64)


def match_patterns(values: Iterable[str], patterns: Sequence[str]) -> set[str]:
    """The values matched by any shell-style pattern ("melanoma*") in `patterns`."""
    return {v for v in values for p in patterns if fnmatch.fnmatchcase(v, p)}
