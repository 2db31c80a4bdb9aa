"""Auditing a model dermbench did not train: `dermbench evaluate` and `dermbench counterfactual`.

`evaluate_external` scores a user's predictions file, or their own model (a timm checkpoint or a
TorchScript file), on a dataset's test sets exactly as `dermbench run` scores a
method: the same test-set loading and tone filling (runner.load_test_sets), the same `eval` entry
per test set (evaluation.evaluate.evaluate_split, with every fairness metric, bootstrap interval,
tone-source section and ITA curve), the same run folder, record writer, report and plots. The
record names the user's model (`method`) and marks it external in `methods.<name>` with the
SHA-256 of the scored file; its config's `external` section holds that fingerprint and the input
settings, so the run id changes with the file's content, not its path.

`counterfactual_for_run` renders every lesion of a run's SynthDerm test sets on FST I..VI with
everything but the skin tone held fixed (dermbench.datasets.synthderm_render.retone) and scores the
run's model on them (evaluation.counterfactual), into counterfactual.json and the report. It can
rebuild only a model that is the run's saved backbone (or an external model file);
`counterfactual_of_method` (`dermbench run --counterfactual`) runs the same test at the end of a
run through the method's own predict hook, so it covers every method.

Orchestration, beside the runner: it may import the runner and every layer below it.
"""

from __future__ import annotations

import re
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
from dermbench.data.groups import add_group_columns
from dermbench.data.model import Split
from dermbench.data.pool import DatasetPool
from dermbench.datasets.synthderm import SynthDerm
from dermbench.datasets.synthderm_params import FST_TYPES
from dermbench.errors import ConfigError, DataError, DermbenchError
from dermbench.evaluation.counterfactual import counterfactual_scores
from dermbench.evaluation.evaluate import threshold_from_validation
from dermbench.evaluation.external import match_predictions, read_prediction_file, sha256_of
from dermbench.evaluation.thresholds import parse_rule
from dermbench.files import write_json, write_text
from dermbench.hookchecks import predict_checked
from dermbench.plugins import BUILTIN_METHODS
from dermbench.results.backbone_refs import DERMBENCH, backbone_references
from dermbench.results.citations import dataset_references
from dermbench.results.counterfactual import write_counterfactual
from dermbench.results.record_schema import RecordError
from dermbench.results.records import (
    COUNTERFACTUAL_FILE,
    METRICS_FILE,
    RunDir,
    check_seal,
    environment,
    read_record,
)
from dermbench.results.report import write_report
from dermbench.runner import (
    PREDICTIONS,
    BeforeDone,
    RunResult,
    data_fingerprints,
    load_test_sets,
    record_head,
    score_test_sets,
)
from dermbench.train.external import ModelSpec, load_model, load_state_strict, predict_images, resolve_spec
from dermbench.train.models import create_backbone

#: the threshold when no validation predictions are given (binary tasks), stated in the record
FIXED_THRESHOLD = 0.5
#: sections of a resolved config that describe training, which an external model did not have here
TRAINING_SECTIONS = ("model", "train", "augment")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: |recorded - recomputed| probabilities allowed when the counterfactual test reloads a run's model
#: (CPU float32; CUDA runs used mixed precision)
TOLERANCE = {"cpu": 1e-4, "cuda": 2e-2, "mps": 2e-2}


@dataclass
class ExternalSource:
    """What `dermbench evaluate` scores: a predictions file, or a model file with its settings."""

    name: str
    predictions: Path | None = None
    val_predictions: Path | None = None
    model: ModelSpec | None = None
    model_val: bool = False  # score the model on the dataset's validation split to choose the threshold
    id_column: str = "sample_id"
    batch_size: int = 64

    @property
    def kind(self) -> str:
        return "predictions" if self.model is None else self.model.kind


def check_name(name: str) -> str:
    """The user's model name: a folder-safe word that is not a built-in method's name."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"--name {name!r}: use letters, digits, '_', '.' or '-' (at most 64, starting with a letter "
            "or digit); it names the leaderboard row and the run folder"
        )
    if name in BUILTIN_METHODS:
        raise ConfigError(
            f"--name {name!r} is a built-in method's name; an external model needs its own name"
        )
    return name


def model_source(path: str | Path, **settings: Any) -> ModelSpec:
    """The model's kind and input settings (train.external.resolve_spec)."""
    return resolve_spec(path, **settings)


def external_config(cfg: dict, source: ExternalSource, *, device: torch.device) -> dict:
    """The record's config: the resolved data and eval settings, the user's name as `method`, and an
    `external` section with the scored files' SHA-256 (content, not path: part of the run id)."""
    out = {k: v for k, v in cfg.items() if k not in TRAINING_SECTIONS}
    out["method"] = check_name(source.name)
    out["device"] = device.type if source.model is not None else "cpu"
    parse_rule(out["eval"]["threshold"])
    external: dict[str, Any] = {"kind": source.kind}
    if source.model is None:
        if source.predictions is None:
            raise ConfigError("dermbench evaluate needs --predictions FILE or --model FILE")
        read_prediction_file(
            source.predictions, id_column=source.id_column
        )  # a missing or unreadable file stops here
        external["sha256"] = sha256_of(source.predictions)
        external["id_column"] = source.id_column
    else:
        external["sha256"] = sha256_of(source.model.path)
        external["model"] = {k: v for k, v in source.model.describe().items() if k != "settings_from"}
    if source.val_predictions is not None:
        read_prediction_file(source.val_predictions, id_column=source.id_column)
        external["val_predictions_sha256"] = sha256_of(source.val_predictions)
    external["threshold"] = (
        "validation" if source.val_predictions is not None or source.model_val else f"fixed {FIXED_THRESHOLD}"
    )
    out["external"] = external
    return out


def _aligned(split: Split, other: Split) -> np.ndarray:
    """Positions in `other` of `split`'s rows, by sample id (a DataError when some are absent)."""
    position = pd.Series(np.arange(len(other)), index=other.table["sample_id"].astype(str))
    ids = split.table["sample_id"].astype(str)
    missing = ids[~ids.isin(position.index)]
    if len(missing):
        raise DataError(
            f"test set {split.name!r}: {len(missing)} sample(s) did not load at the model's input size "
            f"(e.g. {', '.join(missing.head(5))})"
        )
    return position.loc[ids].to_numpy()


class _Scorer:
    """Probabilities of the user's model or file for a split (in the split's row order)."""

    def __init__(
        self, source: ExternalSource, datasets: DatasetPool, device: torch.device, console: Console
    ) -> None:
        self.source, self.datasets, self.device, self.console = source, datasets, device, console
        self.model = None
        self.table = None
        if source.model is None:
            self.table = read_prediction_file(source.predictions, id_column=source.id_column)

    def _model(self, num_classes: int):
        if self.model is None:
            self.model = load_model(self.source.model, num_classes)
        return self.model

    def images(self, images: Any, num_classes: int, label: str) -> np.ndarray:
        return predict_images(
            self._model(num_classes),
            images,
            self.source.model,
            num_classes=num_classes,
            device=self.device,
            batch_size=self.source.batch_size,
            console=self.console,
            label=label,
        )

    def split(
        self,
        split: Split,
        dataset: str,
        split_name: str,
        *,
        test_set: str | None,
        predictions: Path | None = None,
    ) -> np.ndarray:
        if self.source.model is None:
            table = (
                self.table
                if predictions is None
                else read_prediction_file(predictions, id_column=self.source.id_column)
            )
            return match_predictions(
                table,
                split,
                where=str(predictions or self.source.predictions),
                id_column=self.source.id_column,
                test_set=test_set,
            )
        size = int(self.source.model.input_size)
        loaded = self.datasets.load(dataset, split_name, image_size=size)
        index = _aligned(split, loaded)
        images = (
            loaded.images
            if np.array_equal(index, np.arange(len(loaded)))
            else np.asarray(loaded.images)[index]
        )
        return self.images(images, split.num_classes, f"{self.source.name} on {split.name}")


def evaluate_external(
    cfg: dict,
    source: ExternalSource,
    *,
    force: bool = False,
    counterfactual: bool = False,
    console: Console | None = None,
) -> RunResult:
    """Score `source` on `cfg`'s test sets and write a run folder like `dermbench run`'s.

    `cfg` is a resolved config (its `method` is replaced by the user's name); a finished run of the
    same settings and file content is reused unless `force`."""
    console = console or Console()
    started = time.perf_counter()
    device = choose_device(cfg["device"]) if source.model is not None else torch.device("cpu")
    cfg = external_config(cfg, source, device=device)
    if source.model_val and source.model is None:
        raise ConfigError("--val-split scores the model on the validation split: it needs --model")
    if counterfactual and source.model is None:
        raise ConfigError(
            "--counterfactual renders new images, so it needs a model (--model), not a predictions file"
        )
    datasets = DatasetPool(cfg, ())
    fingerprint = data_fingerprints(cfg, datasets)
    run_id = configuration.run_id(cfg, configuration.data_digests(fingerprint))
    run = RunDir(Path(cfg["out"]), run_id)
    if run.done and not force:
        console.print(
            f"[green]finished evaluation found[/] {run.path} (same settings and file content); use --force "
            "to redo it"
        )
        return RunResult(run, run.finished_metrics(), reused=True)
    with run.lock(
        on_wait=lambda pid: console.print(f"[yellow]run {run_id} is in progress in process {pid}[/]; waiting")
    ):
        if run.done and not force:
            return RunResult(run, run.finished_metrics(), reused=True)
        if force:
            run.reset()
        run.remove_temporaries()
        run.create()
        write_text(run.file("config.yaml"), configuration.dump(cfg))
        write_json(run.file("plugins.json"), {})
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
            f"evaluating external model [bold]{source.name}[/] ({source.kind}) as run [bold]{run_id}[/]: "
            f"dataset {cfg['dataset']}, task {cfg['task']}, profile {cfg['profile']}"
        )
        tests, skipped = load_test_sets(cfg, datasets.test_sets, datasets, ctx)
        scorer = _Scorer(source, datasets, device, console)
        threshold, rule = _threshold(cfg, source, scorer, datasets, ctx)
        tests_by_name = {t.name: t for t in datasets.test_sets}
        by_set = scorer.table is not None and "test_set" in scorer.table.columns
        if scorer.table is not None and not by_set and len(tests) > 1:
            raise ConfigError(
                f"{source.predictions} has no test_set column, and {len(tests)} test sets are evaluated "
                f"({', '.join(tests)}): add a test_set column naming each row's test set, or choose "
                "one with --test-set NAME"
            )
        probs = {
            name: scorer.split(
                split,
                tests_by_name[name].dataset,
                tests_by_name[name].split,
                test_set=name if by_set else None,
            )
            for name, split in tests.items()
        }  # every file problem before anything is written
        evaluations = score_test_sets(
            run, cfg, tests, lambda name, split: probs[name], threshold=threshold, device=device
        )
        files = {"file": str(Path(source.model.path if source.model else source.predictions).resolve())}
        if source.val_predictions is not None:
            files["val_predictions"] = str(Path(source.val_predictions).resolve())
        details: dict[str, Any] = {
            "external": True,
            "kind": source.kind,
            **files,
            "sha256": cfg["external"]["sha256"],
            "threshold": (
                f"chosen on validation predictions by {rule!r}"
                if rule is not None
                else f"fixed {FIXED_THRESHOLD}: no validation predictions were given"
            ),
        }
        if source.model is not None:
            details["input"] = source.model.describe()
        backbones = [source.model.arch] if source.model is not None and source.model.arch else []
        references = {
            "dermbench": [DERMBENCH],
            **dataset_references([cfg["dataset"], *(tests_by_name[t].dataset for t in evaluations)]),
            **{f"backbone {b}": list(backbone_references(b)) for b in backbones},
        }
        metrics = {
            **record_head(
                run_id,
                cfg,
                method=source.name,
                plugins={},
                device=device,
                started=started,
                resumed=False,
                threshold_rule=rule if rule is not None else FIXED_THRESHOLD,
                skipped=skipped,
            ),
            "train_history": None,
            "eval": evaluations,
            "excluded": None,
            "data_fingerprint": fingerprint,
            "methods": {source.name: details},
            "references": references,
        }
        metrics = run.write_record(metrics)
        if counterfactual:
            data = counterfactual_data(
                cfg,
                datasets,
                tests,
                tests_by_name,
                read_record(run.path / METRICS_FILE),
                predict=lambda split: scorer.images(split.images, split.num_classes, split.name),
                size=int(source.model.input_size),
                recorded=run.path / PREDICTIONS,
                tolerance=TOLERANCE.get(device.type, 1e-4),
                console=console,
            )
            write_counterfactual(
                run.path, {"model": {"external": source.name, **source.model.describe()}, **data}
            )
        run.mark_done()
        write_report(run.path)
        ctx.say(f"evaluated {source.name} in {time.perf_counter() - started:.1f} s; record in {run.path}")
        return RunResult(run, metrics, reused=False)


def _threshold(
    cfg: dict, source: ExternalSource, scorer: _Scorer, datasets: DatasetPool, ctx: RunContext
) -> tuple[float | None, str | None]:
    """The decision threshold and the rule that chose it on validation; (0.5, None) for a binary task
    without validation predictions; (None, rule) for multi-class tasks (argmax)."""
    classes = datasets.get(cfg["dataset"]).classes(cfg["task"])
    if source.val_predictions is None and not source.model_val:
        if len(classes) != 2:
            return None, None
        ctx.say(
            f"[yellow]threshold fixed at {FIXED_THRESHOLD}[/]: no validation "
            "predictions were given (--val-predictions FILE, or --val-split "
            "with a model, chooses it on validation as `dermbench run` does)"
        )
        return FIXED_THRESHOLD, None
    val = datasets.load(cfg["dataset"], "val")
    prob = scorer.split(val, cfg["dataset"], "val", test_set=None, predictions=source.val_predictions)
    rule = cfg["eval"]["threshold"]
    return threshold_from_validation(rule, val.labels, prob), str(rule)


# --------------------------------------------------------------------------- the counterfactual test

#: class probabilities of a split of counterfactual renders (its table: the lesions' rows with the
#: rendered FST and the tone groups that follow from it; its images: the renders)
Predict = Callable[[Split], np.ndarray]


def counterfactual_data(
    cfg: dict,
    datasets: DatasetPool,
    tests: dict[str, Split],
    tests_by_name: dict,
    record,
    *,
    predict: Predict,
    size: int,
    recorded: Path | None,
    tolerance: float,
    console: Console,
    mismatch: str = "",
) -> dict[str, Any]:
    """{"renderer", "test_sets"} of counterfactual.json for every SynthDerm test set of the run.

    Each lesion is rendered on FST I..VI (SynthDerm.counterfactual). Two checks come first, on the
    render at each lesion's own FST: it must equal the test image byte for byte, and the model's
    probabilities on it must equal the run's recorded predictions (within `tolerance`), so the model
    scored here is the one the record scored (`mismatch` says why they might not, when they do not)."""
    out: dict[str, Any] = {}
    for name, split in tests.items():
        test = tests_by_name.get(name)
        dataset = datasets.get(test.dataset) if test is not None else None
        if not isinstance(dataset, SynthDerm):
            continue
        ev = record.eval.get(name)
        if ev is None:
            continue
        own = datasets.load(test.dataset, test.split, image_size=size)
        index = _aligned(split, own)
        table = own.table.iloc[index].reset_index(drop=True)
        fst = table["fst"].to_numpy(dtype=np.int64)
        probs, identical = [], True
        reference = np.asarray(own.images)[index]
        for tone in FST_TYPES:
            console.print(
                f"counterfactual {name}: rendering {len(table)} lesions on FST {tone}", highlight=False
            )
            images, _ = dataset.counterfactual(table, fst=tone, size=size)
            same = fst == tone
            identical &= bool(np.array_equal(images[same], reference[same]))
            probs.append(predict(_rendered_split(split, table, images, tone, f"{name} FST {tone}")))
        prob = np.stack(probs, axis=1)  # (n, 6, K)
        if not identical:
            raise DermbenchError(
                f"counterfactual {name}: the render at a lesion's own FST differs from its test image; "
                "the generator is not the one the run used (SynthDerm's GENERATOR_VERSION)"
            )
        at_own = prob[np.arange(len(fst)), fst - 1]
        check = {"identical_images": True, "tolerance": tolerance, "max_abs_diff": None}
        if recorded is not None:
            check["max_abs_diff"] = _compare_recorded(
                recorded / f"{name}.csv", table["sample_id"], at_own, tolerance, mismatch
            )
        entry = counterfactual_scores(
            y_true=table["label"].to_numpy(),
            prob=prob,
            threshold=ev.threshold,
            original_fst=fst,
            n_boot=int(cfg["eval"]["n_boot"]),
            seed=int(cfg["seed"]),
            class_names=split.classes,
            tag=name,
        )
        out[name] = {"dataset": test.dataset, "split": test.split, **entry, "check": check}
    if not out:
        raise DermbenchError(
            "the counterfactual test renders SynthDerm lesions on other skin tones; this run has no "
            f"SynthDerm test set (test sets: {', '.join(tests) or 'none'})"
        )
    return {
        "renderer": {
            "dataset": "synthderm",
            "image_size": size,
            "tones": list(FST_TYPES),
            "held_fixed": "scene, lesion geometry and severity, artifacts, acquisition, sensor-noise draws",
            "doc": "docs/counterfactual.md",
        },
        "test_sets": out,
    }


def _rendered_split(split: Split, table: pd.DataFrame, images: np.ndarray, tone: int, name: str) -> Split:
    """The renders of `table`'s lesions on FST `tone` as a split a method's predict can take: the
    same rows, with the rendered FST and the tone3/tone2 groups that follow from it (at a lesion's
    own FST, exactly its test row), and no label (the harness's predict call drops it anyway)."""
    rows = add_group_columns(table.drop(columns=["tone3", "tone2"], errors="ignore").assign(fst=tone))
    return Split(name=name, table=rows, images=images, classes=split.classes)


def _compare_recorded(
    path: Path, ids: pd.Series, prob: np.ndarray, tolerance: float, mismatch: str = ""
) -> float:
    """Largest |recorded - recomputed| probability; a DermbenchError above `tolerance`."""
    if not path.is_file():
        raise DermbenchError(
            f"{path}: the run's predictions are missing; the counterfactual test checks the reloaded "
            "model against them"
        )
    table = pd.read_csv(path, dtype={"sample_id": str}).set_index("sample_id")
    columns = [f"prob_{k}" for k in range(prob.shape[1])]
    recorded = table.loc[ids.astype(str), columns].to_numpy(dtype=np.float64)
    diff = float(np.abs(recorded - prob).max()) if len(prob) else 0.0
    if diff > tolerance:
        raise DermbenchError(
            f"the model does not reproduce the run's recorded predictions ({path}: largest "
            f"difference {diff:.3g} > {tolerance:g}), so a counterfactual score would not be this "
            f"run's{'; ' + mismatch if mismatch else ''}"
        )
    return diff


def counterfactual_for_run(
    run_dir: str | Path,
    *,
    device: str | None = None,
    model: str | Path | None = None,
    batch_size: int = 64,
    console: Console | None = None,
) -> Path:
    """Render a finished run's SynthDerm test sets on FST I..VI, score its model on them and write
    counterfactual.json and the report. The model: the run's model.safetensors in its configured
    backbone, or for an external run its model file (checked against the recorded SHA-256;
    `model` points at it when it moved)."""
    console = console or Console()
    run_dir = Path(run_dir)
    if not (run_dir / "done").is_file():
        raise RecordError(f"{run_dir}: unfinished run (no `done` marker); finish it first")
    check_seal(
        run_dir, ignore=COUNTERFACTUAL_FILE
    )  # the file this writes again; the rest must be as it finished
    record = read_record(run_dir / METRICS_FILE, verify_seal=False)
    cfg = dict(record.config)
    torch_device = choose_device(
        device or (cfg.get("device") if cfg.get("device") in ("cpu", "cuda", "mps") else "cpu")
    )
    datasets = DatasetPool(cfg, ())
    ctx = RunContext(
        config=cfg,
        device=torch_device,
        work_dir=run_dir / "work",
        cache_dir=run_dir / "work" / "cache",
        console=console,
        log=None,
        datasets=datasets,
    )
    tests_by_name = {t.name: t for t in datasets.test_sets}
    chosen = {
        **cfg,
        "data": {
            **cfg["data"],
            "test_sets": [
                t
                for t in record.eval
                if t in tests_by_name and isinstance(datasets.get(tests_by_name[t].dataset), SynthDerm)
            ],
        },
    }
    if not chosen["data"]["test_sets"]:
        raise DermbenchError(
            f"{run_dir}: the counterfactual test renders SynthDerm lesions on other skin tones; this run "
            f"has no SynthDerm test set (test sets: {', '.join(record.eval)})"
        )
    tests, _ = load_test_sets(chosen, [tests_by_name[n] for n in chosen["data"]["test_sets"]], datasets, ctx)
    external = cfg.get("external")
    if isinstance(external, dict):
        predict, size, described = _external_predictor(
            record, external, model, torch_device, batch_size, console
        )
        mismatch = ""
    else:
        predict, size, described = _run_predictor(run_dir, cfg, ctx, tests)
        mismatch = (
            f"method {cfg['method']!r} predicts otherwise than its saved backbone does on the harness "
            f"inputs: {rerun_with_the_test(run_dir)}"
        )
    data = counterfactual_data(
        cfg,
        datasets,
        tests,
        tests_by_name,
        record,
        predict=predict,
        size=size,
        recorded=run_dir / PREDICTIONS,
        tolerance=TOLERANCE.get(torch_device.type, 1e-4),
        console=console,
        mismatch=mismatch,
    )
    with RunDir(run_dir.parent, run_dir.name).lock():
        path = write_counterfactual(run_dir, {"model": described, **data})
        write_report(run_dir)
    return path


def counterfactual_of_method(done: BeforeDone) -> Path:
    """`dermbench run --counterfactual`: the counterfactual test at the end of a run, before its `done`
    marker, scored by the method's own `predict` hook on the model its `fit` returned, so every
    method has it (Class-N-Diff's latent classifier and FEDD's probe too, which `dermbench
    counterfactual` cannot rebuild from a backbone). The re-predicted originals must equal the
    predictions just recorded; counterfactual.json is then sealed by the `done` marker. A run without
    a SynthDerm test set is an error naming its test sets."""
    run, cfg, ctx = done.run, done.cfg, done.ctx
    tests_by_name = {t.name: t for t in done.datasets.test_sets}
    record = read_record(run.path / METRICS_FILE)  # just written; no `done` yet, so nothing to verify
    data = counterfactual_data(
        cfg,
        done.datasets,
        done.tests,
        tests_by_name,
        record,
        predict=lambda split: predict_checked(done.pm, ctx, done.model, split),
        size=int(cfg["data"]["image_size"]),
        recorded=run.path / PREDICTIONS,
        tolerance=TOLERANCE.get(ctx.device.type, 1e-4),
        console=ctx.console,
        mismatch=(
            f"method {cfg['method']!r}'s predict gives other "
            "probabilities for the same images on a second call"
        ),
    )
    described = {
        "run": run.run_id,
        "method": cfg["method"],
        "predict": done.pm.trace.calls["predict"].answer,
        "scored": (
            "the model fit returned, through the method's predict hook (dermbench run --counterfactual)"
        ),
    }
    path = write_counterfactual(run.path, {"model": described, **data})
    ctx.say(
        f"counterfactual test: {', '.join(data['test_sets'])} "
        f"rendered on FST I-VI and scored; {path.name} written"
    )
    return path


def _external_predictor(
    record, external: dict, model: str | Path | None, device: torch.device, batch_size: int, console: Console
) -> tuple[Predict, int, dict]:
    if external.get("kind") == "predictions":
        raise DermbenchError(
            f"run {record.run_id} scored a predictions file; the counterfactual test renders new "
            "images, so it needs the model: `dermbench evaluate --model FILE ... --counterfactual`"
        )
    details = (record.methods or {}).get(record.method, {})
    path = Path(model) if model is not None else Path(str(details.get("file", "")))
    if not path.is_file():
        raise DermbenchError(f"run {record.run_id}'s model file {path} is not there; pass --model PATH")
    if sha256_of(path) != external.get("sha256"):
        raise DermbenchError(
            f"{path} is not the model run {record.run_id} scored (its SHA-256 differs from the record's)"
        )
    given = external.get("model") or {}
    spec = resolve_spec(
        path,
        arch=given.get("arch") if given.get("kind") == "timm" else None,
        input_size=given.get("input_size"),
        mean=given.get("mean"),
        std=given.get("std"),
        output=given.get("output"),
    )
    source = ExternalSource(name=record.method, model=spec, batch_size=batch_size)
    scorer = _Scorer(source, None, device, console)  # type: ignore[arg-type]
    return (
        (lambda split: scorer.images(split.images, split.num_classes, split.name)),
        int(spec.input_size),
        {"external": record.method, **spec.describe()},
    )


def rerun_with_the_test(run_dir: Path) -> str:
    """What to do for a run whose model the counterfactual test cannot rebuild: run it again with the
    test at the end, scored through the method's own predict (the same settings give the same run id)."""
    return (
        f"rerun it with the test at its end, scored by the method's own predict: `dermbench run --config "
        f"{run_dir / 'config.yaml'} --out DIR --counterfactual` (DIR: another folder, or add --force to redo "
        "this one)"
    )


def _run_predictor(
    run_dir: Path, cfg: dict, ctx: RunContext, tests: dict[str, Split]
) -> tuple[Predict, int, dict]:
    weights = run_dir / "model.safetensors"
    if not weights.is_file():
        raise DermbenchError(
            f"{run_dir} has no model.safetensors (committed records keep no weights, and a method "
            f"whose model is not a torch module saves none): {rerun_with_the_test(run_dir)}"
        )
    m = cfg["model"]
    num_classes = next(iter(tests.values())).num_classes
    model = create_backbone(
        m["backbone"],
        num_classes=num_classes,
        pretrained=False,
        drop_rate=m["drop_rate"],
        image_size=cfg["data"]["image_size"],
    )
    try:
        load_state_strict(model, weights, f"backbone {m['backbone']}")
    except DermbenchError as exc:
        raise DermbenchError(
            f"{weights}: the run's weights do not load into its configured backbone "
            f"{m['backbone']!r} ({exc}); method {cfg['method']!r} keeps a model of its own, which "
            f"`dermbench counterfactual` cannot rebuild: {rerun_with_the_test(run_dir)}"
        ) from None

    def predict(split: Split) -> np.ndarray:
        return ctx.predict_proba(model, split)

    return (
        predict,
        int(cfg["data"]["image_size"]),
        {
            "run": run_dir.name,
            "backbone": m["backbone"],
            "weights": "model.safetensors",
            "sha256": sha256_of(weights),
        },
    )
