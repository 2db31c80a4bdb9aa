"""`dermbench drift --committed DIR --fresh DIR`: how far recomputed records are from the committed ones.

Exit status: 0 when every compared value is within tolerance, 1 when any is not (or, with
--fail-on-unmatched, when a run id is on one side only; with --fail-on-superseded, when a committed
run was redone under another run id), 2 on an error (a missing directory, no
finished records, a malformed metrics.json). The leaderboard workflow's scheduled from-scratch
rerun calls it (docs/leaderboard-workflow.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dermbench.files import write_text
from dermbench.results.drift import (
    DEFAULT_GAP_TOLERANCE,
    DEFAULT_TOLERANCE,
    compare,
    render_markdown,
    render_text,
)


def cmd_drift(args: argparse.Namespace) -> int:
    report = compare(args.committed, args.fresh, tolerance=args.tolerance, gap_tolerance=args.gap_tolerance)
    sys.stdout.write(render_text(report))
    if args.report is not None:
        path = Path(args.report)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, render_markdown(report, **({"title": args.title} if args.title else {})))
        print(f"wrote {path}")
    if report.has_drift:
        return 1
    if args.fail_on_unmatched and report.unmatched:
        print(
            "run ids differ between the two sides (--fail-on-unmatched): the fresh sweep did not reproduce "
            "the committed run ids"
        )
        return 1
    if args.fail_on_superseded and report.superseded:
        print(
            "committed runs were redone under other run ids (--fail-on-superseded): their settings or data "
            "changed; committing both would give those methods a second row"
        )
        return 1
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "drift",
        help="compare recomputed run records with the committed ones (exit 1 when a value drifted)",
        description="Match the finished run records of two directories by run id and compare every numeric "
        "value of their evaluations (overall, per group, fairness gaps); print the values out of tolerance "
        "and exit 1 if there are any. Run ids found on one side only are listed.",
    )
    p.add_argument(
        "--committed",
        default="leaderboards/records",
        metavar="DIR",
        help="the committed records (default leaderboards/records)",
    )
    p.add_argument("--fresh", required=True, metavar="DIR", help="the recomputed records")
    p.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        metavar="X",
        help=f"largest |fresh - committed| allowed on scores: AUC, accuracy, F1, rates, ECE, worst-group "
        f"values (default {DEFAULT_TOLERANCE})",
    )
    p.add_argument(
        "--gap-tolerance",
        type=float,
        default=DEFAULT_GAP_TOLERANCE,
        metavar="X",
        help=f"largest |fresh - committed| allowed on fairness gaps: EOdd, EOpp0/1, DP, AUC/acc/F1/FNR "
        f"gaps (default {DEFAULT_GAP_TOLERANCE}); counts must match exactly",
    )
    p.add_argument("--report", metavar="FILE", help="also write the report as markdown to FILE")
    p.add_argument("--title", help="the markdown report's title")
    p.add_argument(
        "--fail-on-unmatched",
        action="store_true",
        help="exit 1 also when a run id is in one directory only (the fresh sweep did not reproduce it)",
    )
    p.add_argument(
        "--fail-on-superseded",
        action="store_true",
        help="exit 1 also when a committed run id was not reproduced but the fresh records hold the same "
        "method, dataset and seed under another id (a second row if both were kept)",
    )
    p.set_defaults(func=cmd_drift)
