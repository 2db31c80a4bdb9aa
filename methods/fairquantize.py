"""FairQuantize (Guo, Jia, Hu, Shi; MICCAI 2024): fairness-aware power-of-two weight quantisation.

Starting from a trained ERM model, FairQuantize quantises, step by step, the weights that matter
little to the unprivileged group and much to the privileged one, retraining the rest after
each step, so the model's capacity moves away from what only the privileged group needs.

- Quantiser: q(θ) = sign(θ) 2^round(log2|θ|), no bit-width bound; q(0) = 0.
- Score (paper Eq. 2): score_i = 1/2 (q(θ_i) - θ_i)^2 (h_ii^u - beta h_ii^p), with h the GGN
  diagonal (dermbench.mitigation.curvature; the code uses BackPACK's DiagGGNExact) of the
  unprivileged (u) and privileged (p) groups, averaged over equal-size scoring samples drawn
  each step from the training split with eval transforms. Their size defaults to the smaller
  group's (the code's `genScoreDataset`: all of the minority group); `score_samples` caps it.
- Selection: the globally lowest-scoring weights (the paper's rule, "Q_n N weights"); the code
  ranks per layer, available as `ranking: layer`. The code's selection compares
  argsort(scores) with k, which marks the inverse permutation instead of the lowest scores
  (docs/fairquantize.md, "Paper vs dermbench"); that bug is not reproduced. Quantised weights stay quantised.
- Schedule (Alg. 1): Q_n = min(target, n q), q = 0.05. After each step the model retrains for
  `retrain.epochs` epochs on batches balanced over the groups (the code zips a light and a dark
  loader: train.sampler "sensitive"), and after every optimiser step the quantised weights are
  written back to their power-of-two values (`dermbench.mitigation.frozen`), so they stay
  bit-identical. With `retrain.epochs: 0` it is the paper's ablation setting (no retraining).
- Weights: every trainable `...weight` (convolution, linear and BatchNorm gamma, as the code
  does); biases excluded. Weights an inner method froze (FairPrune's zeros in
  `fairprune+fairquantize`) are neither quantised nor counted: the ratio is of the others.
- Checkpoint: the step is chosen on validation (dermbench.mitigation.selection; by default the
  lowest validation EOdd among steps within `max_drop` of the starting model's validation
  metric). The starting model itself is not a candidate: the method always quantises.
- Loss during retraining: the configured task loss (the code's default alpha = 0, so its
  |CE_light - CE_dark| term is off).

Defaults: target 0.2 and beta 1.0 (Fitzpatrick17k, Table 1), 0.8 and 0.778 (ISIC 2019,
Table 2); the code's retraining recipe (SGD lr 1e-3, no momentum, wd 0, batch 4, StepLR(4, 0.57),
20 epochs per step) in the paper profile. Reported (Table 1, Fitzpatrick17k VGG-11): EOpp0
0.0012, EOpp1 0.269, EOdd 0.135 (our eodd_net), avg F1 0.524, against vanilla 0.0013 / 0.361 /
0.182 / 0.510.

Saved with the model: `quantized_mask.safetensors` (1 = quantised); the record gives the
quantised share per layer and the model's size if quantised weights were stored as
sign + exponent codes.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from dermbench.errors import ConfigError
from dermbench.hookspecs import hookimpl
from dermbench.mitigation.fairquantize_paper import paper_defaults, reported
from dermbench.mitigation.frozen import freeze, frozen, layer_shares, restore, save_masks, set_frozen
from dermbench.mitigation.groups import check_scheme, sensitive_groups
from dermbench.mitigation.saliency import editable_weights, group_curvature, lowest, scores
from dermbench.mitigation.selection import choose, validation_scores

name = "fairquantize"
#: the paper(s) to cite for this method, as BibTeX (`dermbench cite`; docs/cite.md)
REFERENCES: tuple[str, ...] = (
    r"""@inproceedings{guo2024fairquantize,
  author = {Guo, Yuanbo and Jia, Zhenge and Hu, Jingtong and Shi, Yiyu},
  title = {{FairQuantize}: Achieving Fairness Through Weight Quantization for Dermatological Disease Diagnosis},
  booktitle = {Medical Image Computing and Computer Assisted Intervention -- MICCAI 2024},
  year = {2024},
}""",  # noqa: E501 (a BibTeX field stays on one line)
)

RANKINGS = ("global", "layer")
#: CPU-sized: two steps of 10 % (the paper's 5 % steps in the paper profile)
TINY = {
    "groups": "tone2",
    "privileged": "auto",
    "beta": 1.0,
    "step": 0.1,
    "target": 0.2,
    "ranking": "global",
    "score_samples": 256,
    "select": "fairest_within",
    "max_drop": 0.02,
    "fair_metric": "eodd",
    "retrain": {
        "epochs": 1,
        "optimizer": "adam",
        "lr": 0.0001,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "batch_size": 64,
        "schedule": "none",
        "step_size": 4,
        "gamma": 0.57,
    },
}
PAPER_RETRAIN = {
    "epochs": 20,
    "optimizer": "sgd",
    "lr": 0.001,
    "momentum": 0.0,
    "weight_decay": 0.0,
    "batch_size": 4,
    "schedule": "step",
    "step_size": 4,
    "gamma": 0.57,
}
#: the paper profile's selection gap: the code keeps the checkpoint of the best validation `EOdds_abs`
#: (quantize.py), the Notre Dame |dTPR + dFPR| / 2 its Table 1 prints as EOdd: our eodd_net
PAPER_FAIR_METRIC = "eodd_net"
#: per dataset: the paper's target ratio and beta (Tables 1 and 2)
PAPER_SETTINGS = {"isic2019": {"target": 0.8, "beta": 0.778}}


@hookimpl
def dermbench_method_defaults(profile: str, dataset: str) -> dict:
    if profile != "paper":
        return {name: copy.deepcopy(TINY)}
    settings = {
        **copy.deepcopy(TINY),
        "step": 0.05,
        "score_samples": None,
        "retrain": dict(PAPER_RETRAIN),
        "fair_metric": PAPER_FAIR_METRIC,
        **PAPER_SETTINGS.get(dataset, {}),
    }
    return paper_defaults(dataset, name, settings)


def quantize(theta: torch.Tensor) -> torch.Tensor:
    """q(θ) = sign(θ) 2^round(log2|θ|), exactly (q(0) = 0)."""
    return torch.sign(theta) * torch.exp2(torch.round(torch.log2(theta.abs())))


def _settings(ctx) -> dict[str, Any]:
    return check_settings(ctx.hparams(name))


@hookimpl
def dermbench_check_settings(config: dict) -> None:
    check_settings(config.get(name) or {})


def check_settings(settings: dict) -> dict[str, Any]:
    """FairQuantize's settings (tiny defaults merged in) checked: a ConfigError naming the setting."""
    s = {**copy.deepcopy(TINY), **settings}
    check_scheme(s["groups"], f"{name}.groups")
    if not 0 < float(s["step"]) <= 1:
        raise ConfigError(f"fairquantize.step must be in (0, 1], got {s['step']!r}")
    if not 0 < float(s["target"]) <= 1:
        raise ConfigError(f"fairquantize.target must be in (0, 1], got {s['target']!r}")
    if float(s["beta"]) < 0:
        raise ConfigError(f"fairquantize.beta must be >= 0, got {s['beta']!r}")
    if s["ranking"] not in RANKINGS:
        raise ConfigError(f"fairquantize.ranking must be one of {', '.join(RANKINGS)}, got {s['ranking']!r}")
    if s["score_samples"] is not None and (not isinstance(s["score_samples"], int) or s["score_samples"] < 1):
        raise ConfigError(
            f"fairquantize.score_samples must be a positive integer or null, got {s['score_samples']!r}"
        )
    if not isinstance(s["retrain"].get("epochs"), int) or s["retrain"]["epochs"] < 0:
        raise ConfigError(
            f"fairquantize.retrain.epochs must be an integer >= 0, got {s['retrain'].get('epochs')!r}"
        )
    return s


def schedule(step: float, target: float) -> list[float]:
    """Q_n = min(target, n step) for n = 1, 2, ... until the target is reached."""
    n = math.ceil(round(target / step, 9))
    return [min(target, round(k * step, 9)) for k in range(1, n + 1)]


def select_step(
    model: nn.Module,
    h_u: dict,
    h_p: dict,
    *,
    ratio: float,
    beta: float,
    ranking: str,
    quantized: dict[str, torch.Tensor],
    eligible: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Masks of the weights quantised after this step: those already quantised plus the
    lowest-scoring eligible ones, so that `ratio` of the eligible weights are quantised
    (globally ranked, or per layer)."""
    params = dict(model.named_parameters())
    delta = {k: quantize(params[k].detach()) - params[k].detach() for k in eligible}
    score = scores(delta, h_u, h_p, beta)
    free = {k: eligible[k] & ~quantized[k] for k in eligible}
    if ranking == "global":
        total = sum(int(m.sum()) for m in eligible.values())
        need = round(ratio * total) - sum(int(m.sum()) for m in quantized.values())
        new = lowest(score, max(0, need), eligible=free)
    else:
        new = {}
        for k in eligible:
            need = round(ratio * int(eligible[k].sum())) - int(quantized[k].sum())
            new.update(lowest({k: score[k]}, max(0, need), eligible={k: free[k]}))
    return {k: quantized[k] | new[k] for k in eligible}


@hookimpl(wrapper=True)
def fit(ctx, model, train, val):
    model = yield  # the inner fit: the cached ERM model, or another method's
    s = _settings(ctx)
    scheme = s["groups"]
    groups = sensitive_groups(ctx, model, train, val, scheme=scheme, privileged=s["privileged"])
    ctx.record(name, {"groups": groups.as_record()})
    if ctx.config["profile"] == "paper" and (paper := reported(ctx.config["dataset"], name)) is not None:
        ctx.record(name, {"paper": paper})
    sizes = [len(groups.members(groups.unprivileged)), len(groups.members(groups.privileged))]
    samples = min(sizes) if s["score_samples"] is None else min(min(sizes), s["score_samples"])
    names = editable_weights(model)
    params = dict(model.named_parameters())
    inner = frozen(model)
    eligible = {
        k: ~inner[k][0] if k in inner else torch.ones_like(params[k], dtype=torch.bool) for k in names
    }
    quantized = {k: torch.zeros_like(eligible[k]) for k in names}
    start = validation_scores(ctx, model, val, scheme=scheme, fair_metric=s["fair_metric"])
    ctx.say(
        f"fairquantize: start: val {ctx.config['train']['select_metric']} {start['metric']:.4f}, "
        f"{s['fair_metric']} {start['gap']}"
    )
    steps, states, step_masks = [], [], []
    for n, ratio in enumerate(schedule(float(s["step"]), float(s["target"])), start=1):
        h_u, h_p, drawn = group_curvature(
            ctx, model, train, groups, samples=samples, stream=f"fairquantize-score-{n}"
        )
        quantized = select_step(
            model,
            h_u,
            h_p,
            ratio=ratio,
            beta=float(s["beta"]),
            ranking=s["ranking"],
            quantized=quantized,
            eligible=eligible,
        )
        with torch.no_grad():
            for k in names:
                p = params[k]
                p.copy_(torch.where(quantized[k], quantize(p), p))
                freeze(model, k, quantized[k])
        if s["retrain"]["epochs"] > 0:
            model = ctx.train_model(
                model,
                train,
                val,
                name=f"fairquantize-step{n}",
                groups=scheme,
                settings={**s["retrain"], "sampler": "sensitive"},
                after_step=restore,
            )
            params = dict(model.named_parameters())
        share = sum(int(quantized[k].sum()) for k in names) / max(
            1, sum(int(eligible[k].sum()) for k in names)
        )
        scored = validation_scores(ctx, model, val, scheme=scheme, fair_metric=s["fair_metric"])
        steps.append(
            {
                "step": n,
                "target_ratio": ratio,
                "quantized_share": round(share, 6),
                "val_metric": scored["metric"],
                "val_gap": scored["gap"],
            }
        )
        states.append({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        step_masks.append({k: v.clone() for k, v in quantized.items()})
        ctx.say(
            f"fairquantize step {n}: {share:.1%} quantised, val {ctx.config['train']['select_metric']} "
            f"{scored['metric']:.4f}, {s['fair_metric']} {scored['gap']}"
        )
    chosen, why = choose(
        [{"metric": st["val_metric"], "gap": st["val_gap"]} for st in steps],
        reference=start["metric"],
        rule=s["select"],
        max_drop=float(s["max_drop"]),
    )
    model.load_state_dict(states[chosen])
    masks = step_masks[chosen]
    set_frozen(model, inner)  # the inner method's, then the chosen step's quantised weights
    for k in names:
        freeze(model, k, masks[k])
    save_masks(ctx.artifact("quantized_mask.safetensors"), masks)
    ctx.record(
        name,
        {
            "settings": {k: v for k, v in s.items() if k != "retrain"},
            "retrain": s["retrain"],
            "scoring": drawn,
            "start": {"val_metric": start["metric"], "val_gap": start["gap"]},
            "steps": steps,
            "chosen_step": chosen + 1,
            "chosen_because": why,
            "quantized_per_layer": layer_shares(masks),
            "quantized_share": steps[chosen]["quantized_share"],
            "size": stored_size(model, masks),
        },
    )
    ctx.say(
        f"fairquantize: chose step {chosen + 1} ({steps[chosen]['quantized_share']:.1%} quantised): {why}"
    )
    return model


def stored_size(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The model's size in bytes as float32, and with quantised weights stored as codes of a sign
    bit and an exponent (enough bits for the exponents used, plus one code for zero)."""
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in model.parameters())
    n_q = sum(int(m.sum()) for m in masks.values())
    exponents = set()
    for k, m in masks.items():
        values = params[k].detach()[m]
        nonzero = values[values != 0]
        exponents.update(torch.log2(nonzero.abs()).round().to(torch.int64).unique().tolist())
    code_bits = 1 + max(1, math.ceil(math.log2(len(exponents) + 1)))
    float_bytes = total * 4
    coded_bytes = (total - n_q) * 4 + math.ceil(n_q * code_bits / 8)
    return {
        "parameters": total,
        "quantized": n_q,
        "code_bits": code_bits,
        "float32_bytes": float_bytes,
        "coded_bytes": coded_bytes,
        "compression": round(float_bytes / max(1, coded_bytes), 4),
    }
