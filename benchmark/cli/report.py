"""`dermbench report RUN_DIR`: print a run's report."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from dermbench.results.report import REPORT_FILE, write_report


def run_report(args: argparse.Namespace) -> int:
    """The `dermbench report` command."""
    console = Console()
    path = write_report(args.run_dir, args.output, console)
    console.print(f"wrote {path}", highlight=False)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `dermbench report` to the CLI."""
    parser = subparsers.add_parser(
        "report",
        help="per-tone report of one run (terminal and RUN_DIR/report.md)",
        description="Print one run's per-group metrics, fairness gaps (with CIs when recorded), per-group "
        "confusion matrices, exclusions, flags and tone sources, and write them to report.md.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a run directory, e.g. runs/<run_id>")
    parser.add_argument(
        "--output", type=Path, default=None, help=f"markdown path (default: RUN_DIR/{REPORT_FILE})"
    )
    parser.set_defaults(func=run_report)
