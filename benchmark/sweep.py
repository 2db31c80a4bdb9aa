"""`dermbench sweep`: a grid of methods x datasets x seeds. Run ids are hashes of the resolved
configs, so a sweep is idempotent: finished runs are found and skipped, interrupted ones resume.
Runs go one after another locally, or as Ray tasks with --ray (the `ray` extra)."""

from __future__ import annotations

import argparse
import itertools

from rich.console import Console
from rich.table import Table

from dermbench.errors import DermbenchError


def sweep_configs(*, methods, datasets, seeds, profile, sets, out, device, local) -> list[dict]:
    from dermbench.runner import resolve_config

    return [
        resolve_config(sets=sets, flags={"method": m, "dataset": d, "seed": s, "profile": profile, "out": out,
                                         "device": device}, local=local)
        for m, d, s in itertools.product(methods, datasets, seeds)
    ]


def _run_one(cfg: dict, local: tuple[str, ...], force: bool) -> tuple[str, bool]:
    from dermbench.runner import run_experiment

    result = run_experiment(cfg, local=local, force=force, console=Console(quiet=True))
    return result.run_dir.run_id, result.reused


def run_sweep(configs: list[dict], *, local=(), force=False, use_ray=False, console: Console | None = None):
    console = console or Console()
    if not use_ray:
        done = []
        for i, cfg in enumerate(configs, 1):
            console.print(f"[bold]sweep {i}/{len(configs)}[/]: {cfg['method']} on {cfg['dataset']}, seed {cfg['seed']}")
            done.append(_run_one(cfg, local, force))
        return done
    try:
        import ray
    except ImportError as exc:
        raise DermbenchError("--ray needs Ray: pip install 'dermbench[ray]'") from exc
    ray.init(ignore_reinit_error=True)
    gpus = 1 if any(c["device"] in ("auto", "cuda") for c in configs) and ray.cluster_resources().get("GPU") else 0
    remote = ray.remote(num_gpus=gpus)(_run_one)
    return ray.get([remote.remote(cfg, local, force) for cfg in configs])


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
