"""`dermbench sweep`: a grid of methods x datasets x seeds. Run ids are hashes of the resolved
configs, so a sweep is idempotent: finished runs are found and skipped, interrupted ones resume.
Runs go one after another locally, or as Ray tasks with --ray (the `ray` extra)."""

from __future__ import annotations

import itertools

from rich.console import Console

from dermbench.errors import DermbenchError
from dermbench.runner import resolve_config, run_experiment


def sweep_configs(*, methods, datasets, seeds, profile, sets, out, device, local) -> list[dict]:
    return [
        resolve_config(sets=sets, flags={"method": m, "dataset": d, "seed": s, "profile": profile, "out": out,
                                         "device": device}, local=local)
        for m, d, s in itertools.product(methods, datasets, seeds)
    ]


def _run_one(cfg: dict, local: tuple[str, ...], force: bool) -> tuple[str, bool]:
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
        import ray  # noqa: PLC0415 - optional (the `ray` extra), imported only for --ray
    except ImportError as exc:
        raise DermbenchError("--ray needs Ray: pip install 'dermbench[ray]'") from exc
    ray.init(ignore_reinit_error=True)
    gpus = 1 if any(c["device"] in ("auto", "cuda") for c in configs) and ray.cluster_resources().get("GPU") else 0
    remote = ray.remote(num_gpus=gpus)(_run_one)
    return ray.get([remote.remote(cfg, local, force) for cfg in configs])


