"""Classification losses the trainer offers: cross-entropy and focal loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dermbench.errors import ConfigError


def focal_alpha_vector(alpha: float | Sequence[float] | None, num_classes: int) -> torch.Tensor | None:
    """Per-class focal weights. A float is RetinaNet's binary form: alpha for class 1 (the
    positive, e.g. malignant) and 1 - alpha for class 0; a sequence gives one weight per class."""
    if alpha is None:
        return None
    if isinstance(alpha, (int, float)):
        if num_classes != 2:
            raise ConfigError(
                f"train.focal_alpha={alpha} is a single number, which only fits a binary task; "
                f"give one weight per class for this {num_classes}-class task"
            )
        return torch.tensor([1.0 - float(alpha), float(alpha)])
    values = [float(a) for a in alpha]
    if len(values) != num_classes:
        raise ConfigError(
            f"train.focal_alpha has {len(values)} weights but the task has {num_classes} classes"
        )
    return torch.tensor(values)


class FocalLoss(nn.Module):
    """Focal loss, FL = -alpha_y * (1 - p_y)^gamma * log p_y, averaged over the batch
    (Lin et al. 2017). gamma = 0 and no alpha is cross-entropy."""

    def __init__(self, *, gamma: float = 2.0, alpha: torch.Tensor | None = None) -> None:
        super().__init__()
        if gamma < 0:
            raise ConfigError(f"train.focal_gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.register_buffer("alpha", alpha if alpha is not None else torch.empty(0))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        loss = -((1.0 - log_p.exp()) ** self.gamma) * log_p
        if self.alpha.numel():
            loss = loss * self.alpha.to(loss.device)[target]
        return loss.mean()


def make_loss(train_cfg: dict, num_classes: int) -> nn.Module:
    """The loss named by the `train` config section."""
    kind = train_cfg["loss"]
    if kind == "ce":
        return nn.CrossEntropyLoss()
    if kind == "focal":
        return FocalLoss(
            gamma=train_cfg["focal_gamma"], alpha=focal_alpha_vector(train_cfg["focal_alpha"], num_classes)
        )
    raise ConfigError(f"train.loss must be 'ce' or 'focal', got {kind!r}")
