"""`dermbench run`: resolve the config, train through the plugin hooks, evaluate every test set
of the training dataset, and write the run record.

How a record is sealed: the run folder's files are written atomically, and the `done` marker comes
last (`RunDir.mark_done`). It is not an empty flag but the seal: JSON holding the time the run
finished and the SHA-256 of metrics.json, of every predictions/*.csv and of counterfactual.json
(`--counterfactual`, or written later by `dermbench counterfactual`, which seals the marker again),
plus a short digest of each field of metrics.json (`dermbench.results.records.write_done`). Every
reader (the runner reusing a finished run, `dermbench report`, `dermbench leaderboard` and its
`--check`) verifies the seal and refuses a file changed after the run finished, naming the file and,
for metrics.json, the field. `dermbench records check DIR` verifies every finished record under DIR;
`dermbench records seal DIR` seals records whose marker predates sealing, after checking their
values, and never rewrites a seal. The report is derived from the record, so it is written after
`done` and is not sealed.
"""

from __future__ import annotations

import importlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console

from dermbench import config as configuration
from dermbench.context import RunContext, choose_device
from dermbench.data.model import Split, TestSet, select_options, split_exclusions
from dermbench.data.pool import DatasetPool
from dermbench.data.splits import committed_dir
from dermbench.errors import DataError, DermbenchError, UnknownNameError
from dermbench.evaluation.evaluate import evaluate_split, threshold_from_validation
from dermbench.evaluation.thresholds import parse_rule
from dermbench.evaluation.tone_sources import PROPAGATION_SCHEMES, measured_confusion
from dermbench.files import write_json, write_text
from dermbench.hookchecks import check_model, check_predict_before_fit, hooks_answered, predict_checked
from dermbench.plugins import LoadedPlugin, Manager, PluginError, dataset_refs, load_target, make_manager
from dermbench.results.citations import model_backbones, run_references
from dermbench.results.record_schema import RecordError
from dermbench.results.records import CHECKPOINTS, RunDir, environment
from dermbench.results.report import write_report
from dermbench.tone import fill_missing_tones
from dermbench.tone.detector import detector_fingerprint
from dermbench.tone.sources import tone_views
from dermbench.train.meta_models import run_models
from dermbench.train.models import check_pretrained_weights, fetch_command, pretrained_requests, weights_id
from dermbench.train.weights import save_weights


@dataclass
class RunResult:
    run_dir: RunDir
    metrics: dict
    reused: bool


@dataclass
class BeforeDone:
    """What a run hands its `before_done` step (run_experiment): the record is written, `done` is not,
    so what the step writes into the run folder is sealed with the record. The trained model and the
    plugin manager are there, so the step can predict through the method's own hook."""

    run: RunDir
    cfg: dict
    datasets: DatasetPool
    tests: dict[str, Split]
    pm: Any
    ctx: RunContext
    model: Any


#: a run's plugin manager and the plugins it loaded (`plugins.make_manager`): made once per run
Plugins = tuple[Manager, list[LoadedPlugin]]


def method_defaults(pm: Manager, profile: str, dataset: str) -> list[tuple[str, dict]]:
    """The selected methods' `dermbench_method_defaults`, as (plugin name, dict) in registration
    order (ERM first): what config.resolve merges under the user's settings."""
    given = {"profile": profile, "dataset": dataset}
    return [
        (impl.plugin_name, d)
        for impl in pm.hook.dermbench_method_defaults.get_hookimpls()
        if (d := impl.function(**{a: given[a] for a in impl.argnames}))
    ]


def prepare_run(*, file=None, sets=(), flags=None, local: tuple[str, ...] = ()) -> tuple[dict, Plugins]:
    """The resolved config and the run's plugin manager: the plugins are discovered once, here,
    and the same manager answers the methods' defaults, the checks and the run's hooks."""
    head = configuration.requested(file=file, sets=sets, flags=flags)
    plugins = make_manager(head["method"], local)
    defaults = method_defaults(plugins[0], head["profile"], head["dataset"])
    return configuration.resolve(file=file, sets=sets, flags=flags, method_defaults=defaults), plugins


def resolve_config(*, file=None, sets=(), flags=None, local: tuple[str, ...] = ()) -> dict:
    """The resolved config alone, for what does not run it (citations, sweeps' planning, the tone
    detector's recipe)."""
    return prepare_run(file=file, sets=sets, flags=flags, local=local)[0]


def check_run(cfg: dict, pm: Manager, *, fetch: bool = True) -> list[dict]:
    """Every check that needs no data, before any data loads or anything trains: the threshold rule,
    each selected method's own settings and prerequisites (its `dermbench_check_settings` hook:
    generation counts, strengths, timesteps, blocks, diffusion models present or fetchable) and the
    ImageNet weights every `pretrained: true` asks for (`check_pretrained_weights`: the local cache,
    or the command that fetches them). The shared settings were checked when the config resolved
    (`dermbench.config.checks`). Returns what the run will load (setting, source, status), for
    `--dry-run`; `fetch` False (the dry run) looks at local files only and reports an absent
    prerequisite (`"missing": True`) instead of stopping; a bad setting stops it all the same."""
    parse_rule(cfg["eval"]["threshold"])
    given = {"config": cfg, "fetch": fetch}
    found: list[dict] = []
    for impl in pm.hook.dermbench_check_settings.get_hookimpls():  # registration order: ERM first
        try:
            answer = impl.function(**{a: given[a] for a in impl.argnames})
        except DermbenchError:
            raise
        except Exception as exc:  # a plugin's check may fail in any way: name it instead of a traceback
            raise PluginError(
                f"plugin {impl.plugin_name!r} failed in dermbench_check_settings: "
                f"{type(exc).__name__}: {exc}",
                plugin=impl.plugin_name,
                hook="dermbench_check_settings",
            ) from exc
        found.extend(answer or [])
    if fetch:
        for weights in check_pretrained_weights(cfg):
            found.append(
                {
                    "setting": weights["setting"],
                    "source": f"ImageNet weights {weights['weights']}",
                    "status": f"in the local cache ({weights['file']})",
                }
            )
        return found
    for where, backbone in pretrained_requests(cfg):  # the dry run reports, never stops
        try:
            for weights in check_pretrained_weights({"x": {"backbone": backbone, "pretrained": True}}):
                found.append(
                    {
                        "setting": where,
                        "source": f"ImageNet weights {weights['weights']}",
                        "status": f"in the local cache ({weights['file']})",
                    }
                )
        except UnknownNameError:
            raise
        except DermbenchError:
            found.append(
                {
                    "setting": where,
                    "source": f"ImageNet weights {weights_id(backbone)}",
                    "missing": True,
                    "status": f"MISSING from the local cache; fetch with {fetch_command(backbone)}",
                }
            )
    return found


def data_sizes(cfg: dict, local: tuple[str, ...] = ()) -> dict[str, dict[str, int] | str]:
    """{dataset: {split: rows}} of the training dataset and its test sets, from what is
    known without reading any data: a generated dataset's options (SynthDerm's n_train, ...), or a
    committed split file's rows (before the dataset's own exclusions, e.g. neoplastic_only); else
    a line saying when it is known. Nothing is read but the committed split files."""
    refs = dataset_refs(local)
    try:
        cls = load_target(refs[cfg["dataset"]].target)
        default = list(cls.test_sets) or [TestSet(cfg["dataset"], cfg["dataset"], "test")]
    except (DermbenchError, KeyError) as exc:
        return {cfg["dataset"]: f"unknown ({exc})"}
    chosen = cfg["data"]["test_sets"]
    tests = (
        default
        if chosen is None
        else [t for t in default if t.name in chosen]
        + [TestSet(n, n, "test") for n in chosen if n not in {t.name for t in default}]
    )
    out: dict[str, dict[str, int] | str] = {}
    for name in dict.fromkeys([cfg["dataset"], *(t.dataset for t in tests)]):
        try:
            kind = load_target(refs[name].target)
            module = importlib.import_module(kind.__module__)
            defaults = (
                kind.defaults() if hasattr(kind, "defaults") else getattr(module, "DEFAULT_OPTIONS", {})
            )
            options = select_options(name, cfg["data"]["options"], defaults)
        except (DermbenchError, KeyError) as exc:
            out[name] = f"unknown ({exc})"
            continue
        generated = {k[2:]: int(v) for k, v in options.items() if k.startswith("n_") and isinstance(v, int)}
        rule = options.get("split_rule")
        committed = committed_dir() / f"{name}-{rule}.csv" if rule else None
        if generated:
            out[name] = generated
        elif committed is not None and committed.is_file():
            counts = pd.read_csv(committed, usecols=["split"])["split"].value_counts()
            out[name] = {str(k): int(v) for k, v in counts.items()} | {"(split file)": committed.name}
        else:
            out[name] = "known when the data is read (an official split, or no committed split file)"
    return out


def dry_run(cfg: dict, pm: Manager, local: tuple[str, ...] = ()) -> dict:
    """What `dermbench run --dry-run` shows, computed without reading images or weights or training:
    every check of a run (`check_run`, local files only), the models built on the meta device with
    their parameter counts and weight sources (`dermbench.train.meta_models`: the classifier, then
    each method's own through its `dermbench_models` hook), and the data sizes known up front
    (`data_sizes`). A failing check raises, as the run would."""
    device = choose_device(cfg["device"])
    prerequisites = check_run(cfg, pm, fetch=False)
    cfg = {**cfg, "device": device.type}
    return {
        "method": cfg["method"],
        "dataset": cfg["dataset"],
        "task": cfg["task"],
        "profile": cfg["profile"],
        "seed": cfg["seed"],
        "device": device.type,
        "config": cfg,
        "prerequisites": prerequisites,
        "models": [m.row() for m in run_models(cfg, pm)],
        "data": data_sizes(cfg, local),
    }


#: per-sample predictions of each test set, one CSV each, in the run folder
PREDICTIONS = "predictions"
#: the fingerprint entry of the tone detector (a space, so no dataset can be named so)
DETECTOR_KEY = "tone detector"


def data_fingerprints(cfg: dict, datasets: DatasetPool) -> dict[str, dict | None]:
    """{dataset: content fingerprint} for the training dataset and every test set's dataset, and
    for the tone detector when one is configured (it assigns tones, or scores tone-source sensitivity).
    The training dataset and test sets named in data.test_sets must be readable (their error
    stops the run); an unreadable default test set is None, and is skipped later with its reason."""
    used = [cfg["dataset"], *(t.dataset for t in datasets.test_sets)]
    named = set(used) if cfg["data"]["test_sets"] is not None else {cfg["dataset"]}
    fingerprints = datasets.fingerprints(used, required=named)
    # it assigns the test rows' tone groups (data.tone detector) or the tone-source sensitivity
    # scores' (any configured detector): part of the data either way
    if cfg["data"]["tone"] == "detector" or cfg["data"]["tone_detector"] is not None:
        fingerprints[DETECTOR_KEY] = detector_fingerprint(cfg["data"]["tone_detector"])
    return fingerprints


def run_experiment(
    cfg: dict,
    *,
    plugins: Plugins | None = None,
    local: tuple[str, ...] = (),
    force: bool = False,
    console: Console | None = None,
    before_done: Callable[[BeforeDone], Any] | None = None,
) -> RunResult:
    """Train and evaluate one config; a finished run with the same id is reused unless `force`.

    `plugins` is the run's manager when the caller resolved the config with it (`prepare_run`);
    otherwise the run makes its own, once, for its checks and its hooks.

    `before_done` is an extra step of a run that trains (not of a reused one), after its record
    and before `done` (`dermbench run --counterfactual`: audit.counterfactual_of_method). It is
    not part of the config, so it leaves the run id alone.

    A run folder is worked on by one process at a time, under an OS lock on `<run>/.lock`
    (released by the kernel even when the process is killed). A second process with the same
    config and --out says which process (pid) it waits for, waits, and then reuses the run the
    first one finished (or resumes it, if the first one stopped early). A finished run is reused
    without taking the lock.

    Damage found at the start: a finished run whose metrics.json does not read stops with an
    error naming the file and --force (nothing is redone behind the user's back). A resume
    checkpoint that does not load or does not match its checksum is the trainer's to handle, file
    by file (`dermbench.train.checkpoint.read_resume_checkpoint`): it is moved aside, training goes
    on from the previous epoch's checkpoint or from scratch, and the record names the set-aside
    file (`methods.<name>.checkpoints_set_aside`), so the rest of the unfinished run is kept.
    """
    console = console or Console()
    started = time.perf_counter()
    device = choose_device(cfg["device"])
    plugins = plugins or make_manager(cfg["method"], local)
    check_run(cfg, plugins[0])  # a bad setting or an absent model stops now, before any data or training
    cfg = {**cfg, "device": device.type}  # results depend on it (AMP, channels-last): part of the run id
    datasets = DatasetPool(cfg, local)
    fingerprint = data_fingerprints(cfg, datasets)  # the data is part of the run id: read before the id
    run_id = configuration.run_id(cfg, configuration.data_digests(fingerprint))
    run = RunDir(Path(cfg["out"]), run_id)
    if run.done and not force:
        try:
            return _reuse(run, run.metrics(), console)
        except RecordError:
            pass  # looked at again under the lock (a --force run elsewhere may be replacing it)
    waiting = (
        f"[yellow]run {run_id} is in progress in another process (pid {{}})[/]; waiting for it to finish "
        "(Ctrl-C stops waiting; the same command later reuses or resumes the run)"
    )
    with run.lock(on_wait=lambda pid: console.print(waiting.format(pid))):  # released however the run ends
        if run.done and not force:  # finished by the process waited for
            return _reuse(
                run, run.finished_metrics(), console
            )  # a damaged record: an error naming it and --force
        return _execute(
            run,
            cfg,
            datasets,
            fingerprint,
            plugins=plugins,
            device=device,
            local=local,
            force=force,
            console=console,
            started=started,
            before_done=before_done,
        )


def _execute(
    run: RunDir,
    cfg: dict,
    datasets: DatasetPool,
    fingerprint: dict,
    *,
    plugins: Plugins,
    device: torch.device,
    local: tuple[str, ...],
    force: bool,
    console: Console,
    started: float,
    before_done: Callable[[BeforeDone], Any] | None = None,
) -> RunResult:
    """Train and evaluate under the run's lock, and write the record; `done` comes last."""
    run_id = run.run_id
    if force:
        run.reset()
    run.remove_temporaries()  # left by a process killed mid-write; nobody else writes here now
    resuming = (run.path / CHECKPOINTS).exists()
    pm, loaded = plugins
    torch.manual_seed(cfg["seed"])
    np.random.seed(cfg["seed"] % (2**32))
    run.create()
    write_text(run.file("config.yaml"), configuration.dump(cfg))
    plugins = {p.name: p.ref.version for p in loaded}
    write_json(
        run.file("plugins.json"),
        {
            p.name: {"version": p.ref.version, "package": p.ref.package, "source": p.ref.source}
            for p in loaded
        },
    )
    write_json(run.file("environment.json"), {**environment(), "device": str(device)})
    ctx = RunContext(
        config=cfg,
        device=device,
        work_dir=run.path / "work",
        cache_dir=run.path / "work" / "cache",
        console=console,
        log=run.append_log,
        datasets=datasets,
    )
    ctx.say(
        f"{'resuming' if resuming else 'starting'} run [bold]{run_id}[/]: method {cfg['method']}, dataset "
        f"{cfg['dataset']}, task {cfg['task']}, seed {cfg['seed']}, profile {cfg['profile']}, device {device}"
    )

    train = datasets.load(cfg["dataset"], "train")
    val = datasets.load(cfg["dataset"], "val")
    excluded = split_exclusions({"train": train, "val": val})  # test sets count theirs in `eval`
    for where, reasons in excluded.items():
        for reason, count in reasons.items():
            ctx.say(f"[yellow]excluded from {where}[/]: {count} sample(s), {reason}")
    tests, skipped = load_test_sets(
        cfg, datasets.test_sets, datasets, ctx
    )  # before training, so problems show early
    train, synthetic = datasets.augment(pm, ctx, train)  # checked per plugin; counted per tone3 x label
    model = ctx.create_model(train.num_classes)
    check_predict_before_fit(pm, ctx, model, val)  # a wrong predict fails in seconds, not after training
    fit_call = pm.trace.begin("fit")
    model = pm.hook.fit(
        ctx=ctx, model=model, train=train, val=val
    )  # a plugin's None or exception: PluginError
    if model is None:
        raise DermbenchError(f"method {cfg['method']!r}: no plugin's fit returned a model")
    check_model(pm, model, fit_call)
    _save_weights(model, run.file("model.safetensors"))

    val_prob = predict_checked(pm, ctx, model, val)
    threshold = threshold_from_validation(cfg["eval"]["threshold"], val.labels, val_prob)
    evaluations = score_test_sets(
        run,
        cfg,
        tests,
        lambda name, split: predict_checked(pm, ctx, model, split),
        threshold=threshold,
        device=ctx.device,
    )
    metrics = {
        **record_head(
            run_id,
            cfg,
            method=cfg["method"],
            plugins=plugins,
            device=device,
            started=started,
            resumed=resuming,
            threshold_rule=cfg["eval"]["threshold"],
            skipped=skipped,
        ),
        "train_history": getattr(model, "train_history", None),
        "eval": evaluations,
        "synthetic": synthetic,
        "excluded": excluded,
        "data_fingerprint": fingerprint,
        "hooks": hooks_answered(pm),
        "methods": ctx.records or None,
        # what to cite: the methods, the training dataset and each evaluated test set's, the backbone
        "references": run_references(
            method=cfg["method"],
            backbones=model_backbones(model, cfg["model"]["backbone"]),
            local=local,
            datasets=[
                cfg["dataset"],
                *(t.dataset for t in datasets.test_sets if t.name in evaluations),
            ],
        ),
    }
    metrics = run.write_record(metrics)  # checked against the record schema (results/record_schema.py)
    if before_done is not None:
        before_done(
            BeforeDone(
                run=run,
                cfg=cfg,
                datasets=datasets,
                tests=tests,
                pm=pm,
                ctx=ctx,
                model=model,
            )
        )
    run.mark_done()

    report = write_report(
        run.path
    )  # derived from the record, so written after `done`; `dermbench report` redoes it
    ctx.say(
        f"run finished in {metrics['timing']['total_s']:.1f} s; record in {run.path}, report in {report.name}"
    )
    return RunResult(run, metrics, reused=False)


def score_test_sets(
    run: RunDir,
    cfg: dict,
    tests: dict[str, Split],
    probability: Callable[[str, Split], np.ndarray],
    *,
    threshold: float | None,
    device: torch.device,
) -> dict[str, dict]:
    """The record's `eval` entry of every test set, scored at `threshold`, and each set's per-sample
    predictions written to `<run>/predictions/<set>.csv` (an earlier attempt's are removed first,
    maybe of a set now skipped). `probability(name, split)` gives the class probabilities of a
    test split. Shared by `dermbench run` and `dermbench evaluate`, so a method and an external
    model are scored alike."""
    # every source's tones per test set; estimator errors measured on the annotated sets (docs/tone.md)
    views = {
        name: tone_views(split, detector=cfg["data"]["tone_detector"], device=device)
        for name, split in tests.items()
    }
    confusion = {scheme: measured_confusion(views, scheme) for scheme in PROPAGATION_SCHEMES}
    shutil.rmtree(run.file(PREDICTIONS), ignore_errors=True)
    evaluations = {}
    for name, split in tests.items():
        prob = probability(name, split)
        evaluations[name], predictions = evaluate_split(
            split, prob, threshold=threshold, cfg=cfg, views=views[name], confusion=confusion
        )
        write_text(run.file(f"{PREDICTIONS}/{name}.csv"), predictions.to_csv(index=False))
    return evaluations


def record_head(
    run_id: str,
    cfg: dict,
    *,
    method: str,
    plugins: dict,
    device: torch.device,
    started: float,
    resumed: bool,
    threshold_rule: Any,
    skipped: dict,
) -> dict[str, Any]:
    """The fields every run record begins with, whoever trained the model (`dermbench run` or
    `dermbench evaluate`); the caller adds eval, methods, references and the rest."""
    return {
        "run_id": run_id,
        "method": method,
        "dataset": cfg["dataset"],
        "task": cfg["task"],
        "seed": cfg["seed"],
        "profile": cfg["profile"],
        "config": cfg,
        "plugins": plugins,
        "device": str(device),
        "timing": {"total_s": round(time.perf_counter() - started, 2), "resumed": resumed},
        "threshold_rule": threshold_rule,
        "skipped_test_sets": skipped,
    }


def _reuse(run: RunDir, metrics: dict, console: Console) -> RunResult:
    console.print(f"[green]finished run found[/] {run.path} (same config and seed); use --force to redo it")
    return RunResult(run, metrics, reused=True)


def load_test_sets(
    cfg: dict, tests: list[TestSet], datasets: DatasetPool, ctx: RunContext
) -> tuple[dict[str, Split], dict]:
    """The run's test splits, with tones filled where the dataset has none, and the ones
    skipped with the reason: an external default test set that is absent or lacks the run's task
    is listed, never silently dropped. A problem with the training dataset's own test split, or
    with a test set the user named in data.test_sets, stops the run with its reason."""
    loaded, skipped = {}, {}
    named = cfg["data"]["test_sets"] is not None
    for test in tests:
        own = test.dataset == cfg["dataset"]
        try:
            dataset = datasets.get(test.dataset)
            if cfg["task"] not in dataset.tasks:
                if own:
                    dataset.check_task(cfg["task"])
                raise DataError(
                    f"dataset {test.dataset!r} has no task "
                    f"{cfg['task']!r} (tasks: {', '.join(dataset.tasks)})"
                )
            split = datasets.load(test.dataset, test.split, as_name=test.name)
        except DataError as exc:
            if own:
                raise
            if named:
                raise DataError(
                    f"test set {test.name!r}, named in data.test_sets, cannot be evaluated: {exc} "
                    "(leave it out of data.test_sets to run without it)"
                ) from exc
            skipped[test.name] = str(exc)
            ctx.say(f"[yellow]skipped test set {test.name}[/]: {exc}")
            continue
        loaded[test.name] = fill_missing_tones(
            split, source=cfg["data"]["tone"], detector=cfg["data"]["tone_detector"], device=ctx.device
        )
    if not loaded:
        raise DermbenchError(
            "no test set could be evaluated: " + "; ".join(f"{k}: {v}" for k, v in skipped.items())
        )
    return loaded, skipped


def _save_weights(model, path: Path) -> None:
    """model.safetensors, through the trainer's shared saver; a method whose fit returns something
    other than a torch module (its own predict knows how to use it) has no weights file."""
    if isinstance(model, torch.nn.Module):
        save_weights(model, path)
