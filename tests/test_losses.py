"""Focal loss against a hand computation."""

import math

import pytest
import torch

from dermbench.errors import ConfigError
from dermbench.train.losses import FocalLoss, focal_alpha_vector, make_loss


def test_binary_focal_matches_hand_computation():
    logits = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    target = torch.tensor([1, 1])
    loss = FocalLoss(gamma=2.0, alpha=focal_alpha_vector(0.8, 2))(logits, target)
    p1 = 1 / (1 + math.exp(-1.0))  # softmax of [0, 1] for class 1
    p2 = 1 / (1 + math.exp(3.0))  # softmax of [2, -1] for class 1
    hand = [-0.8 * (1 - p) ** 2 * math.log(p) for p in (p1, p2)]
    assert loss.item() == pytest.approx(sum(hand) / 2, rel=1e-6)


def test_per_class_alpha_for_tones():
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    target = torch.tensor([2, 0])
    loss = FocalLoss(gamma=2.0, alpha=focal_alpha_vector([0.3, 0.4, 0.9], 3))(logits, target)
    z = math.exp(1) + 1 + math.exp(-1)
    pa = math.exp(-1) / z
    pb = 1 / 3
    hand = (-0.9 * (1 - pa) ** 2 * math.log(pa) - 0.3 * (1 - pb) ** 2 * math.log(pb)) / 2
    assert loss.item() == pytest.approx(hand, rel=1e-6)


def test_gamma_zero_without_alpha_is_cross_entropy():
    logits = torch.randn(16, 5, generator=torch.Generator().manual_seed(0))
    target = torch.randint(0, 5, (16,), generator=torch.Generator().manual_seed(1))
    assert FocalLoss(gamma=0.0)(logits, target).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, target).item(), rel=1e-6
    )


def test_bad_focal_settings():
    with pytest.raises(ConfigError, match="one weight per class"):
        focal_alpha_vector(0.8, 3)
    with pytest.raises(ConfigError, match="has 2 weights but the task has 3"):
        focal_alpha_vector([0.5, 0.5], 3)
    with pytest.raises(ConfigError, match="must be 'ce' or 'focal'"):
        make_loss({"loss": "hinge"}, 2)
