"""The hook contract, checked on what plugins answer: `predict` returns one probability row per
sample, `fit` returns a model something can predict with, and the record says which plugin
answered each hook. A broken answer stops the run with a PluginError naming the plugin, the
hook and the split, before it can turn into a wrong number."""

from __future__ import annotations

import numpy as np
import torch

from dermbench.context import RunContext
from dermbench.data.model import Split
from dermbench.plugins import HookCall, Manager, PluginError, implementers, predict_needs_fit

#: how far a probability may stray outside [0, 1] (float rounding)
PROB_RANGE_TOL = 1e-6
#: how far a row of probabilities may sum from 1 (float16 outputs round to about 1e-3 per row)
PROB_SUM_TOL = 1e-3
#: validation samples `predict` sees with the untrained model before training
PRECHECK_SAMPLES = 4


def predict_checked(pm: Manager, ctx: RunContext, model, split: Split, *, when: str = "") -> np.ndarray:
    """`predict`'s answer for `split`, checked to be one probability row per sample (any task);
    an error names the plugin that answered and the split."""
    call = pm.trace.begin("predict")
    raw = pm.hook.predict(
        ctx=ctx, model=model, split=split.without_labels()
    )  # None or an exception: PluginError
    return check_probabilities(raw, plugin=call.answer or "?", split=split, when=when)


def check_probabilities(raw, *, plugin: str, split: Split, when: str = "") -> np.ndarray:
    """`raw` as a float64 (n, K) array of finite values in [0, 1] whose rows sum to 1: anything
    else would give wrong AUC/ECE without an error, so it stops the run."""
    where = f"method plugin {plugin!r}: predict on {split.name!r}{when}"
    if isinstance(raw, torch.Tensor):
        raw = raw.detach().to("cpu", torch.float64).numpy()
    try:
        prob = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PluginError(
            f"{where} returned {type(raw).__name__}, not an array of class probabilities ({exc})",
            plugin=plugin,
            hook="predict",
        ) from None
    expected = (len(split), split.num_classes)
    if prob.shape != expected:
        raise PluginError(
            f"{where} returned shape {prob.shape}, expected {expected} (samples, classes)",
            plugin=plugin,
            hook="predict",
        )
    if len(prob) == 0:
        return prob
    problems = [
        (~np.isfinite(prob).all(1), "a non-finite value (nan or inf)"),
        (((prob < -PROB_RANGE_TOL) | (prob > 1 + PROB_RANGE_TOL)).any(1), "a value outside [0, 1]"),
        (np.abs(prob.sum(1) - 1.0) > PROB_SUM_TOL, f"a sum other than 1 (tolerance {PROB_SUM_TOL:g})"),
    ]
    for bad, what in problems:
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise PluginError(
                f"{where} returned rows that are not probabilities: {what} in {int(bad.sum())} "
                f"of {len(prob)} row(s), e.g. row {row}: "
                f"{np.array2string(prob[row], precision=4)} (sum {prob[row].sum():.4g}). "
                "predict must return class probabilities (e.g. a softmax), one row per sample",
                plugin=plugin,
                hook="predict",
            )
    return prob


def check_predict_before_fit(pm: Manager, ctx: RunContext, model, val: Split) -> None:
    """Run `predict` on a few validation samples with the untrained model, so a wrong shape, a
    None or non-probabilities stop the run before training instead of after it. A plugin whose
    predict needs a fitted model opts out with `predict_needs_fit = True`. The check leaves no
    trace: the model's weights and buffers (a predict that forgets eval() updates BatchNorm
    statistics), its train/eval modes and torch's global RNG state are put back, so training
    starts exactly as it would without the check."""
    if opted_out := predict_needs_fit(pm):
        ctx.say(f"predict not checked before training: {', '.join(opted_out)} sets predict_needs_fit")
        return
    sample = val.subset(np.arange(min(PRECHECK_SAMPLES, len(val))))
    modes = [(m, m.training) for m in model.modules()] if isinstance(model, torch.nn.Module) else []
    if modes:
        model.to(ctx.device)  # where fit puts it anyway; predict runs on the run's device
    state = {k: v.detach().clone() for k, v in model.state_dict().items()} if modes else None
    rng = torch.get_rng_state()
    when = f" (checked before training, on {len(sample)} validation sample(s) with the untrained model)"
    try:
        predict_checked(pm, ctx, model, sample, when=when)
    except PluginError as exc:
        hint = "" if when in str(exc) else when
        raise PluginError(
            f"{exc}{hint}; a method whose predict needs a trained model sets predict_needs_fit = True "
            "on its plugin",
            plugin=exc.plugin,
            hook=exc.hook,
        ) from exc.__cause__
    finally:
        torch.set_rng_state(rng)
        if state is not None:
            model.load_state_dict(state)
        for module, training in modes:
            module.training = training


def check_model(pm: Manager, model, call: HookCall) -> None:
    """`fit` must return a torch nn.Module, unless a plugin that returned something else also
    implements `predict` (it knows how to use its own kind of model)."""
    if isinstance(model, torch.nn.Module):
        return
    producers = [p for p in [call.answer, *call.wrappers] if p is not None]
    others = [p for p in producers if not issubclass(call.result_types.get(p, type(model)), torch.nn.Module)]
    if set(others) & set(implementers(pm, "predict")) - {"erm"}:
        return
    culprit = others[0] if others else (producers[-1] if producers else "?")
    raise PluginError(
        f"method plugin {culprit!r}: its fit returned {type(model).__name__}, not a torch nn.Module; a "
        "method whose fit returns another kind of model must implement predict too, to use it",
        plugin=culprit,
        hook="fit",
    )


def hooks_answered(pm: Manager) -> dict:
    """metrics.json "hooks": which plugin answered fit and predict, the fit wrappers that ran
    and the plugins whose augment returned a result."""
    calls = pm.trace.calls
    fit, predict, augment = (calls.get(h) for h in ("fit", "predict", "augment"))
    return {
        "fit": fit.answer if fit else None,
        "fit_wrappers": list(fit.wrappers) if fit else [],
        "predict": predict.answer if predict else None,
        "augment": list(augment.answered) if augment else [],
    }
