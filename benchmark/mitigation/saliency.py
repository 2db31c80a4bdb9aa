"""Per-group curvature and the saliency scores FairPrune and FairQuantize rank weights by.

Both papers score a weight by how much an edit of it would raise the loss of the unprivileged
group, minus beta times how much it would raise the privileged group's, to second order:
ΔE_g ≈ 1/2 h_ii^g Δθ_i^2 (OBD: the gradient term is dropped at convergence, cross terms ignored),
so score_i = 1/2 Δθ_i^2 (h_ii^u - beta h_ii^p), with Δθ = -θ for pruning and q(θ) - θ for
quantisation. The weights with the lowest scores are edited: they matter little to the
unprivileged group and much to the privileged one.

h^g is the GGN diagonal (`curvature`) averaged over an equal number of training samples per side,
drawn without replacement (the smaller side is cycled once exhausted, as the reimplementations
cycle the smaller group's loader), with eval transforms. Averages, not sums: the ranking is that
of Alg. 1 and beta keeps its meaning whatever the counts. The batch size the papers state fixes
only how samples are grouped, which does not change a sum, so the pass runs in larger chunks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from dermbench.data.model import Split
from dermbench.mitigation.curvature import ggn_diagonal
from dermbench.mitigation.groups import SensitiveGroups
from dermbench.train.trainer import Normaliser, input_crop

if TYPE_CHECKING:
    from dermbench.context import RunContext

#: samples per forward/backward pass of the scoring (any size gives the same sums)
CHUNK = 64


def editable_weights(model: nn.Module) -> list[str]:
    """The parameters the methods edit: every trainable `...weight` (convolutions, linear layers
    and BatchNorm's gamma, as FairQuantize's code does), biases excluded."""
    return [k for k, p in model.named_parameters() if p.requires_grad and k.rsplit(".", 1)[-1] == "weight"]


def draw(members: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` positions from `members`: a permutation, repeated with fresh permutations when n exceeds it."""
    if len(members) == 0:
        raise ValueError("cannot draw from an empty group")
    parts, left = [], n
    while left > 0:
        perm = rng.permutation(members)[:left]
        parts.append(perm)
        left -= len(perm)
    return np.concatenate(parts)


def _batches(model: nn.Module, ctx: RunContext, split: Split, index: np.ndarray) -> Iterator[torch.Tensor]:
    norm = Normaliser(
        model, ctx.device, channels_last=False, crop=input_crop(ctx, ctx.config.get("train", {}))
    )
    for start in range(0, len(index), CHUNK):
        yield norm(split.images[np.sort(index[start : start + CHUNK])])


def group_curvature(
    ctx: RunContext, model: nn.Module, train: Split, groups: SensitiveGroups, *, samples: int, stream: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """(h unprivileged, h privileged, facts for the record): the GGN diagonal averaged over
    `samples` training samples of each side, drawn from the run's RNG stream `stream`."""
    rng = ctx.rng(stream)
    sides = {
        "unprivileged": groups.members(groups.unprivileged),
        "privileged": groups.members(groups.privileged),
    }
    out, info = {}, {}
    for side, members in sides.items():
        index = draw(members, samples, rng)
        total = ggn_diagonal(model, _batches(model, ctx, train, index))
        out[side] = {k: v / len(index) for k, v in total.items()}
        info[side] = {
            "samples": len(index),
            "distinct": int(len(np.unique(index))),
            "group_size": int(len(members)),
        }
    return out["unprivileged"], out["privileged"], info


def scores(
    delta: dict[str, torch.Tensor],
    h_unprivileged: dict[str, torch.Tensor],
    h_privileged: dict[str, torch.Tensor],
    beta: float,
) -> dict[str, torch.Tensor]:
    """score_i = 1/2 Δθ_i^2 (h_u - beta h_p) for every parameter in `delta`."""
    return {k: 0.5 * d.float() ** 2 * (h_unprivileged[k] - beta * h_privileged[k]) for k, d in delta.items()}


def lowest(
    scores_by_name: dict[str, torch.Tensor],
    count: int,
    *,
    eligible: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Masks of the `count` globally lowest scores (ties broken by position, so the count is
    exact), among the `eligible` entries only when given. No sort: the count-th smallest value
    (kthvalue) is the threshold, every score below it is chosen, and ties at it are taken in
    position order until the count is reached."""
    names = list(scores_by_name)
    flat = torch.cat([scores_by_name[k].reshape(-1).float() for k in names])
    if eligible is not None:
        allowed = torch.cat([eligible[k].reshape(-1) for k in names])
        flat = torch.where(allowed, flat, torch.full_like(flat, float("inf")))
        count = min(count, int(allowed.sum()))
    count = min(count, flat.numel())
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if count > 0:
        threshold = flat.kthvalue(count).values
        chosen = flat < threshold
        ties = torch.nonzero(flat == threshold).flatten()[: count - int(chosen.sum())]
        chosen[ties] = True
    masks, start = {}, 0
    for k in names:
        n = scores_by_name[k].numel()
        masks[k] = chosen[start : start + n].reshape(scores_by_name[k].shape)
        start += n
    return masks
