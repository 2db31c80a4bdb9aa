"""FairPrune (Wu, Zeng, Xu, Shi, Hu; MICCAI 2022, arXiv 2203.02110): prune the weights of a
trained model that matter little to the unprivileged group and much to the privileged one.

A `fit` wrapper: the inner fit (ERM, from the shared ERM cache, or another
method's fit) trains the model, then FairPrune zeroes weights, with no fine-tuning afterwards
("only modifying some parameters ... without further finetuning"). It composes:
`--method fairprune+fairquantize` prunes, then FairQuantize quantises the pruned model, keeping
the pruned zeros (they are frozen with dermbench.mitigation.frozen); weights an inner method
froze are never pruned.

Saliency (Optimal Brain Damage). Setting θ_i to zero changes group g's loss by about
ΔE_g ≈ 1/2 h_ii^g θ_i^2 (the gradient term is dropped at convergence, cross terms ignored).
Minimising ΔE on the unprivileged group while maximising it on the privileged one, scalarised:

    S_i = 1/2 θ_i^2 (h_ii^unprivileged - β h_ii^privileged)

and the weights with the lowest S_i are set to zero.

Choices, and why:
- h is the diagonal of the generalized Gauss-Newton matrix (GGN) of the cross-entropy, not of
  the exact Hessian: it is positive semi-definite and defined for every layer (exact diagonal
  Hessians fail on ResNets), as in the AliGhadirii reimplementation (BackPACK DiagGGNExact).
  It is averaged over `score_batches * score_batch_size` training samples per side, drawn from
  the run's RNG stream "fairprune-scoring" (dermbench.mitigation.saliency.group_curvature), and
  recomputed every round on the current, already pruned model. The stream is the same each
  round, so the rounds differ only through the model.
- Ranking is global: the lowest scores over all editable weights of the network together, not
  per layer, as both reimplementations do (FairQuantize's code, by contrast, ranks per layer).
- Biases are excluded; every other trainable `weight` is editable (convolutions, linear layers
  and BatchNorm's γ, as FairQuantize's code treats "weights").
- Rounds: round r zeroes a further `ratio` of all editable weights (after round r, r*ratio of
  them are zero), among those not yet pruned and not frozen by an inner method. Round 0, the
  unpruned model, is no candidate: the method always prunes. Every round 1..`rounds` is scored
  on validation (`train.select_metric` and the `fair_metric` gap of the `groups` scheme) and
  one is chosen by `select` (dermbench.mitigation.selection): by default the lowest gap among
  the rounds whose metric is within `max_drop` of the unpruned model's. The chosen round's
  weights are restored from a copy of the original ones (no fine-tuning, so a round's model is
  the original with its mask zeroed), and its mask is frozen and saved beside the model as
  pruning_mask.safetensors (1 = pruned).
- Groups: `groups` (tone2 light FST I-III / dark IV-VI by default; sex on ISIC 2019); samples of
  unknown group are left out. The privileged group is by default the one on which the trained
  model has the higher validation macro-F1 (on Fitzpatrick17k the dark group), never assumed.

Where the third-party reimplementations differ (there is no official code; docs/fairprune.md):
- AliGhadirii/FairPrune averages S over 330 pairs of group batches of 2 (the smaller group's
  loader cycled) and prunes 0.35 of the flattened parameter vector per iteration by top-k on -S,
  biases skipped, β = 0.33; it iterates and stops after 5 rounds without improvement of the
  target bias metric (its NCI config: β = 0.2, ratio 0.05, 500 batches). S is linear in h, so
  averaging S over batch pairs equals S of the averaged h used here. Its metrics sum over
  classes and do not halve EOdd.
- open-fairprune uses the exact Hessian diagonal (BackPACK DiagHessian), one global shot
  (defaults ratio 0.3, β 0.5; grids β in 0.1..0.9 and ratio in 0..1), and a binary-only
  evaluation; its docstring says "per layer" but its code ranks globally.
- Here: β 0.33, 5% per round, at most 10 rounds, 32 batches of 16 samples per side, every round
  evaluated and the round chosen by a stated rule instead of early stopping.

Reported anchors (copied into the FairQuantize paper; EOdd is our `eodd_net`, F1 macro-F1):
- Fitzpatrick17k, VGG-11, light/dark (dark privileged): vanilla EOpp1 0.361, EOdd 0.182,
  F1 0.510; FairPrune EOpp0 0.0008, EOpp1 0.330, EOdd 0.165, F1 0.483 (light 0.459 / dark 0.507).
- ISIC 2019, ResNet-18, female/male (female privileged): vanilla EOpp1 0.044, EOdd 0.022;
  FairPrune EOpp1 0.026, EOdd 0.014, F1 0.727.
A paper-profile run records them under "paper" beside its own numbers.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from dermbench.data.model import Split
from dermbench.errors import ConfigError, DataError
from dermbench.hookspecs import hookimpl
from dermbench.mitigation.fairquantize_paper import paper_defaults, reported
from dermbench.mitigation.frozen import freeze, frozen, layer_shares, save_masks
from dermbench.mitigation.groups import AUTO, check_scheme, sensitive_groups
from dermbench.mitigation.saliency import editable_weights, group_curvature, lowest, scores
from dermbench.mitigation.selection import FAIR_METRICS, RULES, choose, validation_scores
from dermbench.train.trainer import group_codes, group_names

name = "fairprune"
#: the paper(s) to cite for this method, as BibTeX (`dermbench cite`; docs/cite.md)
REFERENCES: tuple[str, ...] = (
    r"""@inproceedings{wu2022fairprune,
  author = {Wu, Y. and Zeng, D. and Xu, X. and Shi, Y. and Hu, J.},
  title = {{FairPrune}: Achieving Fairness Through Pruning for Dermatological Disease Diagnosis},
  booktitle = {Medical Image Computing and Computer Assisted Intervention -- MICCAI 2022},
  pages = {743--753},
  publisher = {Springer},
  year = {2022},
  eprint = {2203.02110},
  archivePrefix = {arXiv},
}""",
)

#: the method's settings (the `tiny` profile scores on fewer samples and prunes in fewer rounds: CPU minutes)
DEFAULTS: dict[str, Any] = {
    "groups": "tone2",
    "privileged": AUTO,
    "beta": 0.33,
    "ratio": 0.05,
    "rounds": 10,
    "score_batches": 32,
    "score_batch_size": 16,
    "select": "fairest_within",
    "max_drop": 0.02,
    "fair_metric": "eodd",
}
TINY = {"rounds": 3, "score_batches": 16}
#: the file beside model.safetensors holding the chosen pruning mask (1 = pruned)
MASK_FILE = "pruning_mask.safetensors"


@hookimpl
def dermbench_method_defaults(profile: str, dataset: str) -> dict:
    if profile == "paper":  # the FairQuantize paper's task, split, backbone and group scheme on its datasets
        settings = {k: v for k, v in DEFAULTS.items() if k != "groups"}
        # the EOdd its reported tables use (the Notre Dame |dTPR + dFPR| / 2, our eodd_net), as
        # FairQuantize selects on
        return paper_defaults(dataset, name, {**settings, "fair_metric": "eodd_net"})
    return {name: {**DEFAULTS, **TINY} if profile == "tiny" else dict(DEFAULTS)}


def _setting(settings: dict, key: str) -> Any:
    if key not in settings:
        raise ConfigError(f"{name}.{key} is not set (FairPrune's settings: {', '.join(DEFAULTS)})")
    return settings[key]


def _number(settings: dict, key: str) -> float:
    value = _setting(settings, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name}.{key} must be a finite number, got {value!r}")
    return float(value)


def _positive_int(settings: dict, key: str) -> int:
    value = _setting(settings, key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}.{key} must be a positive integer, got {value!r}")
    return value


def check_settings(settings: dict) -> dict[str, Any]:
    """The settings, checked and converted; a ConfigError naming the setting otherwise."""
    out: dict[str, Any] = {"groups": check_scheme(_setting(settings, "groups"), f"{name}.groups")}
    privileged = _setting(settings, "privileged")
    if not isinstance(privileged, str) or not privileged:
        raise ConfigError(
            f"{name}.privileged must be {AUTO!r} or a group name of the scheme, got {privileged!r}"
        )
    if privileged != AUTO and privileged not in group_names(out["groups"]):
        raise ConfigError(
            f"{name}.privileged: {privileged!r} is no group of the scheme {out['groups']} "
            f"({', '.join(group_names(out['groups']))}); use one of them or {AUTO!r}"
        )
    out["privileged"] = privileged
    out["beta"] = _number(settings, "beta")
    if out["beta"] < 0:
        raise ConfigError(
            f"{name}.beta must be >= 0 (the weight of the privileged group's curvature), got {out['beta']}"
        )
    out["ratio"] = _number(settings, "ratio")
    if not 0 < out["ratio"] <= 1:
        raise ConfigError(
            f"{name}.ratio must be in (0, 1] (the share of the weights each round prunes), got {out['ratio']}"
        )
    for key in ("rounds", "score_batches", "score_batch_size"):
        out[key] = _positive_int(settings, key)
    if out["ratio"] * out["rounds"] > 1 + 1e-9:
        raise ConfigError(
            f"{name}.ratio * {name}.rounds must be <= 1 (the last round cannot prune more than every "
            f"weight), got {out['ratio']} * {out['rounds']} = {out['ratio'] * out['rounds']:g}"
        )
    out["select"] = _setting(settings, "select")
    if out["select"] not in RULES:
        raise ConfigError(f"{name}.select must be one of {', '.join(RULES)}, got {out['select']!r}")
    out["max_drop"] = _number(settings, "max_drop")
    if out["max_drop"] < 0:
        raise ConfigError(f"{name}.max_drop must be >= 0, got {out['max_drop']}")
    out["fair_metric"] = _setting(settings, "fair_metric")
    if out["fair_metric"] not in FAIR_METRICS:
        raise ConfigError(
            f"{name}.fair_metric must be one of {', '.join(FAIR_METRICS)}, got {out['fair_metric']!r}"
        )
    return out


@hookimpl
def dermbench_check_settings(config: dict) -> None:
    check_settings(config.get(name) or {})


def _check_groups_present(train: Split, scheme: str) -> None:
    """Fail before training, not after it, when the training split lacks two groups of `scheme`."""
    codes = group_codes(train, scheme)
    present = [g for i, g in enumerate(group_names(scheme)) if (codes == i).any()]
    if len(present) < 2:
        raise DataError(
            f"{name}.groups={scheme}: FairPrune needs two {scheme} groups in the training split "
            f"{train.name!r}, found {present or 'none'} ({int((codes < 0).sum())} of {len(train)} samples "
            f"have no {scheme} group); choose a scheme the data has with --set {name}.groups=..."
        )


def prune_round(
    model: nn.Module,
    h_unprivileged: dict[str, torch.Tensor],
    h_privileged: dict[str, torch.Tensor],
    *,
    beta: float,
    target: int,
    pruned: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """One pruning round given the curvature: zero the globally lowest-saliency editable weights
    (S = 1/2 θ^2 (h_u - β h_p), biases excluded) until `target` of them are pruned in all,
    choosing only among weights not in `pruned` (the earlier rounds' masks) and not frozen by
    an inner method. Returns the cumulative masks {weight name: bool tensor}; the model's
    weights under them are zero afterwards. Nothing is ever un-pruned."""
    params = dict(model.named_parameters())
    names = editable_weights(model)
    held = frozen(model)
    before = {
        k: (
            pruned[k].to(params[k].device, torch.bool)
            if pruned is not None and k in pruned
            else torch.zeros_like(params[k], dtype=torch.bool)
        )
        for k in names
    }
    eligible = {k: ~before[k] for k in names}
    for k in names:
        if k in held:
            eligible[k] &= ~held[k][0].to(params[k].device, torch.bool)
    already = sum(int(m.sum()) for m in before.values())
    theta = {k: params[k].detach() for k in names}
    saliency = scores(theta, h_unprivileged, h_privileged, beta)  # Δθ = -θ: only its square enters
    new = lowest(saliency, max(0, target - already), eligible=eligible)
    after = {k: before[k] | new[k].to(before[k].device) for k in names}
    with torch.no_grad():
        for k in names:
            params[k].masked_fill_(after[k], 0.0)
    return after


def _round_mask(pruned_at: dict[str, torch.Tensor], r: int) -> dict[str, torch.Tensor]:
    """The cumulative mask after round r from the round each weight was pruned in (0 = never)."""
    return {k: (v > 0) & (v <= r) for k, v in pruned_at.items()}


def _share(masks: dict[str, torch.Tensor], total: int) -> float:
    return round(sum(int(m.sum()) for m in masks.values()) / total, 6) if total else 0.0


def prune(ctx, model: nn.Module, train: Split, val: Split, settings: dict[str, Any]) -> nn.Module:
    """FairPrune on the trained `model`: every round scored on validation, the chosen one kept,
    frozen and saved; what happened is recorded under the method's name."""
    scheme = settings["groups"]
    groups = sensitive_groups(ctx, model, train, val, scheme=scheme, privileged=settings["privileged"])
    ctx.record(name, {"groups": groups.as_record()})
    params = dict(model.named_parameters())
    names = editable_weights(model)
    total = sum(params[k].numel() for k in names)
    if total == 0:
        raise ConfigError(f"{name}: the model has no trainable weight to prune")
    original = {k: params[k].detach().clone() for k in names}
    # the round each weight was pruned in (0 = never): every round's mask, one byte per weight
    pruned_at = {k: torch.zeros_like(params[k], dtype=torch.uint8) for k in names}
    samples = settings["score_batches"] * settings["score_batch_size"]

    def on_val() -> dict[str, Any]:
        return validation_scores(ctx, model, val, scheme=scheme, fair_metric=settings["fair_metric"])

    start = on_val()
    ctx.say(
        f"{name}: privileged group {groups.privileged} ({groups.reason}); unpruned model: validation "
        f"metric {start['metric']:.4f}, {settings['fair_metric']} {_shown(start['gap'])}"
    )
    rounds, scoring, pruned = [], None, None
    for r in range(1, settings["rounds"] + 1):
        h_u, h_p, info = group_curvature(
            ctx, model, train, groups, samples=samples, stream="fairprune-scoring"
        )
        scoring = scoring or info
        target = min(total, int(round(r * settings["ratio"] * total)))
        pruned = prune_round(model, h_u, h_p, beta=settings["beta"], target=target, pruned=pruned)
        for k in names:
            pruned_at[k][pruned[k] & (pruned_at[k] == 0)] = r
        result = on_val()
        share = _share(pruned, total)
        rounds.append(
            {
                "round": r,
                "pruned_share": share,
                "val_metric": result["metric"],
                "val_gap": result["gap"],
                "val_acc": result["acc"],
            }
        )
        ctx.say(
            f"{name}: round {r}: {share:.2%} of {total} weights pruned; validation metric "
            f"{result['metric']:.4f}, {settings['fair_metric']} {_shown(result['gap'])}"
        )
    index, why = choose(
        [{"metric": c["val_metric"], "gap": c["val_gap"]} for c in rounds],
        reference=start["metric"],
        rule=settings["select"],
        max_drop=settings["max_drop"],
    )
    chosen = rounds[index]["round"]
    masks = _round_mask(pruned_at, chosen)
    with torch.no_grad():
        for k in names:
            params[k].copy_(original[k].masked_fill(masks[k], 0.0))
            freeze(model, k, masks[k])  # held at zero through an outer method's retraining
    save_masks(ctx.artifact(MASK_FILE), masks)
    record: dict[str, Any] = {
        "settings": settings,
        "scoring": scoring,
        "editable_weights": total,
        "start": {"val_metric": start["metric"], "val_gap": start["gap"], "val_acc": start["acc"]},
        "rounds": rounds,
        "chosen_round": chosen,
        "chosen_reason": why,
        "pruned_share": _share(masks, total),
        "pruned_weights": sum(int(m.sum()) for m in masks.values()),
        "layer_shares": layer_shares(masks),
        "mask_file": MASK_FILE,
    }
    if ctx.config.get("profile") == "paper":
        anchors = reported(ctx.config["dataset"], name)
        if anchors is not None:
            record["paper"] = anchors
    ctx.record(name, record)
    ctx.say(
        f"{name}: chosen round {chosen} ({why}): {record['pruned_share']:.2%} "
        f"of the weights pruned, mask in {MASK_FILE}"
    )
    return model


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


@hookimpl(wrapper=True)
def fit(ctx, model, train, val):
    settings = check_settings(ctx.hparams(name))  # before training: a bad setting fails in seconds
    _check_groups_present(train, settings["groups"])
    model = yield
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{name} prunes a torch model, but the inner fit returned a {type(model).__name__}")
    return prune(ctx, model, train, val, settings)
