"""GroupDRO (Sagawa et al. 2020, "Distributionally Robust Neural Networks for Group Shifts") as a
method plugin written outside dermbench: the worked example of docs/trainer.md.

GroupDRO minimises the expected loss under the worst mixture of groups. It keeps a weight q_g
per group; each step it computes every group's mean loss in the batch, raises the weights of
the groups that do badly (q_g <- q_g * exp(eta * loss_g), then normalised) and trains on
sum_g q_g * loss_g. Samples whose group is unknown do not contribute.

Run it with docs/examples on PYTHONPATH:

    dermbench run --plugin groupdro --method groupdro --set groupdro.groups=tone3
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dermbench.context import RunContext
from dermbench.data.model import Split
from dermbench.hookspecs import hookimpl
from dermbench.train.trainer import Batch, group_names

name = "groupdro"


@hookimpl
def dermbench_method_defaults(profile: str) -> dict:
    # eta: the step size of the group weights (the paper's 0.01); groups: tone3, tone2, fst or sex
    return {"groupdro": {"eta": 0.01, "groups": "tone2"}}


class GroupWeights:
    """The group weights q and the group-weighted loss. The trainer checkpoints it (`state=`),
    so a resumed run continues with the weights it had, not with uniform ones."""

    def __init__(self, n_groups: int, eta: float) -> None:
        self.eta = eta
        self.q = torch.full((n_groups,), 1.0 / n_groups)

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        per_sample = F.cross_entropy(logits, batch.y, reduction="none")
        known = batch.group >= 0
        group, values = batch.group[known], per_sample[known]
        n = self.q.numel()
        sums = torch.zeros(n, device=logits.device).index_add(0, group, values)
        counts = torch.bincount(group, minlength=n).clamp(min=1)
        group_loss = sums / counts  # 0 for a group absent from the batch: its weight is unchanged
        q = self.q.to(logits.device) * torch.exp(self.eta * group_loss.detach())
        self.q = q / q.sum()
        return (self.q * group_loss).sum()

    def state_dict(self) -> dict:
        return {"q": self.q.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.q = state["q"].clone()


@hookimpl
def fit(ctx: RunContext, model: torch.nn.Module, train: Split, val: Split) -> torch.nn.Module:
    settings = ctx.hparams("groupdro")
    scheme = settings["groups"]
    weights = GroupWeights(len(group_names(scheme)), float(settings["eta"]))
    model = ctx.train_model(
        model, train, val, name="groupdro", loss=weights.loss, groups=scheme, state=weights
    )
    shown = ", ".join(f"{g}={float(q)!r}" for g, q in zip(group_names(scheme), weights.q))
    ctx.say(f"groupdro: final group weights ({scheme}): {shown}")
    return model
