"""A conformance check for method plugins: the hooks answer with the right types and shapes,
and a whole (tiny) run completes and writes its record. Third-party packages call
`check_method` from their own tests; `dermbench new-method` scaffolds such a test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console

from dermbench.errors import DermbenchError
from dermbench.plugins import make_manager
from dermbench.results.bibtex import BibtexError
from dermbench.results.citations import method_references
from dermbench.runner import prepare_run, run_experiment

#: a run small enough for a unit test: SynthDerm at 16 px, a few hundred images, one epoch
TINY_SETTINGS = [
    "data.image_size=16",
    "data.options={n_train: 240, n_val: 80, n_test: 80, n_test_ddi: 60, n_test_dermoscopic: 60}",
    "model.backbone=test_resnet",
    "train.epochs=1",
    "train.batch_size=32",
    "eval.n_boot=0",
]


def check_method(method: str, *, out: Path, plugins: tuple[str, ...] = (), sets: list[str] = ()) -> dict:
    """Run `method` end to end on tiny SynthDerm and check its hooks; returns metrics.json.

    Raises DermbenchError describing the first broken promise.
    """
    pm, loaded = make_manager(method, plugins)
    try:  # before the run: a malformed entry would otherwise fail only when the record is written
        method_references(method, plugins)
    except (TypeError, BibtexError) as exc:
        raise DermbenchError(f"{method}: its REFERENCES: {exc}") from None
    for profile in ("tiny", "paper"):
        for defaults in pm.hook.dermbench_method_defaults(profile=profile, dataset="synthderm"):
            if not isinstance(defaults, dict):
                raise DermbenchError(
                    f"{method}: dermbench_method_defaults({profile!r}) "
                    f"returned {type(defaults).__name__}, not a dict"
                )
    cfg, run_plugins = prepare_run(
        sets=[*TINY_SETTINGS, *sets],
        flags={"method": method, "device": "cpu", "out": str(out)},
        local=plugins,
    )
    result = run_experiment(cfg, plugins=run_plugins, local=plugins, console=Console(quiet=True))
    metrics = result.metrics
    if not result.run_dir.done:
        raise DermbenchError(f"{method}: the run finished without its done marker")
    for name, ev in metrics["eval"].items():
        auc = ev["overall"].get("auc")
        if auc is not None and not (0.0 <= auc <= 1.0):
            raise DermbenchError(f"{method}: overall AUC {auc} on {name} is outside [0, 1]")
        preds = result.run_dir.file(f"predictions/{name}.csv")
        if not preds.exists():
            raise DermbenchError(f"{method}: no predictions written for {name}")
    probs = np.loadtxt(
        result.run_dir.file("predictions/synthderm.csv"),
        delimiter=",",
        skiprows=1,
        usecols=(2, 3),
        dtype=float,
    )
    if not np.allclose(probs.sum(1), 1.0, atol=1e-4):
        raise DermbenchError(f"{method}: predict returned rows that are not probability distributions")
    return metrics
