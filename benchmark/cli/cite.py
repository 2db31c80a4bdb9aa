"""`dermbench cite`: the BibTeX for exactly what a run used, or for a method and dataset before a run.

    dermbench cite RUN_DIR                          the references stored in the run's record
    dermbench cite --method M --dataset D [...]      what such a run would cite (backbone from the profile)
    dermbench cite --all [--markdown]               everything dermbench ships (docs/cite.md)

The output is a .bib file on stdout (comments say which entries each part of the run needs), or
with --markdown the list README embeds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from dermbench.errors import DermbenchError
from dermbench.results.citations import References, all_references, as_bibtex, as_markdown, run_references
from dermbench.results.records import METRICS_FILE, read_record
from dermbench.runner import resolve_config

err = Console(stderr=True)


def record_references(run_dir: Path, local: tuple[str, ...] = ()) -> References:
    """The run's stored references; for a record written before they were stored, the same
    gathered from its method, dataset, fingerprinted datasets and backbone (said on stderr)."""
    if not run_dir.is_dir():
        raise DermbenchError(f"{run_dir}: not a run folder (expected a directory holding {METRICS_FILE})")
    record = read_record(run_dir)
    if record.references is not None:
        return record.references
    used = [record.dataset, *(name for name, fp in (record.data_fingerprint or {}).items() if fp is not None)]
    backbone = (record.config.get("model") or {}).get("backbone")
    err.print(
        f"note: {run_dir / METRICS_FILE} predates stored references; gathered from its method, "
        "datasets and backbone",
        highlight=False,
        markup=False,
    )
    return run_references(
        method=record.method, datasets=used, backbones=[backbone] if backbone else [], local=local
    )


def planned_references(args: argparse.Namespace, local: tuple[str, ...]) -> References:
    """What a run of --method on the --dataset(s) would cite; the backbone is the resolved
    config's (profile and method defaults) unless --backbone names one."""
    datasets = args.dataset or []
    if not datasets:
        raise DermbenchError(
            "dermbench cite --method needs at least one --dataset (the training dataset first)"
        )
    backbone = args.backbone
    if backbone is None:
        cfg = resolve_config(
            flags={"method": args.method, "dataset": datasets[0], "profile": args.profile}, local=local
        )
        backbone = cfg["model"]["backbone"]
    return run_references(method=args.method, datasets=datasets, backbones=[backbone], local=local)


def cmd_cite(args: argparse.Namespace) -> int:
    local = tuple(args.plugin or ())
    chosen = [bool(args.run_dir), bool(args.method), bool(args.all)]
    if sum(chosen) != 1:
        raise DermbenchError("dermbench cite: give exactly one of RUN_DIR, --method M --dataset D, or --all")
    if args.dataset and not args.method:
        raise DermbenchError(
            "dermbench cite: --dataset goes with --method (a run folder names its own datasets)"
        )
    if args.all:
        refs = all_references()
    elif args.run_dir:
        refs = record_references(args.run_dir, local)
    else:
        refs = planned_references(args, local)
    sys.stdout.write(as_markdown(refs) if args.markdown else as_bibtex(refs))
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "cite",
        help="BibTeX for what a run used (methods, datasets, backbone, dermbench)",
        description="Print the references to cite for a finished run (from its record), for a "
        "method and dataset(s) before a run, or for everything dermbench ships.",
    )
    p.add_argument(
        "run_dir", metavar="RUN_DIR", type=Path, nargs="?", help="a run folder, e.g. runs/<run_id>"
    )
    p.add_argument("--method", metavar="M", help="a method, or a composition such as dermdiff+fairquantize")
    p.add_argument(
        "--dataset",
        metavar="D",
        action="append",
        help="the training dataset, then any test-set datasets (repeat the flag)",
    )
    p.add_argument("--backbone", metavar="NAME", help="a timm model name (default: the profile's)")
    p.add_argument(
        "--profile", default=None, help="profile whose backbone to cite (default: the base config's)"
    )
    p.add_argument(
        "--all", action="store_true", help="every built-in method and dataset, the backbones, dermbench"
    )
    p.add_argument("--markdown", action="store_true", help="a markdown list (docs/cite.md) instead of BibTeX")
    p.add_argument("--plugin", action="append", metavar="MODULE:OBJECT", help="also load this plugin")
    p.set_defaults(func=cmd_cite)
