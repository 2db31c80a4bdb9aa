"""`dermbench ablation`: a table and a plot of test metrics against the settings runs vary."""

from __future__ import annotations

import argparse
from pathlib import Path

from dermbench.results.ablation import ablation


def run_ablation(args: argparse.Namespace) -> int:
    markdown, current = ablation(
        [Path(r) for r in args.runs],
        args.vary,
        test_set=args.test_set,
        scheme=args.scheme,
        out=Path(args.out),
        name=args.name,
        check=args.check,
    )
    if args.check:
        print(f"{markdown}: {'current' if current else 'STALE: regenerate it (the command is in the file)'}")
        return 0 if current else 1
    print(f"wrote {markdown} and {markdown.with_suffix('.png')}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ablation",
        help="table and plot of test metrics against settings that runs vary",
        description="Group finished runs by the values of the --vary settings (seeds pooled) and write a "
        "markdown table and a plot of overall AUC against EOdd (numbered points, the seeds per point in its "
        "title) for one test set and group scheme.",
    )
    parser.add_argument(
        "--runs", nargs="+", required=True, metavar="DIR", help="directories holding run records"
    )
    parser.add_argument(
        "--vary",
        nargs="+",
        required=True,
        metavar="SETTING",
        help="dotted settings the runs vary, e.g. fairquantize.beta fairquantize.target",
    )
    parser.add_argument("--test-set", default="synthderm", help="the test set whose metrics are shown")
    parser.add_argument("--scheme", default="tone2", help="the group scheme of the fairness gaps")
    parser.add_argument("--out", default="leaderboards/ablations", metavar="DIR")
    parser.add_argument("--name", required=True, help="file name (without extension) of the table and plot")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 when the markdown is stale"
    )
    parser.set_defaults(func=run_ablation)
