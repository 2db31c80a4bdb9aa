"""`dermbench leaderboard [--check]`: regenerate (or check) the committed leaderboards from run records."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from dermbench.results.leaderboard import DEFAULT_RUNS, collect, display_path, scan_runs
from dermbench.results.leaderboard_render import (
    DEFAULT_OUT,
    build_outputs,
    check_outputs,
    generated_markdown,
    regenerate_command,
    write_outputs,
)


def run_leaderboard(args: argparse.Namespace) -> int:
    """The `dermbench leaderboard` command: regenerate, or with --check compare and fail when stale."""
    roots = [Path(p) for p in (args.runs or [DEFAULT_RUNS])]
    out_dir = Path(args.out)
    if args.check and not any(root.is_dir() and scan_runs([root]).finished for root in roots):
        return _check_without_records(roots, out_dir)
    frame = collect(roots)
    root_names = [display_path(r) for r in roots]
    outputs = build_outputs(frame, root_names, display_path(out_dir))
    runs = frame.attrs["runs"]
    print(f"collected {len(runs)} finished run(s) from {', '.join(root_names)}")
    if frame.attrs["unfinished"]:
        shown = ", ".join(frame.attrs["unfinished"][:5]) + (
            " ..." if len(frame.attrs["unfinished"]) > 5 else ""
        )
        print(
            f"ignored {len(frame.attrs['unfinished'])} unfinished "
            f"run director(ies) (no `done` marker): {shown}"
        )
    if frame.attrs["duplicates"]:
        print(
            f"ignored {len(frame.attrs['duplicates'])} duplicate record(s) of an already read run id: "
            + ", ".join(frame.attrs["duplicates"])
        )
    if args.check:
        diffs = check_outputs(outputs, out_dir)
        if diffs:
            sys.stdout.write("".join(diffs))
            print(
                f"leaderboard is stale: {len(diffs)} file(s) differ from the records; "
                f"regenerate with `{regenerate_command(root_names, display_path(out_dir))}`"
            )
            return 1
        print(f"leaderboard is current ({len(outputs)} board(s); markdown and CSV compared, PNG not)")
        return 0
    for path in write_outputs(outputs, out_dir):
        print(f"wrote {display_path(path)}")
    return 0


def _check_without_records(roots: Sequence[Path], out_dir: Path) -> int:
    """--check with no finished records: current only if no generated leaderboard exists either."""
    where = ", ".join(display_path(r) for r in roots)
    stale = generated_markdown(out_dir)
    if stale:
        for path in stale:
            print(f"{display_path(path)}: generated leaderboard, but no finished run records under {where}")
        return 1
    print(
        f"no finished run records under {where} and no generated leaderboard in {display_path(out_dir)}: "
        "nothing to check"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `dermbench leaderboard` to the CLI."""
    parser = subparsers.add_parser(
        "leaderboard",
        help="aggregate run records into leaderboards (markdown, CSV, plot)",
        description="Aggregate finished run records (mean ± sd over seeds) into one markdown table, CSV and "
        "AUC-vs-EOdd plot per board (train dataset + task).",
    )
    parser.add_argument(
        "--runs",
        nargs="+",
        metavar="DIR",
        default=None,
        help=f"directories searched recursively for run records (default: {DEFAULT_RUNS.as_posix()})",
    )
    parser.add_argument(
        "--out",
        default=str(DEFAULT_OUT),
        metavar="DIR",
        help=f"where the leaderboards go (default: {DEFAULT_OUT.as_posix()})",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 with a diff when the committed markdown/CSV are stale",
    )
    parser.set_defaults(func=run_leaderboard)
