"""`dermbench sweep`: a grid of methods x datasets x seeds. Run ids are hashes of the resolved
configs, so a sweep is idempotent: finished runs are found and skipped, interrupted ones resume.
Runs go one after another locally, or as Ray tasks with --ray (the `ray` extra).

A run that fails is a counted failure with its reason, never the end of the sweep: the other
runs still go, and the caller decides the exit status from `SweepSummary.failed`. Under Ray, a
worker that dies (killed, out of memory, node lost) is retried by Ray, and the retry resumes
the run from its last epoch checkpoint in the shared output folder."""

from __future__ import annotations

import itertools
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

from dermbench.errors import DermbenchError
from dermbench.runner import resolve_config, run_experiment

#: how often Ray re-runs a task whose worker process died (system failures only: a run that
#: raises is a counted failure, not retried, since it would fail again the same way)
DEFAULT_RAY_RETRIES = 3
#: CPUs a Ray task reserves for one run; torch uses that many threads in it
DEFAULT_RAY_CPUS = 1
RAN, REUSED, FAILED = "ran", "reused", "failed"


@dataclass(frozen=True)
class RunOutcome:
    """What became of one run of the grid; `run_id` is None when it failed before having one."""

    method: str
    dataset: str
    seed: int
    status: str  # RAN, REUSED or FAILED
    run_id: str | None = None
    reason: str = ""
    seconds: float = 0.0


@dataclass
class SweepSummary:
    """Every run's outcome, in grid order, and the counts the CLI reports."""

    outcomes: list[RunOutcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def ran(self) -> int:
        return self.count(RAN)

    @property
    def reused(self) -> int:
        return self.count(REUSED)

    @property
    def failed(self) -> int:
        return self.count(FAILED)

    def line(self) -> str:
        return (
            f"{len(self.outcomes)} run{'' if len(self.outcomes) == 1 else 's'}: {self.ran} ran, "
            f"{self.reused} reused, {self.failed} failed"
        )


def sweep_configs(
    *,
    methods: Sequence[str],
    datasets: Sequence[str],
    seeds: Sequence[int],
    profile: str | None,
    sets: Sequence[str],
    out: str,
    device: str,
    local: tuple[str, ...],
) -> list[dict]:
    """One resolved config per cell of the grid, resolved up front so a bad setting stops the
    sweep before any training."""
    return [
        resolve_config(
            sets=sets,
            flags={"method": m, "dataset": d, "seed": s, "profile": profile, "out": out, "device": device},
            local=local,
        )
        for m, d, s in itertools.product(methods, datasets, seeds)
    ]


def _failure_reason(exc: BaseException) -> str:
    """A DermbenchError's own message is written for users; anything else is a bug or an
    environment problem, so its type and the innermost frame are named too."""
    if isinstance(exc, DermbenchError):
        return str(exc)
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _run_one(cfg: dict, local: tuple[str, ...], force: bool, threads: int | None = None) -> RunOutcome:
    """One run, as a value: the same function runs in-process and as a Ray task, and it never
    raises for a failing run, so Ray only ever retries the task when its worker died.

    `threads` sets torch's CPU threads for the run: CPU results differ in the last bits with the
    thread count (environment.json records it), so a Ray task uses exactly the CPUs it reserved,
    whatever its worker process was started with."""
    started = time.perf_counter()
    cell = {"method": cfg["method"], "dataset": cfg["dataset"], "seed": cfg["seed"]}
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        result = run_experiment(cfg, local=local, force=force, console=Console(quiet=True))
    except Exception as exc:  # any failure of one run is reported, and the other runs still go
        return RunOutcome(
            **cell,
            status=FAILED,
            reason=_failure_reason(exc),
            seconds=round(time.perf_counter() - started, 2),
        )
    finally:
        torch.set_num_threads(before)
    return RunOutcome(
        **cell,
        status=REUSED if result.reused else RAN,
        run_id=result.run_dir.run_id,
        seconds=round(time.perf_counter() - started, 2),
    )


def gpus_per_task(cfg: dict, cluster_gpus: float) -> int:
    """Ray GPUs to reserve for one run: one when it may use CUDA (device auto, cuda or cuda:N)
    and the cluster has a GPU, else none. Unreserved, a task sees no GPU (older Ray) or shares
    them all unaccounted (newer Ray); reserved, it gets one of its own, and `auto` resolves to
    cuda as it would in a local sweep on a GPU machine (same run id)."""
    device = str(cfg["device"])
    wants_cuda = device == "auto" or device == "cuda" or device.startswith("cuda:")
    return 1 if wants_cuda and cluster_gpus >= 1 else 0


def _with_absolute_paths(cfg: dict) -> dict:
    """The config with `out` and a relative `data.root` made absolute against the driver's
    working directory: a Ray worker runs in another one (a `ray start` node runs where it was
    started). Neither is part of the run id, so ids stay those of a local sweep."""
    cfg = {**cfg, "out": str(Path(cfg["out"]).expanduser().absolute())}
    root = (cfg.get("data") or {}).get("root")
    if isinstance(root, str) and root:
        cfg["data"] = {**cfg["data"], "root": str(Path(root).expanduser().absolute())}
    return cfg


def _describe(cfg: dict) -> str:
    return f"{cfg['method']} on {cfg['dataset']}, seed {cfg['seed']}"


def _report(console: Console, prefix: str, outcome: RunOutcome) -> None:
    if outcome.status == FAILED:
        console.print(f"{prefix}[red]failed[/]: {escape(outcome.reason)}", highlight=False)
    else:
        console.print(f"{prefix}{outcome.status} {outcome.run_id} ({outcome.seconds:.1f} s)", highlight=False)


def run_sweep(
    configs: list[dict],
    *,
    local: tuple[str, ...] = (),
    force: bool = False,
    use_ray: bool = False,
    ray_address: str | None = None,
    max_retries: int = DEFAULT_RAY_RETRIES,
    cpus_per_run: int = DEFAULT_RAY_CPUS,
    console: Console | None = None,
) -> SweepSummary:
    """Run every config (in-process, or as Ray tasks with `use_ray`) and return the outcomes
    in grid order. Failed runs are counted, not raised. A Ray task reserves `cpus_per_run` CPUs
    and trains with that many torch threads; a local run uses the process's threads."""
    console = console or Console()
    if use_ray:
        return SweepSummary(
            _run_on_ray(
                configs,
                local=local,
                force=force,
                address=ray_address,
                max_retries=max_retries,
                cpus=cpus_per_run,
                console=console,
            )
        )
    outcomes = []
    for i, cfg in enumerate(configs, 1):
        prefix = f"[bold]sweep {i}/{len(configs)}[/]: {_describe(cfg)}: "
        console.print(f"{prefix}running", highlight=False)
        outcome = _run_one(cfg, local, force)
        _report(console, prefix, outcome)
        outcomes.append(outcome)
    return SweepSummary(outcomes)


def _run_on_ray(
    configs: list[dict],
    *,
    local: tuple[str, ...],
    force: bool,
    address: str | None,
    max_retries: int,
    cpus: int,
    console: Console,
) -> list[RunOutcome]:
    """One Ray task per run, all submitted at once; Ray schedules them by the CPUs/GPUs each
    reserves. Records go to each config's `out`, which every node must see (a shared filesystem
    on a multi-node cluster), since a retried task resumes from the checkpoint its first attempt
    left there, possibly on another node."""
    try:
        import ray  # noqa: PLC0415 - optional (the `ray` extra), imported only for --ray
    except ImportError as exc:
        raise DermbenchError("--ray needs Ray: pip install 'dermbench[ray]'") from exc
    if not ray.is_initialized():  # a caller (a test, a notebook) may have connected already
        try:
            ray.init(address=address)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise DermbenchError(
                f"cannot start or reach a Ray cluster{f' at {address!r}' if address else ''}: {exc}"
            ) from exc
    configs = [_with_absolute_paths(cfg) for cfg in configs]
    cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
    # retry_exceptions=False: only a dead worker is retried; _run_one turns errors into outcomes
    task = ray.remote(max_retries=max_retries, retry_exceptions=False)(_run_one)
    pending = {
        task.options(num_cpus=cpus, num_gpus=gpus_per_task(cfg, cluster_gpus)).remote(
            cfg, local, force, cpus
        ): i
        for i, cfg in enumerate(configs)
    }
    console.print(
        f"[bold]sweep[/]: {len(configs)} run(s) submitted to Ray "
        f"({ray.cluster_resources().get('CPU', 0):g} CPUs, {cluster_gpus:g} GPUs)",
        highlight=False,
    )
    outcomes: list[RunOutcome | None] = [None] * len(configs)
    finished = 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            i = pending.pop(ref)
            outcomes[i] = _ray_result(ray, ref, configs[i])
            finished += 1
            _report(
                console, f"[bold]sweep {finished}/{len(configs)}[/]: {_describe(configs[i])}: ", outcomes[i]
            )
    return [o for o in outcomes if o is not None]


def _ray_result(ray, ref, cfg: dict) -> RunOutcome:
    """The task's outcome, or a failure when Ray gave up on it (its worker died more often than
    `max_retries`, or its node was lost)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return RunOutcome(
            method=cfg["method"],
            dataset=cfg["dataset"],
            seed=cfg["seed"],
            status=FAILED,
            reason=f"Ray: {type(exc).__name__}: {reason}",
        )
