"""`dermbench data ...`: see what a dataset folder holds, summarise it, fetch Fitzpatrick17k,
make split files.

    dermbench data list [--root DIR]
    dermbench data check NAME [--root DIR] [--no-decode] [--option KEY=VALUE ...]
    dermbench data summary NAME [--root DIR] [--json] [--option KEY=VALUE ...]
    dermbench data fetch fitz17k [--root DIR] [--concurrency N] [--retries N] [--timeout S]
    dermbench data split NAME [--root DIR] [--rule RULE] [--out DIR] [--force]

The root is --root, else $DERMBENCH_DATA (its <NAME>/ sub-folder when there is one). `check`
and `summary` read with on_error=skip, so they report every problem instead of stopping at
the first; pass `--option on_error=stop` to see what a default run would refuse.
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from rich.console import Console
from rich.progress import track
from rich.table import Table

from dermbench.data.fetch import fetch_fitz17k
from dermbench.data.images import decode_image
from dermbench.data.metadata import sha256_file
from dermbench.data.model import Dataset, data_root, validate_table
from dermbench.data.splits import find_split_file, write_split
from dermbench.data.tables import USABLE_STATUS, TableDataset
from dermbench.errors import ConfigError, DataError, unknown_name
from dermbench.plugins import dataset_refs, load_target, make_dataset

console = Console()
#: how many problem files `data check` lists per kind (all are counted)
SHOW = 10
#: `data check` decodes at this size: enough to find truncated or non-image files, fast on big sets
CHECK_DECODE_SIZE = 32


# ----- shared helpers ------------------------------------------------------------------------


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """--option KEY=VALUE pairs; values are YAML (so lists, numbers and booleans work)."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option {pair!r}: expected KEY=VALUE, e.g. --option on_error=skip")
        try:
            options[key.strip()] = yaml.safe_load(value) if value else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--option {pair!r}: value is not valid YAML ({exc})") from exc
    return options


def resolve_root(name: str, given: str | None) -> Path | None:
    """--root, else $DERMBENCH_DATA via `data_root`; an error when neither names an existing folder."""
    if given:
        root = Path(given).expanduser()
        if not root.is_dir():
            raise DataError(f"--root {root}: no such folder")
        return root
    root = data_root(name, None)
    if root is not None and not root.is_dir():
        raise DataError(f"DERMBENCH_DATA points at {root}, which is not a folder")
    return root


def open_dataset(
    name: str, root_arg: str | None, options: dict[str, Any], defaults: dict[str, Any] | None = None
) -> Dataset:
    """Instantiate dataset `name` with its root resolved; `defaults` (for the real datasets)
    are overridden by the user's `options`."""
    refs = dataset_refs()
    if name not in refs:
        raise unknown_name("dataset", name, refs)
    cls = load_target(refs[name].target)
    root = resolve_root(name, root_arg) if cls.requires_root else None
    if cls.requires_root and root is None:
        raise DataError(f"dataset {name!r}: pass --root DIR (the folder holding it) or set DERMBENCH_DATA")
    if issubclass(cls, TableDataset):
        options = {**(defaults or {}), **options}
    return cls(root=root, **options)


def _label(value: object) -> str:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "missing" if value is None or value != value else str(value)
    return "missing" if number != number else str(int(number))


def _count(values) -> dict[str, int]:
    """{value as text: count}, numbers in order and "missing" last."""
    counts: dict[str, int] = {}
    for value in values:
        key = _label(value)
        counts[key] = counts.get(key, 0) + 1

    def order(key: str) -> tuple[int, float, str]:
        if key == "missing":
            return (2, 0.0, key)
        try:
            return (0, float(key), key)
        except ValueError:
            return (1, 0.0, key)

    return {k: counts[k] for k in sorted(counts, key=order)}


def sample_table(dataset: Dataset, task: str = "malignant") -> pd.DataFrame:
    """Every row of the dataset for `task`, without writing a split file (group columns added)."""
    if isinstance(dataset, TableDataset):
        table = dataset.samples(task, create_split=False)
    else:
        table = dataset.table(task)
    attrs = dict(table.attrs)
    out = validate_table(table, source=f"dataset {dataset.name!r}")
    out.attrs.update(attrs)
    return out


def summary_counts(dataset: Dataset) -> dict[str, Any]:
    """The `data summary --json` document: counts over every row (all splits) of the malignant task."""
    table = sample_table(dataset)
    return {
        "dataset": dataset.name,
        "n": int(len(table)),
        "by_fst": _count(table["fst"]),
        "by_tone3": _count(table["tone3"]),
        "by_label": _count(table["label"]),
        "excluded": {str(k): int(v) for k, v in table.attrs.get("excluded", {}).items()},
    }


# ----- commands ------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    """Every known dataset and whether its metadata is found under the data root."""
    table = Table(title="datasets")
    for column in ("name", "tasks", "root", "found"):
        table.add_column(column)
    for name, ref in sorted(dataset_refs().items()):
        cls = load_target(ref.target)
        tasks = ", ".join(cls.tasks)
        if not cls.requires_root:
            table.add_row(name, tasks, "(embedded)", "yes")
            continue
        base = Path(args.root).expanduser() if args.root else None
        root = data_root(name, str(base) if base else None)
        if root is None or not issubclass(cls, TableDataset):
            table.add_row(name, tasks, str(root or "-"), "?" if root else "no root")
            continue
        dataset = cls(root=root)
        table.add_row(name, tasks, str(dataset.root), "yes" if dataset.present() else "no")
    console.print(table)
    return 0


def _decode_all(root: Path, files: list[str], workers: int | None) -> dict[str, str]:
    """{file: reason} for every file `decode_image` refuses."""

    def one(relative: str) -> tuple[str, str | None]:
        try:
            decode_image(root / relative, CHECK_DECODE_SIZE)
        except DataError as exc:
            return relative, str(getattr(exc, "reason", "")) or str(exc)
        return relative, None

    workers = workers or min(8, os.cpu_count() or 1)
    failures: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        if len(files) > 200:
            results = track(
                pool.map(one, files), total=len(files), description="decoding images", console=console
            )
        else:
            results = pool.map(one, files)
        for relative, reason in results:
            if reason is not None:
                failures[relative] = reason
    return failures


def _show_list(title: str, items: list[str]) -> None:
    console.print(f"[yellow]{title}[/]: {len(items)}", highlight=False)
    for item in items[:SHOW]:
        console.print(f"  {item}", highlight=False, soft_wrap=True)
    if len(items) > SHOW:
        console.print(f"  ... and {len(items) - SHOW} more", highlight=False)


def _split_table(table: pd.DataFrame) -> Table:
    out = Table(title="usable samples by split (malignant task, tone3)")
    for column in ("split", "n", "benign", "malignant", "A", "B", "C", "tone missing"):
        out.add_column(column, justify="right" if column != "split" else "left")
    for split, part in table.groupby("split", sort=True):
        tone = part["tone3"].astype(object)
        out.add_row(
            str(split),
            str(len(part)),
            str(int((part["label"] == 0).sum())),
            str(int((part["label"] == 1).sum())),
            *(str(int((tone == g).sum())) for g in ("A", "B", "C")),
            str(int(tone.isna().sum())),
        )
    return out


def cmd_check(args: argparse.Namespace) -> int:
    """What is present, missing, unreadable or case-mismatched; exit 0 ok, 1 problems, 2 unusable."""
    dataset = open_dataset(args.name, args.root, parse_options(args.option), {"on_error": "skip"})
    if not isinstance(dataset, TableDataset):
        table = sample_table(dataset)
        console.print(f"{args.name}: {len(table)} samples (no files to check)", highlight=False)
        console.print(_split_table(table))
        return 0
    console.print(f"[bold]{dataset.name}[/] at {dataset.root}", highlight=False, soft_wrap=True)
    files = dataset.expected_files()
    for relative, exists in files:
        mark = "[green]present[/]" if exists else "[red]MISSING[/]"
        console.print(f"  {mark} {relative}", highlight=False, soft_wrap=True)
    if not all(exists for _, exists in files):
        console.print(f"[red]unusable[/]: expected layout: {dataset.layout}", highlight=False, soft_wrap=True)
        return 2
    try:
        records = dataset.records()
    except DataError as exc:
        console.print(f"[red]unusable[/]: {exc}", highlight=False, soft_wrap=True)
        return 2
    status = records["_status"]
    missing = records.loc[status == "missing image file", "_listed"].tolist()
    odd = records[~status.isin((*USABLE_STATUS, "missing image file"))]
    refused = [f"{listed} ({why})" for listed, why in zip(odd["_listed"], odd["_status"])]
    fixed = records[status == "case"]
    case = [f"{listed} -> {actual}" for listed, actual in zip(fixed["_listed"], fixed["image"])]
    usable = records.loc[status.isin(USABLE_STATUS), "image"].tolist()
    console.print(
        "metadata rows: "
        f"{len(records) + sum(dataset.problems.values()) + sum(dataset.policy_excluded.values())}, "
        f"with an image file: {len(usable)}",
        highlight=False,
    )
    for reason, count in {**dataset.problems, **dataset.policy_excluded}.items():
        console.print(f"[yellow]excluded[/] {count} row(s): {reason}", highlight=False, soft_wrap=True)
    if missing:
        _show_list("missing image files", missing)
    if refused:
        _show_list("image paths refused", refused)
    if case:
        _show_list("names matched ignoring letter case (metadata -> disk)", case)
    unreadable: dict[str, str] = {}
    if not args.no_decode and usable:
        unreadable = _decode_all(dataset.root, usable, args.workers)
        if unreadable:
            _show_list("unreadable images", [f"{f} ({why})" for f, why in sorted(unreadable.items())])
        else:
            console.print(f"decoded all {len(usable)} images", highlight=False)
    try:
        console.print(f"split: {dataset.split_status()}", highlight=False, soft_wrap=True)
        table = sample_table(dataset)
    except DataError as exc:
        console.print(f"[red]unusable[/]: {exc}", highlight=False, soft_wrap=True)
        return 2
    if unreadable:
        table = table[~table["image"].isin(unreadable)]
    console.print(_split_table(table))
    for note, count in table.attrs.get("notes", {}).items():
        console.print(f"note: {count} {note}", highlight=False, soft_wrap=True)
    problems = len(missing) + len(refused) + len(unreadable) + sum(dataset.problems.values())
    if table.empty:
        console.print("[red]unusable[/]: no sample has a readable image", highlight=False)
        return 2
    if problems:
        console.print(
            f"[yellow]{problems} problem row(s)[/]: a run stops on them unless data.on_error=skip "
            "(then they are dropped and counted)",
            highlight=False,
        )
        return 1
    console.print("[green]ok[/]", highlight=False)
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    """Counts by tone and label over every row; `--json` prints them as one JSON object."""
    dataset = open_dataset(args.name, args.root, parse_options(args.option), {"on_error": "skip"})
    counts = summary_counts(dataset)
    if args.json:
        print(json.dumps(counts))
        return 0
    console.print(f"[bold]{counts['dataset']}[/]: {counts['n']} samples", highlight=False)
    for key, title in (("by_fst", "FST"), ("by_tone3", "tone3"), ("by_label", "malignant label")):
        table = Table(title=title)
        table.add_column("group")
        table.add_column("n", justify="right")
        for group, n in counts[key].items():
            table.add_row(group, str(n))
        console.print(table)
    for reason, n in counts["excluded"].items():
        console.print(f"excluded {n}: {reason}", highlight=False, soft_wrap=True)
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    """Download Fitzpatrick17k's images from the URLs in its CSV; lists every failure."""
    if args.name != "fitz17k":
        raise DataError(
            f"only fitz17k can be fetched (its CSV lists image URLs); get {args.name!r} from its official "
            "page "
            "as described in docs/datasets.md"
        )

    root = resolve_root(args.name, args.root)
    if root is None:
        raise DataError("pass --root DIR (the folder holding fitzpatrick17k.csv) or set DERMBENCH_DATA")
    fitz17k = make_dataset(args.name, root=root, options={})  # through the plugins, as every dataset
    folder = fitz17k.root
    csv_path = folder / fitz17k.metadata
    if not csv_path.is_file():
        raise DataError(
            f"{csv_path} not found: download fitzpatrick17k.csv from "
            "https://github.com/mattgroh/fitzpatrick17k "
            f"into {folder} first"
        )
    result = fetch_fitz17k(
        csv_path,
        folder / "images",
        concurrency=args.concurrency,
        retries=args.retries,
        timeout=args.timeout,
        progress=not args.no_progress,
    )
    console.print(f"fitz17k: {result.summary()} (into {folder / 'images'})", highlight=False, soft_wrap=True)
    if not result.failed:
        return 0
    failures = folder / "fetch-failures.csv"
    result.write_failures(failures)
    table = Table(title=f"{len(result.failed)} failed download(s)")
    for column in ("md5hash", "url", "reason"):
        table.add_column(column, overflow="fold")
    for md5, url, reason in result.failed:
        table.add_row(md5, url, reason)
    console.print(table)
    console.print(
        f"failures saved to {failures}; rerun to retry them. A run stops on the missing images unless "
        "data.on_error=skip (then they are dropped and counted).",
        highlight=False,
        soft_wrap=True,
    )
    return 1


def cmd_split(args: argparse.Namespace) -> int:
    """Make (or confirm) the split file of a dataset without an official split."""
    extra = {"split_rule": args.rule} if args.rule else {}
    dataset = open_dataset(args.name, args.root, {**parse_options(args.option), **extra})
    if not isinstance(dataset, TableDataset) or not dataset.split_rules:
        raise DataError(
            f"dataset {args.name!r} uses the split it was published with; there is no split file to make"
        )
    rule = dataset.split_rules[dataset.options["split_rule"]]
    out = Path(args.out).expanduser() if args.out else dataset.split_dir()
    records = dataset.records()
    metadata = dataset.metadata_path()
    sha = sha256_file(metadata)
    existing = find_split_file(out, dataset.name, rule.name)
    if existing is not None and not args.force:
        if existing.sha256 == sha:
            console.print(
                f"{existing.csv} already exists and matches {metadata.name} (sha256 {sha[:12]}...); "
                "nothing to do (--force rewrites it; the seeded procedure gives the same split)",
                highlight=False,
                soft_wrap=True,
            )
            return 0
        raise DataError(
            f"{existing.csv} was made from different metadata (sha256 {existing.sha256[:12]}... != "
            f"{sha[:12]}...); "
            "pass --force to replace it"
        )
    assignment = rule.apply(records)
    path = write_split(
        assignment,
        records["sample_id"],
        directory=out,
        dataset=dataset.name,
        rule=rule,
        metadata_path=metadata,
        sha256=sha,
    )
    counts = assignment.value_counts()
    shown = ", ".join(f"{s} {int(counts.get(s, 0))}" for s in ("train", "val", "test"))
    console.print(
        f"wrote {path} ({shown}; rule {rule.name!r}: {rule.description}; seed {rule.seed})",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        "commit it with its .json to datasets/splits/ to make it the project's standard split",
        highlight=False,
    )
    return 0


# ----- argparse ------------------------------------------------------------------------------


def _add_common(parser: argparse.ArgumentParser, *, options: bool = True) -> None:
    parser.add_argument(
        "name", help="dataset name, e.g. fitz17k, ddi, derm7pt-derm (see `dermbench data list`)"
    )
    parser.add_argument("--root", help="folder holding the dataset (default: $DERMBENCH_DATA/<name>)")
    if options:
        parser.add_argument(
            "--option",
            action="append",
            metavar="KEY=VALUE",
            help="dataset option, as under data.options (repeatable)",
        )


def register(subparsers) -> None:
    """Add `dermbench data` and its actions."""
    data = subparsers.add_parser("data", help="check, summarise, fetch and split datasets")
    actions = data.add_subparsers(dest="data_action", metavar="ACTION")

    def usage(_args: argparse.Namespace) -> int:
        data.print_help()
        return 2

    data.set_defaults(func=usage)

    p = actions.add_parser("list", help="known datasets and whether they are found")
    p.add_argument("--root", help="data root holding one folder per dataset (default: $DERMBENCH_DATA)")
    p.set_defaults(func=cmd_list)

    p = actions.add_parser("check", help="what is present, missing, unreadable or case-mismatched")
    _add_common(p)
    p.add_argument("--no-decode", action="store_true", help="skip decoding every image (faster)")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: up to 8)")
    p.set_defaults(func=cmd_check)

    p = actions.add_parser("summary", help="sample counts by tone and label")
    _add_common(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_summary)

    p = actions.add_parser("fetch", help="download Fitzpatrick17k's images from the URLs in its CSV")
    _add_common(p, options=False)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--retries", type=int, default=3)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_fetch)

    p = actions.add_parser("split", help="make the split file of a dataset without an official split")
    _add_common(p)
    p.add_argument("--rule", help="split rule, e.g. standard or fairquantize (default: the dataset's)")
    p.add_argument("--out", help="folder for the split file (default: <root>/splits or option split_dir)")
    p.add_argument("--force", action="store_true", help="rewrite an existing split file")
    p.set_defaults(func=cmd_split)
