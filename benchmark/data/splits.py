"""Seeded, stratified train/val/test splits, made once and stored with a checksum.

A dataset without an official split gets one from a named `SplitRule`. The split is written
as `<dataset>-<rule>.csv` (columns sample_id, split) with `<dataset>-<rule>.json` beside it
({"dataset", "rule", "seed", "fractions", "stratify", "group", "method", "metadata_file",
"sha256", "n", "counts", "created", "dermbench_version"}). `sha256` is the checksum of the
metadata file the split was made from, so a changed metadata file is noticed instead of
silently getting a different split. Runs read the stored split; they never reshuffle.

Lookup order: the committed files in `dermbench/datasets/splits/` (the project's standard
splits), then the user's split folder (by default `<dataset root>/splits`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from sklearn.model_selection import train_test_split

from dermbench import __version__
from dermbench.data.metadata import read_csv, sha256_file
from dermbench.errors import DataError
from dermbench.files import read_json, write_text

SPLITS = ("train", "val", "test")
UNASSIGNED = "unassigned"


def committed_dir() -> Path:
    """The folder of committed split files (shipped inside the package)."""
    return Path(str(resources.files("dermbench.datasets").joinpath("splits")))


@dataclass(frozen=True)
class SplitRule:
    """How a split is made. `method` "stratified" is `make_split`; "sklearn" is two scikit-learn
    `train_test_split` calls (the FairQuantize code's procedure, see `sklearn_split`)."""

    name: str
    seed: int
    fractions: tuple[float, float, float]
    stratify: tuple[str, ...]
    group: str | None = None
    method: str = "stratified"
    description: str = ""

    def apply(self, table: pd.DataFrame) -> pd.Series:
        if self.method == "sklearn":
            return sklearn_split(table, seed=self.seed, fractions=self.fractions, stratify=self.stratify)
        return make_split(
            table, seed=self.seed, fractions=self.fractions, stratify=self.stratify, group=self.group
        )


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
    values = np.asarray(fractions, dtype=float)
    if values.shape != (3,) or (values < 0).any() or not math.isclose(values.sum(), 1.0, abs_tol=1e-9):
        raise DataError(
            f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}"
        )
    return values


def _allocate(n: int, fractions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Counts per split for a stratum of n: floors of n*f, the remainder drawn with
    probability proportional to the fractional parts, so small strata still reach val/test
    and the expected count of every split is exactly n*f."""
    exact = np.round(n * fractions, 9)
    counts = np.floor(exact).astype(int)
    left = n - int(counts.sum())
    if left > 0:
        frac = exact - counts
        picks = rng.choice(len(fractions), size=left, replace=False, p=frac / frac.sum())
        counts[picks] += 1
    return counts


def _keys(table: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"cannot stratify the split by missing column(s) {', '.join(missing)}")
    if not columns:
        return np.array([""] * len(table), dtype=object)
    parts = [table[c].astype(str).fillna("nan").to_numpy() for c in columns]
    return np.array(["\x1f".join(vals) for vals in zip(*parts)], dtype=object)


def make_split(
    table: pd.DataFrame,
    *,
    seed: int,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    stratify: Sequence[str] = (),
    group: str | None = None,
) -> pd.Series:
    """Assign every row to train/val/test, stratified by the `stratify` columns.

    Within each stratum (visited in sorted order) the units are permuted by one seeded
    generator and cut by `_allocate`. With `group` (e.g. a patient id), all rows of a group
    go to the same split and a group is stratified by its first row; an empty group value
    makes the row its own group. The same table, seed and arguments give the same split.
    """
    shares = _check_fractions(fractions)
    if table.empty:
        raise DataError("cannot split an empty table")
    n = len(table)
    if group is not None:
        if group not in table.columns:
            raise DataError(f"cannot group the split by missing column {group!r}")
        raw = table[group].astype(str).fillna("").to_numpy()
        names = np.array([v if v and v != "nan" else f"\x00row{i}" for i, v in enumerate(raw)], dtype=object)
        _, first, unit_of_row = np.unique(names, return_index=True, return_inverse=True)
    else:
        first, unit_of_row = np.arange(n), np.arange(n)
    keys = _keys(table, stratify)[first]
    rng = np.random.default_rng(seed)
    assigned = np.empty(len(first), dtype=object)
    for key in sorted(set(keys)):
        members = np.flatnonzero(keys == key)
        members = members[np.argsort(first[members], kind="stable")]  # table order, not name order
        order = rng.permutation(members)
        counts = _allocate(len(order), shares, rng)
        bounds = np.cumsum(counts)
        for split, start, stop in zip(SPLITS, np.r_[0, bounds[:-1]], bounds):
            assigned[order[start:stop]] = split
    return pd.Series(assigned[unit_of_row], index=table.index, name="split", dtype=object)


def sklearn_split(
    table: pd.DataFrame,
    *,
    seed: int,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    stratify: Sequence[str] = (),
) -> pd.Series:
    """The FairQuantize code's procedure (guoyb17/FairQuantize, `*_holdout_score_v2`): one
    `train_test_split` cuts the val+test share off (train is the first part), a second one
    splits that part into val and test (val first), both stratified and with `random_state=seed`.

    Stratum keys are the `stratify` values as text; scikit-learn orders the classes by sorting
    them, and the class order decides which random draws each class gets, so a key column must
    sort like the labels the paper's code stratified by (pandas category codes of the names for
    Fitzpatrick17k; for ISIC 2019 the one-hot column position, see datasets/isic.py).
    """
    shares = _check_fractions(fractions)
    labels = _keys(table, stratify) if stratify else None
    index = np.arange(len(table))
    # rounded, so the shares are the literals the paper's code passes (0.4 and 0.5 for 60/20/20)
    held = round(float(shares[1] + shares[2]), 12)
    try:
        train, rest = train_test_split(index, test_size=held, stratify=labels, random_state=seed)
        rest_labels = None if labels is None else labels[rest]
        test_share = round(float(shares[2]) / held, 12)
        val, test = train_test_split(rest, test_size=test_share, stratify=rest_labels, random_state=seed)
    except ValueError as exc:
        raise DataError(
            f"cannot make a stratified {shares.tolist()} split by {', '.join(stratify)}: {exc} "
            "(every stratum needs enough samples for each split)"
        ) from exc
    out = np.empty(len(table), dtype=object)
    out[train], out[val], out[test] = "train", "val", "test"
    return pd.Series(out, index=table.index, name="split", dtype=object)


# ----- split files --------------------------------------------------------------------------


@dataclass
class SplitFile:
    """A stored split: its CSV path and the JSON description beside it."""

    csv: Path
    meta: dict

    @property
    def sha256(self) -> str:
        return str(self.meta.get("sha256", ""))

    def assignments(self) -> pd.Series:
        """{sample_id: split} as a Series, validated."""
        frame = read_csv(self.csv, required=("sample_id", "split"))
        bad = ~frame["split"].isin(SPLITS)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"{self.csv}: line {i + 2}: split {frame['split'].iloc[i]!r} "
                f"is not one of {', '.join(SPLITS)}"
            )
        dup = frame["sample_id"][frame["sample_id"].duplicated()]
        if len(dup):
            raise DataError(f"{self.csv}: duplicate sample_id(s) {', '.join(dup.unique()[:5])}")
        return pd.Series(frame["split"].to_numpy(), index=frame["sample_id"].to_numpy())


def split_paths(directory: Path, dataset: str, rule: str) -> tuple[Path, Path]:
    stem = f"{dataset}-{rule}"
    return Path(directory) / f"{stem}.csv", Path(directory) / f"{stem}.json"


def find_split_file(directory: Path | None, dataset: str, rule: str) -> SplitFile | None:
    """The split file of `dataset`/`rule` in `directory`, or None."""
    if directory is None:
        return None
    csv, meta_path = split_paths(directory, dataset, rule)
    if not csv.is_file():
        return None
    if not meta_path.is_file():
        raise DataError(
            f"{csv} has no {meta_path.name} beside it (the checksum of the metadata it was made from)"
        )
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or "sha256" not in meta:
        raise DataError(f"{meta_path}: expected a JSON object with a 'sha256' key")
    return SplitFile(csv, meta)


def write_split(
    assignment: pd.Series,
    sample_ids: pd.Series,
    *,
    directory: Path,
    dataset: str,
    rule: SplitRule,
    metadata_path: Path,
    sha256: str,
) -> Path:
    """Write the split CSV and its JSON description; returns the CSV path."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create the split folder {directory} ({exc}); "
            "set the dataset option split_dir to a writable folder"
        ) from exc
    csv, meta_path = split_paths(directory, dataset, rule.name)
    frame = pd.DataFrame({"sample_id": sample_ids.astype(str).to_numpy(), "split": assignment.to_numpy()})
    counts = {s: int((frame["split"] == s).sum()) for s in SPLITS}
    meta = {
        "dataset": dataset,
        "rule": rule.name,
        "description": rule.description,
        "seed": rule.seed,
        "fractions": list(rule.fractions),
        "stratify": list(rule.stratify),
        "group": rule.group,
        "method": rule.method,
        "metadata_file": metadata_path.name,
        "sha256": sha256,
        "n": len(frame),
        "counts": counts,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dermbench_version": __version__,
    }
    # atomic, CSV first: a reader finds a split only once its .json (with the checksum) exists
    write_text(csv, frame.to_csv(index=False, lineterminator="\n"))
    write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    return csv


def _announce(message: str) -> None:
    Console(stderr=True).print(message, highlight=False, soft_wrap=True)


def _align(found: SplitFile, records: pd.DataFrame) -> pd.Series:
    assignments = found.assignments()
    mapped = records["sample_id"].astype(str).map(assignments)
    lacking = records["sample_id"][mapped.isna()]
    if len(lacking):
        raise DataError(
            f"{found.csv} has no split for {len(lacking)} sample id(s) (e.g. "
            f"{', '.join(lacking.astype(str)[:3])}) although its checksum matches the metadata; remake it "
            "with `dermbench data split ... --force`"
        )
    return pd.Series(mapped.to_numpy(dtype=object), index=records.index, name="split")


def _stored_split(
    dataset: str, rule: SplitRule, sha: str, user_dir: Path | None
) -> tuple[SplitFile | None, SplitFile | None]:
    """(the first stored split made from metadata with checksum `sha`, the first stale one)."""
    stale: SplitFile | None = None
    for directory in (committed_dir(), user_dir):
        found = find_split_file(directory, dataset, rule.name)
        if found is None:
            continue
        if found.sha256 == sha:
            return found, stale
        stale = stale or found
    return None, stale


def split_in_use(
    *, dataset: str, rule: SplitRule, metadata_path: Path, user_dir: Path | None
) -> SplitFile | None:
    """The stored split a run of `dataset`/`rule` reads (see resolve_split), or None when none matches."""
    return _stored_split(dataset, rule, sha256_file(metadata_path), user_dir)[0]


def resolve_split(
    records: pd.DataFrame,
    *,
    dataset: str,
    rule: SplitRule,
    metadata_path: Path,
    user_dir: Path | None,
    on_mismatch: str = "error",
    create: bool = True,
    refuse_create: str | None = None,
    announce: Callable[[str], None] = _announce,
) -> pd.Series:
    """The split of every record from the first stored split whose checksum matches the metadata.

    None stored: with `create`, make it by `rule`, write it to `user_dir` and say where.
    Only stale ones stored (the metadata changed): a DataError, or with on_mismatch="resplit"
    a warning and a fresh split in `user_dir`. With create=False nothing is written and the
    records get "unassigned".
    """
    sha = sha256_file(metadata_path)
    found, stale = _stored_split(dataset, rule, sha, user_dir)
    if found is not None:
        return _align(found, records)
    if not create:
        return pd.Series(UNASSIGNED, index=records.index, name="split", dtype=object)
    if user_dir is None:
        raise DataError(
            f"dataset {dataset!r}: no split file for rule {rule.name!r} and no folder to write one"
        )
    if stale is not None:
        message = (
            f"{metadata_path} (sha256 {sha[:12]}...) does not match the split file {stale.csv} "
            f"(made from sha256 {stale.sha256[:12]}...): the metadata changed since the split was made"
        )
        if on_mismatch != "resplit":
            raise DataError(
                message + ". Restore the original metadata file, or set the dataset option "
                f"split_mismatch=resplit to make a fresh split in {user_dir} "
                "(results are then not comparable with the standard split)."
            )
        announce(
            f"[yellow]warning:[/] {message}; making a fresh split in {user_dir} (not the standard split)"
        )
    if refuse_create:
        raise DataError(
            f"dataset {dataset!r}: no split file for rule {rule.name!r} matches {metadata_path.name} yet, "
            f"and {refuse_create}. A split made now would depend on that; make it once from the whole "
            f"metadata with on_error=stop: `dermbench data split {dataset}`"
        )
    assignment = rule.apply(records)
    path = write_split(
        assignment,
        records["sample_id"],
        directory=user_dir,
        dataset=dataset,
        rule=rule,
        metadata_path=metadata_path,
        sha256=sha,
    )
    announce(
        f"{dataset}: created split file {path} (rule {rule.name!r}, seed {rule.seed}); later runs reuse it. "
        f"Commit it and its .json to datasets/splits/ to make it the project's standard split."
    )
    return pd.Series(assignment.to_numpy(dtype=object), index=records.index, name="split")


def describe_split(*, dataset: str, rule: SplitRule, metadata_path: Path, user_dir: Path | None) -> str:
    """Where the split of `dataset`/`rule` would come from, without writing anything."""
    sha = sha256_file(metadata_path)
    stale = []
    for label, directory in (("committed", committed_dir()), ("local", user_dir)):
        found = find_split_file(directory, dataset, rule.name)
        if found is None:
            continue
        if found.sha256 == sha:
            return f"rule {rule.name!r}: {label} split file {found.csv} (checksum matches)"
        stale.append(f"{label} {found.csv}")
    if stale:
        return (
            f"rule {rule.name!r}: CHECKSUM MISMATCH with {', '.join(stale)}: the metadata changed since the "
            "split was made (set split_mismatch=resplit to make a fresh one)"
        )
    return (
        f"rule {rule.name!r}: no split file yet; the first run creates one in {user_dir} "
        f"(or run `dermbench data split {dataset}`)"
    )
