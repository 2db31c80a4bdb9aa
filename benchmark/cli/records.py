"""`dermbench records`: check and seal finished run records.

    dermbench records seal DIR [DIR ...]    write checksums into the `done` markers that hold none
    dermbench records check DIR [DIR ...]   verify every finished record under the folders

A finished run's `done` marker holds the SHA-256 of its metrics.json and predictions (sealed when
the run finishes) and of counterfactual.json when it has one (re-sealed when that is written); every
reader (leaderboard, report, --check) refuses a record changed after it finished, and one whose
marker holds no checksums, which a run written before dermbench sealed its records has. `seal` is
the deliberate step for those: it checks each record's shape and values (rates in [0, 1], counts
non-negative integers, gaps consistent with their groups) and only then writes the checksums; a
marker already sealed is verified, never rewritten, except to add a counterfactual.json that an
older dermbench wrote without sealing it (checked, and only when every file the marker lists still
matches).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dermbench.errors import DermbenchError
from dermbench.results.counterfactual import read_counterfactual
from dermbench.results.leaderboard import display_path, scan_runs
from dermbench.results.record_schema import RecordError
from dermbench.results.records import COUNTERFACTUAL_FILE, check_seal, read_record, seal_run


def _finished(roots: list[Path]) -> list[Path]:
    scan = scan_runs(roots)
    if not scan.finished:
        raise RecordError(
            f"no finished run (a folder with a `done` marker) under {', '.join(map(str, roots))}"
        )
    return scan.finished


def cmd_seal(args: argparse.Namespace) -> int:
    counts = {"sealed": 0, "already sealed": 0}
    refused = []
    for run_dir in _finished(args.dirs):
        try:
            outcome = seal_run(run_dir, check_added=_check_added)
        except DermbenchError as exc:
            refused.append(str(exc))
            continue
        counts["already sealed" if outcome == "already sealed" else "sealed"] += 1
        if outcome != "already sealed":
            print(f"{outcome} {display_path(run_dir)}")
    print(f"sealed {counts['sealed']}, already sealed {counts['already sealed']}, refused {len(refused)}")
    if refused:
        raise RecordError(f"{len(refused)} record(s) not sealed:\n" + "\n".join(refused))
    return 0


def _check_added(run_dir: Path, name: str) -> None:
    """A file a seal gains afterwards (counterfactual.json) must be well-formed first."""
    if name == COUNTERFACTUAL_FILE:
        read_counterfactual(run_dir, verify_seal=False)


def cmd_check(args: argparse.Namespace) -> int:
    problems = []
    runs = _finished(args.dirs)
    for run_dir in runs:
        try:
            check_seal(run_dir)
            read_record(run_dir, verify_seal=False)
            read_counterfactual(run_dir, verify_seal=False)  # its shape and values, when present
        except DermbenchError as exc:
            problems.append(str(exc))
    if problems:
        raise RecordError(f"{len(problems)} of {len(runs)} record(s) do not verify:\n" + "\n".join(problems))
    print(f"{len(runs)} finished record(s) verify (sealed, unchanged, values possible)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `dermbench records` to the CLI."""
    parser = subparsers.add_parser(
        "records", help="check and seal finished run records", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="records_command", metavar="{seal,check}")

    def usage(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=usage)
    seal = sub.add_parser(
        "seal", help="write checksums into `done` markers that hold none (after checking the records' values)"
    )
    seal.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="run folders or folders holding them")
    seal.set_defaults(func=cmd_seal)
    check = sub.add_parser("check", help="verify every finished record (sealed, unchanged, values possible)")
    check.add_argument(
        "dirs", nargs="+", type=Path, metavar="DIR", help="run folders or folders holding them"
    )
    check.set_defaults(func=cmd_check)
