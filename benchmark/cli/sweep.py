"""`dermbench sweep`: methods x datasets x seeds, idempotent; exits 1 when any run failed."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dermbench.sweep import (
    DEFAULT_RAY_CPUS,
    DEFAULT_RAY_RETRIES,
    FAILED,
    RAN,
    REUSED,
    SweepSummary,
    run_sweep,
    sweep_configs,
)

STATUS_STYLE = {RAN: "green", REUSED: "cyan", FAILED: "bold red"}


def summary_table(summary: SweepSummary, out: str) -> Table:
    """One row per run with its status and, for a failed run, why."""
    table = Table(title=f"sweep: {summary.line()}, records in {out}")
    for column in ("method", "dataset", "seed", "run id", "status", "time", "reason"):
        table.add_column(column, justify="right" if column in ("seed", "time") else "left", overflow="fold")
    for o in summary.outcomes:
        table.add_row(
            o.method,
            o.dataset,
            str(o.seed),
            o.run_id or "-",
            f"[{STATUS_STYLE.get(o.status, '')}]{o.status}[/]",
            f"{o.seconds:.1f} s",
            escape(o.reason),
        )
    return table


def cmd_sweep(args: argparse.Namespace) -> int:
    console = Console()
    local = tuple(args.plugin or ())
    configs = sweep_configs(
        methods=args.methods,
        datasets=args.datasets,
        seeds=args.seeds,
        profile=args.profile,
        sets=args.set or [],
        out=args.out,
        device=args.device,
        local=local,
    )
    summary = run_sweep(
        configs,
        local=local,
        force=args.force,
        use_ray=args.ray,
        ray_address=args.ray_address,
        max_retries=args.ray_retries,
        cpus_per_run=args.ray_cpus,
        console=console,
    )
    console.print(summary_table(summary, args.out))
    if summary.failed:
        console.print(
            f"[bold red]{summary.failed} of {len(summary.outcomes)} runs failed[/]; rerun the same "
            "command after fixing them: finished runs are reused",
            highlight=False,
        )
        return 1
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "sweep", help="run methods x datasets x seeds (idempotent; exit status 1 if any run failed)"
    )
    p.add_argument("--methods", nargs="+", default=["erm"])
    p.add_argument("--datasets", nargs="+", default=["synthderm"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--profile", default="tiny")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.add_argument(
        "--out",
        default="runs",
        help="folder for run records; with --ray on several nodes it must be a shared filesystem",
    )
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--plugin",
        action="append",
        metavar="MODULE:OBJECT",
        help="load a method plugin from a module (with --ray it must be importable on every node)",
    )
    p.add_argument("--force", action="store_true")
    p.add_argument(
        "--ray",
        action="store_true",
        help="run each run as a Ray task (pip install 'dermbench[ray]'), one GPU per run when the "
        "cluster has GPUs and --device is auto or cuda; on a multi-node cluster --out must be "
        "a shared filesystem that every node sees at the same path",
    )
    p.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="Ray cluster to join (e.g. auto, or ray://host:10001); default: $RAY_ADDRESS, a running "
        "local cluster, else a new local one",
    )
    p.add_argument(
        "--ray-retries",
        type=int,
        default=DEFAULT_RAY_RETRIES,
        metavar="N",
        help=f"times Ray reruns a run whose worker died; it resumes from its checkpoint "
        f"(default {DEFAULT_RAY_RETRIES})",
    )
    p.add_argument(
        "--ray-cpus",
        type=int,
        default=DEFAULT_RAY_CPUS,
        metavar="N",
        help=f"CPUs each run reserves on Ray and trains with as torch threads (default {DEFAULT_RAY_CPUS})",
    )
    p.set_defaults(func=cmd_sweep)
