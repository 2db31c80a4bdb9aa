"""`dermbench sweep`: methods x datasets x seeds, idempotent."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from dermbench.sweep import run_sweep, sweep_configs


def cmd_sweep(args: argparse.Namespace) -> int:
    console = Console()
    configs = sweep_configs(methods=args.methods, datasets=args.datasets, seeds=args.seeds, profile=args.profile,
                            sets=args.set or [], out=args.out, device=args.device, local=tuple(args.plugin or ()))
    results = run_sweep(configs, local=tuple(args.plugin or ()), force=args.force, use_ray=args.ray, console=console)
    table = Table(title=f"sweep: {len(results)} runs in {args.out}")
    table.add_column("run id")
    table.add_column("status")
    for run_id, reused in results:
        table.add_row(run_id, "reused" if reused else "ran")
    console.print(table)
    return 0


def register(sub) -> None:
    p = sub.add_parser("sweep", help="run methods x datasets x seeds (idempotent)")
    p.add_argument("--methods", nargs="+", default=["erm"])
    p.add_argument("--datasets", nargs="+", default=["synthderm"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--profile", default="tiny")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.add_argument("--out", default="runs")
    p.add_argument("--device", default="auto")
    p.add_argument("--plugin", action="append", metavar="MODULE:OBJECT")
    p.add_argument("--force", action="store_true")
    p.add_argument("--ray", action="store_true", help="run on a Ray cluster (pip install 'dermbench[ray]')")
    p.set_defaults(func=cmd_sweep)
