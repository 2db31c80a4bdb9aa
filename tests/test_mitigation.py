"""The shared mitigation machinery (dermbench.mitigation): the GGN diagonal against a brute-force
autograd reference, the Hessian factor, global lowest-score selection, group draws, sensitive
groups and the privileged one, frozen weights, and the choice among candidates."""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from safetensors.torch import load_file
from sklearn.metrics import f1_score
from timm.layers import BatchNormAct2d, Conv2dSame, StdConv2d
from timm.models.vgg import VGG
from torch import nn

from dermbench.context import RunContext
from dermbench.data.groups import tone2_from_fst, tone3_from_fst
from dermbench.data.model import Split
from dermbench.errors import ConfigError, DataError, DermbenchError
from dermbench.mitigation import curvature
from dermbench.mitigation.curvature import (
    curvature_layers,
    ggn_diagonal,
    output_hessian_factor,
)
from dermbench.mitigation.frozen import freeze, frozen, layer_shares, restore, save_masks
from dermbench.mitigation.groups import SensitiveGroups, check_scheme, sensitive_groups
from dermbench.mitigation.saliency import draw, editable_weights, group_curvature, lowest, scores
from dermbench.mitigation.selection import choose
from dermbench.train.trainer import Normaliser

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----- helpers ---------------------------------------------------------------------------------


def brute_force_ggn(
    model: nn.Module, x: torch.Tensor, names: list[str] | None = None
) -> dict[str, torch.Tensor]:
    """sum_n diag(J_n^T H_n J_n) in float64, J_n the full Jacobian of sample n's logits by autograd
    (one backward pass per sample and class), H_n = diag(p) - p p^T; over `names` (default: every
    trainable parameter). The model is copied, so nothing of the original changes."""
    m = copy.deepcopy(model).double().eval()
    for module in m.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False  # autograd through a copy; the result does not depend on it
    named = dict(m.named_parameters())
    names = names or [k for k, p in named.items() if p.requires_grad]
    params = [named[k] for k in names]
    logits = m(x.double())
    p = torch.softmax(logits, dim=1).detach()
    out = {k: torch.zeros_like(named[k], dtype=torch.float64) for k in names}
    for n in range(x.shape[0]):
        grads = [
            torch.autograd.grad(logits[n, k], params, retain_graph=True, allow_unused=True)
            for k in range(logits.shape[1])
        ]
        hessian = torch.diag(p[n]) - torch.outer(p[n], p[n])
        for j, name in enumerate(names):
            jac = torch.stack(
                [(g[j] if g[j] is not None else torch.zeros_like(params[j])).reshape(-1) for g in grads]
            )
            out[name] += ((hessian @ jac) * jac).sum(0).reshape(params[j].shape).detach()
    return out


def assert_matches(
    ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], rtol: float = 1e-5
) -> None:
    """Every reference tensor is matched to `rtol` of its largest entry (relative error per tensor;
    float32 closed forms against a float64 reference), and the reference is not trivially zero."""
    assert set(reference) <= set(ours)
    nonzero = 0
    for name, ref in reference.items():
        got = ours[name].double()
        assert got.shape == ref.shape, name
        scale = float(ref.abs().max())
        nonzero += scale > 0
        err = float((got - ref).abs().max())
        assert err <= rtol * scale + 1e-12, f"{name}: max abs error {err:.3g} vs largest entry {scale:.3g}"
        assert bool((got >= 0).all()), f"{name}: a GGN diagonal is non-negative"
    assert nonzero >= 0.9 * len(reference), "the reference is mostly zero: the check would prove nothing"


def settle_batchnorm(model: nn.Module, x: torch.Tensor, seed: int = 0) -> None:
    """Non-trivial BatchNorm: random affine parameters (timm zero-initialises some gammas) and
    running statistics from a train-mode forward pass. The model is left in train mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d) and module.affine:
                module.weight.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.2)
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = 0.7  # one pass moves the statistics far from (0, 1)
        model.train()
        model(x * 2.0 + 0.5)


class Tokens(nn.Module):
    """(n, C, H, W) -> (n, H*W, C): a Linear after it sees several positions per sample."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


class MeanTokens(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1)


def tiny_cnn(num_classes: int) -> nn.Sequential:
    """Every supported layer form: strided padded conv (many positions: per-sample products),
    BatchNorm, in-place ReLU, a grouped conv, max pooling, a dilated conv, a conv with 16 output
    positions (pairwise form), a Linear over positions, a Linear head."""
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(3, 8, 3, stride=2, padding=1)),  # 16 px -> 8x8 = 64 positions
                ("bn1", nn.BatchNorm2d(8)),
                ("act1", nn.ReLU(inplace=True)),
                ("grouped", nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False)),
                ("bn2", nn.BatchNorm2d(8)),
                ("act2", nn.ReLU(inplace=True)),
                ("pool", nn.MaxPool2d(2)),  # 4x4
                ("dilated", nn.Conv2d(8, 6, 3, padding=2, dilation=2)),  # 4x4 = 16 positions: pairwise form
                ("act3", nn.ReLU(inplace=False)),
                ("avg", nn.AvgPool2d(2)),  # 2x2
                ("tokens", Tokens()),
                ("per_token", nn.Linear(6, 5)),  # a Linear over 4 positions
                ("mean", MeanTokens()),
                ("head", nn.Linear(5, num_classes)),
            ]
        )
    )


def tiny_vgg(num_classes: int) -> VGG:
    """timm's VGG class (the code of vgg11_bn: conv/BN/in-place ReLU features, max pooling, the
    ConvMlp pre-logits whose 7x7 conv sees an adaptive-pooled 7x7 input, a Linear head) with a
    few channels, small enough for the brute-force Jacobian."""
    return VGG(
        [8, "M", 16, "M", 16, "M", 16, "M", 16, "M"],
        num_classes=num_classes,
        mlp_ratio=1 / 512,
        norm_layer=nn.BatchNorm2d,
    )


# ----- the GGN diagonal ------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [2, 3])
def test_ggn_diagonal_matches_autograd_on_every_layer_form(num_classes):
    torch.manual_seed(0)
    model = tiny_cnn(num_classes)
    x = torch.randn(5, 3, 16, 16)
    settle_batchnorm(model, x)
    model.conv1.bias.requires_grad_(False)  # a frozen parameter is left out
    ours = ggn_diagonal(model, [x])
    assert set(ours) == {k for k, p in model.named_parameters() if p.requires_grad}
    assert "conv1.bias" not in ours
    assert all(v.dtype == torch.float32 for v in ours.values())
    assert_matches(ours, brute_force_ggn(model, x))


def test_ggn_diagonal_of_both_conv_forms_and_any_chunking_agree(monkeypatch):
    """The pairwise form (few output positions), the per-sample form and a per-sample budget of
    one sample at a time give the same diagonal."""
    torch.manual_seed(1)
    model = tiny_cnn(3)
    x = torch.randn(4, 3, 16, 16)
    settle_batchnorm(model, x)
    reference = brute_force_ggn(model, x)
    for pairwise, budget in [(0, curvature.PER_SAMPLE_BUDGET), (10**6, curvature.PER_SAMPLE_BUDGET), (16, 1)]:
        monkeypatch.setattr(curvature, "PAIRWISE_MAX_POSITIONS", pairwise)
        monkeypatch.setattr(curvature, "PER_SAMPLE_BUDGET", budget)
        assert_matches(ggn_diagonal(model, [x]), reference)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_ggn_diagonal_matches_autograd_on_timm_test_resnet(num_classes):
    torch.manual_seed(2)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=num_classes)
    x = torch.randn(3, 3, 16, 16)
    settle_batchnorm(model, x)
    assert_matches(ggn_diagonal(model, [x]), brute_force_ggn(model, x))


def test_ggn_diagonal_matches_autograd_on_a_small_timm_vgg():
    torch.manual_seed(3)
    model = tiny_vgg(3)
    x = torch.randn(3, 3, 32, 32)
    settle_batchnorm(model, x)
    assert isinstance(model.pre_logits.fc1, nn.Conv2d) and model.pre_logits.fc1.kernel_size == (7, 7)
    assert_matches(ggn_diagonal(model, [x]), brute_force_ggn(model, x))


@pytest.mark.slow
def test_ggn_diagonal_of_vgg11_bn_on_a_subset_of_parameters():
    """The real vgg11_bn (132M parameters) at 32 px: the closed forms for all, the brute force
    for a few parameters along the whole path (about 20 s and 3 GB)."""
    torch.manual_seed(4)
    model = timm.create_model("vgg11_bn", pretrained=False, num_classes=2)
    x = torch.randn(2, 3, 32, 32)
    settle_batchnorm(model, x)
    subset = [
        "features.0.weight",
        "features.1.weight",
        "features.1.bias",
        "features.25.weight",
        "pre_logits.fc1.bias",
        "pre_logits.fc2.bias",
        "head.fc.weight",
        "head.fc.bias",
    ]
    ours = ggn_diagonal(model, [x])
    assert sum(v.numel() for v in ours.values()) == sum(p.numel() for p in model.parameters())
    assert_matches(ours, brute_force_ggn(model, x, subset))


def test_ggn_diagonal_does_not_depend_on_how_samples_are_batched():
    torch.manual_seed(5)
    model = tiny_cnn(3)
    x = torch.randn(7, 3, 16, 16)
    settle_batchnorm(model, x)
    whole = ggn_diagonal(model, [x])
    for parts in ([x[:1], x[1:4], x[4:]], [x[i : i + 1] for i in range(7)], iter([x[:5], x[5:]])):
        split = ggn_diagonal(model, parts)
        for name in whole:
            torch.testing.assert_close(
                split[name], whole[name], rtol=1e-5, atol=1e-6 * float(whole[name].abs().max())
            )


def test_ggn_diagonal_restores_modes_and_in_place_flags_and_removes_its_hooks():
    torch.manual_seed(6)
    model = tiny_cnn(2)
    x = torch.randn(3, 3, 16, 16)
    settle_batchnorm(model, x)
    model.train()
    model.bn2.eval()  # mixed modes come back as they were
    before = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ggn_diagonal(model, [x])
    assert {name: m.training for name, m in model.named_modules()} == before
    assert (model.act1.inplace, model.act2.inplace, model.act3.inplace) == (True, True, False)
    assert all(not m._forward_hooks for m in model.modules())
    # eval mode during the pass: the running statistics did not move, no parameter changed
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in model.parameters())


def test_ggn_diagonal_restores_the_model_when_a_batch_fails():
    torch.manual_seed(7)
    model = tiny_cnn(2)
    model.train()

    def batches():
        yield torch.randn(2, 3, 16, 16)
        raise RuntimeError("the loader broke")

    with pytest.raises(RuntimeError, match="the loader broke"):
        ggn_diagonal(model, batches())
    assert all(m.training for m in model.modules())
    assert model.act1.inplace and model.act2.inplace
    assert all(not m._forward_hooks for m in model.modules())


def test_unsupported_trainable_layers_are_errors_naming_them():
    model = nn.Sequential(
        OrderedDict(
            [
                ("conv", nn.Conv2d(3, 4, 3)),
                ("flat", nn.Flatten()),
                ("norm", nn.LayerNorm(4 * 14 * 14)),
                ("head", nn.Linear(4 * 14 * 14, 2)),
            ]
        )
    )
    with pytest.raises(ConfigError, match=r"norm is a LayerNorm with trainable parameters"):
        ggn_diagonal(model, [torch.randn(2, 3, 16, 16)])
    assert all(m.training for m in model.modules())  # nothing was changed before the error
    model.norm.requires_grad_(False)  # a LayerNorm without trainable parameters is only passed through
    assert set(curvature_layers(model)) == {"conv", "head"}
    assert set(ggn_diagonal(model, [torch.randn(2, 3, 16, 16)])) == {
        "conv.weight",
        "conv.bias",
        "head.weight",
        "head.bias",
    }
    with pytest.raises(ConfigError, match=r"conv pads with 'reflect'"):
        curvature_layers(
            nn.Sequential(OrderedDict([("conv", nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"))]))
        )
    with pytest.raises(ConfigError, match=r"bn: BatchNorm without running statistics"):
        curvature_layers(nn.Sequential(OrderedDict([("bn", nn.BatchNorm2d(3, track_running_stats=False))])))


def _conv_head(layer: nn.Module) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            [
                ("layer", layer),
                ("act", nn.ReLU()),
                ("pool", nn.AdaptiveAvgPool2d(1)),
                ("flat", nn.Flatten()),
                ("head", nn.Linear(4, 3)),
            ]
        )
    )


def _bn_act() -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            [
                ("conv", nn.Conv2d(3, 4, 3)),
                ("layer", BatchNormAct2d(4, act_layer=nn.ReLU)),
                ("pool", nn.AdaptiveAvgPool2d(1)),
                ("flat", nn.Flatten()),
                ("head", nn.Linear(4, 3)),
            ]
        )
    )


#: subclasses of the supported layers whose forward is not the plain layer's (timm's BatchNormAct2d
#: of efficientnet, mobilenetv3, regnet, densenet; StdConv2d of BiT; Conv2dSame of tf_ models)
LAYER_VARIANTS = {
    "BatchNormAct2d": _bn_act,
    "StdConv2d": lambda: _conv_head(StdConv2d(3, 4, 3, stride=2)),
    "Conv2dSame": lambda: _conv_head(Conv2dSame(3, 4, 3, stride=2)),
    "padding='same'": lambda: _conv_head(nn.Conv2d(3, 4, 3, padding="same")),
    "test_efficientnet": lambda: timm.create_model("test_efficientnet", pretrained=False, num_classes=3),
}


@pytest.mark.parametrize("variant", list(LAYER_VARIANTS))
def test_layer_variants_are_exact_or_rejected_by_name(variant):
    """A supported kind's subclass (any timm backbone may be configured) is either computed exactly
    or a ConfigError naming it, never a silently wrong diagonal or a raw torch error. DEFECT
    (reported): isinstance(module, SUPPORTED) accepts them all; BatchNormAct2d and StdConv2d give
    wrong diagonals, Conv2dSame and padding='same' fail inside F.unfold."""
    torch.manual_seed(9)
    model = LAYER_VARIANTS[variant]()
    x = torch.randn(3, 3, 16, 16)
    settle_batchnorm(model, x)
    try:
        ours = ggn_diagonal(model, [x])
    except ConfigError as exc:
        kinds = {type(m).__name__ for m in model.modules()} - {
            "Sequential",
            "Conv2d",
            "BatchNorm2d",
            "Linear",
        }
        assert any(k in str(exc) for k in kinds) or "same" in str(exc), str(exc)
        return
    assert_matches(ours, brute_force_ggn(model, x))


class InPlaceAfterConv(nn.Module):
    """A conv whose output the forward changes in place without a module (functional relu_, a scale)."""

    def __init__(self, change: str) -> None:
        super().__init__()
        self.conv, self.head, self.change = nn.Conv2d(3, 4, 3), nn.Linear(4, 3), change

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.change == "relu_":
            torch.relu_(y)
        elif self.change == "mul_":
            y.mul_(3.0)
        else:
            y += 1.0  # what timm's residual blocks do (`x += shortcut`): harmless, the gradient is the same
        return self.head(y.mean((2, 3)))


@pytest.mark.parametrize("change", ["add_", "relu_", "mul_"])
def test_an_in_place_change_of_a_layer_output_does_not_corrupt_the_diagonal(change):
    """DEFECT (reported) for relu_ and mul_: the hook keeps the layer's output tensor and
    differentiates with respect to it; an in-place op after the layer rebases that tensor onto
    its own result, so the gradient taken is the one after the change (silently wrong). Either
    exact or a ConfigError."""
    torch.manual_seed(10)
    model = InPlaceAfterConv(change)
    x = torch.randn(3, 3, 9, 9)
    try:
        ours = ggn_diagonal(model, [x])
    except ConfigError:
        return
    assert_matches(ours, brute_force_ggn(model, x))


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_output_hessian_factor_squares_to_the_softmax_hessian(num_classes):
    gen = torch.Generator().manual_seed(num_classes)
    logits = torch.randn(6, num_classes, generator=gen, dtype=torch.float64) * 3
    logits[0] = torch.arange(num_classes, dtype=torch.float64) * 40  # one class near certainty
    factor = output_hessian_factor(logits)
    assert factor.shape == (6, num_classes - 1, num_classes) and factor.dtype == torch.float64
    p = torch.softmax(logits, 1)
    hessian = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    torch.testing.assert_close(factor.transpose(1, 2) @ factor, hessian, rtol=0, atol=1e-12)
    single = output_hessian_factor(logits.float())
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.transpose(1, 2) @ single, hessian.float(), rtol=0, atol=1e-6)


# ----- saliency ----------------------------------------------------------------------------------


def test_lowest_picks_exactly_the_globally_lowest_scores():
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "a": torch.randn(3, 4, generator=gen),
        "b": torch.randn(5, generator=gen),
        "c": torch.randn(2, 2, 2, generator=gen),
        "d": torch.randn(1, generator=gen),
    }
    flat = torch.cat([t.reshape(-1) for t in tensors.values()])
    for count in (0, 1, 7, 13, flat.numel(), flat.numel() + 5):
        masks = lowest(tensors, count)
        assert list(masks) == list(tensors)
        assert all(masks[k].shape == tensors[k].shape and masks[k].dtype == torch.bool for k in tensors)
        chosen = torch.cat([masks[k].reshape(-1) for k in tensors])
        assert int(chosen.sum()) == min(count, flat.numel())
        if 0 < count < flat.numel():
            assert flat[chosen].max() < flat[~chosen].min()
            assert set(flat[chosen].tolist()) == set(torch.sort(flat).values[:count].tolist())


def test_lowest_breaks_ties_by_position_so_the_count_is_exact():
    tensors = {"a": torch.tensor([1.0, 0.0, 0.0]), "b": torch.tensor([0.0, 2.0]), "c": torch.zeros(2, 2)}
    masks = lowest(tensors, 2)
    assert masks["a"].tolist() == [False, True, True] and not masks["b"].any() and not masks["c"].any()
    masks = lowest(tensors, 4)
    assert masks["a"].tolist() == [False, True, True] and masks["b"].tolist() == [True, False]
    assert masks["c"].tolist() == [[True, False], [False, False]]
    masks = lowest({"z": torch.zeros(10)}, 4)
    assert masks["z"].tolist() == [True] * 4 + [False] * 6


def test_lowest_respects_eligible():
    tensors = {"a": torch.tensor([0.0, 1.0, 2.0, 3.0]), "b": torch.tensor([[-5.0, 4.0], [-6.0, 0.5]])}
    eligible = {
        "a": torch.tensor([False, True, True, True]),
        "b": torch.tensor([[True, True], [False, True]]),
    }
    masks = lowest(tensors, 3, eligible=eligible)
    assert masks["a"].tolist() == [False, True, False, False]  # 0.0 is lower but not eligible
    assert masks["b"].tolist() == [[True, False], [False, True]]  # -6 is not eligible
    masks = lowest(tensors, 100, eligible=eligible)  # no more than the eligible ones
    assert all(torch.equal(masks[k], eligible[k]) for k in tensors)
    masks = lowest(
        tensors, 2, eligible={k: torch.zeros_like(v, dtype=torch.bool) for k, v in tensors.items()}
    )
    assert not any(m.any() for m in masks.values())


def reference_fairquantize_selection(
    scores_by_name: dict[str, torch.Tensor], count: int
) -> dict[str, torch.Tensor]:
    """The selection of the FairQuantize reference code, per layer: `argsort(scores) <= k`. It
    marks position i when the index of the i-th smallest score is <= k (the inverse permutation),
    not when score i is among the k+1 smallest."""
    return {
        k: (torch.argsort(v.reshape(-1)) <= count - 1).reshape(v.shape) for k, v in scores_by_name.items()
    }


def test_lowest_is_not_the_reference_codes_inverse_permutation():
    scores_ = {
        "w": torch.tensor([2.0, 0.0, 1.0, 3.0])
    }  # argsort [1, 2, 0, 3] differs from the ranks [2, 0, 1, 3]
    ours = lowest(scores_, 1)["w"]
    theirs = reference_fairquantize_selection(scores_, 1)["w"]
    assert ours.tolist() == [False, True, False, False]  # the lowest score, 0.0 at position 1
    assert theirs.tolist() == [False, False, True, False]  # position 2 (score 1.0): not the lowest
    gen = torch.Generator().manual_seed(3)
    many = {"w": torch.rand(1000, generator=gen)}
    ours, theirs = lowest(many, 100)["w"], reference_fairquantize_selection(many, 100)["w"]
    assert int(ours.sum()) == int(theirs.sum()) == 100 and not torch.equal(ours, theirs)
    assert many["w"][ours].max() < many["w"][~ours].min()


def test_scores_and_editable_weights():
    model = tiny_cnn(2)
    model.head.weight.requires_grad_(False)
    assert editable_weights(model) == [
        "conv1.weight",
        "bn1.weight",
        "grouped.weight",
        "bn2.weight",
        "dilated.weight",
        "per_token.weight",
    ]
    delta = {"w": torch.tensor([1.0, -2.0, 0.5])}
    got = scores(delta, {"w": torch.tensor([1.0, 1.0, 4.0])}, {"w": torch.tensor([2.0, 0.0, 1.0])}, beta=0.5)
    torch.testing.assert_close(got["w"], 0.5 * torch.tensor([1.0, 4.0, 0.25]) * torch.tensor([0.0, 1.0, 3.5]))


def test_draw_without_replacement_then_cycles():
    members = np.array([10, 11, 12, 13, 14])
    few = draw(members, 3, np.random.default_rng(0))
    assert len(few) == 3 and len(set(few)) == 3 and set(few) <= set(members)
    assert sorted(draw(members, 5, np.random.default_rng(0))) == sorted(members)
    many = draw(members, 12, np.random.default_rng(0))
    assert len(many) == 12
    assert sorted(many[:5]) == sorted(members) and sorted(many[5:10]) == sorted(
        members
    )  # each pass a permutation
    assert len(set(many[10:])) == 2 and set(many[10:]) <= set(members)
    assert np.array_equal(
        draw(members, 12, np.random.default_rng(7)), draw(members, 12, np.random.default_rng(7))
    )
    assert not np.array_equal(
        draw(members, 12, np.random.default_rng(7)), draw(members, 12, np.random.default_rng(8))
    )
    with pytest.raises(ValueError, match="empty group"):
        draw(np.array([], dtype=int), 3, np.random.default_rng(0))


def test_group_curvature_averages_the_ggn_over_drawn_samples_per_side(tmp_path):
    torch.manual_seed(8)
    model = tiny_cnn(2)
    settle_batchnorm(model, torch.randn(4, 3, 16, 16))
    model.eval()
    fst = [1, 2, 3, 4, 5, -1, 1, 2, 6, 3, 1, 2]  # light 1,2,3 x; dark 4,5,6; one unknown
    train = make_split("train", fst, size=16, seed=1)
    codes = np.array([{"light": 0, "dark": 1}.get(v, -1) for v in tone2_from_fst(pd.Series(fst))])
    groups = SensitiveGroups("tone2", ("light", "dark"), codes, "light", "set by the user", {})
    ctx = RunContext(
        config={"seed": 3}, device=torch.device("cpu"), work_dir=tmp_path / "w", cache_dir=tmp_path / "c"
    )
    h_u, h_p, info = group_curvature(ctx, model, train, groups, samples=5, stream="test-scoring")
    assert info == {
        "unprivileged": {"samples": 5, "distinct": 3, "group_size": 3},
        "privileged": {"samples": 5, "distinct": 5, "group_size": 8},
    }
    rng = ctx.rng("test-scoring")
    norm = Normaliser(model, torch.device("cpu"), channels_last=False)
    for h, members in ((h_u, np.flatnonzero(codes == 1)), (h_p, np.flatnonzero(codes == 0))):
        index = draw(members, 5, rng)
        assert -1 not in codes[index]
        expected = ggn_diagonal(model, [norm(train.images[np.sort(index)])])
        for name in expected:
            torch.testing.assert_close(h[name], expected[name] / 5, rtol=1e-5, atol=1e-7)


# ----- sensitive groups -------------------------------------------------------------------------


def make_split(name: str, fst: list, labels: list | None = None, *, size: int = 4, seed: int = 0) -> Split:
    """A Split with `fst` (-1 / None: unknown) and the tone columns derived from it, random pixels."""
    fst_series = pd.Series(fst, dtype="float64")
    labels = labels if labels is not None else [i % 2 for i in range(len(fst))]
    table = pd.DataFrame(
        {
            "sample_id": [f"{name}-{i}" for i in range(len(fst))],
            "label": labels,
            "fst": fst_series,
            "tone3": tone3_from_fst(fst_series),
            "tone2": tone2_from_fst(fst_series),
        }
    )
    images = np.random.default_rng(seed).integers(0, 256, (len(fst), size, size, 3), dtype=np.uint8)
    return Split(name=name, table=table, images=images, classes=("benign", "malignant"))


class FakeContext:
    """predict_proba answers the probabilities the test chose, per split name."""

    def __init__(self, probabilities: dict[str, np.ndarray]) -> None:
        self.probabilities = probabilities
        self.asked: list[str] = []

    def predict_proba(self, model, split: Split) -> np.ndarray:
        self.asked.append(split.name)
        return self.probabilities[split.name]


def one_hot(pred: list[int]) -> np.ndarray:
    return np.eye(2)[pred]


#: validation: light (FST 1-3) at rows 0-5, dark (FST 4-6) at rows 6-11, two unknown at the end
VAL_FST = [1, 2, 3, 1, 2, 3, 4, 5, 6, 4, 5, 6, -1, None]
VAL_Y = [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1]


def val_predictions(light_correct: int, dark_correct: int) -> np.ndarray:
    """Predictions right on the first `light_correct` light and `dark_correct` dark samples."""
    pred = list(VAL_Y)
    for i in range(light_correct, 6):
        pred[i] = 1 - pred[i]
    for i in range(6 + dark_correct, 12):
        pred[i] = 1 - pred[i]
    return one_hot(pred)


TRAIN_FST = [1, 2, 3, 4, 5, 6, -1, None, 2, 5]


def test_unknown_group_samples_are_counted_and_in_no_group():
    train, val = make_split("train", TRAIN_FST), make_split("val", VAL_FST, VAL_Y)
    groups = sensitive_groups(FakeContext({"val": val_predictions(6, 6)}), None, train, val, scheme="tone2")
    assert groups.unknown == 2
    assert groups.codes.tolist() == [0, 0, 0, 1, 1, 1, -1, -1, 0, 1]
    assert groups.members("light").tolist() == [0, 1, 2, 8] and groups.members("dark").tolist() == [
        3,
        4,
        5,
        9,
    ]
    assert groups.members(("light", "dark")).tolist() == [0, 1, 2, 3, 4, 5, 8, 9]  # 6 and 7 nowhere
    record = groups.as_record()
    assert record["train_counts"] == {"light": 4, "dark": 4} and record["unknown_group_excluded"] == 2
    assert record["scheme"] == "tone2"


def test_privileged_is_the_group_with_the_higher_validation_macro_f1():
    train, val = make_split("train", TRAIN_FST), make_split("val", VAL_FST, VAL_Y)
    prob = val_predictions(light_correct=3, dark_correct=6)
    ctx = FakeContext({"val": prob})
    groups = sensitive_groups(ctx, None, train, val, scheme="tone2")
    assert ctx.asked == ["val"]
    y, pred = np.array(VAL_Y), prob.argmax(1)
    light = f1_score(y[:6], pred[:6], average="macro", zero_division=0)
    assert groups.val_macro_f1 == {"light": pytest.approx(light), "dark": 1.0}
    assert groups.privileged == "dark" and groups.unprivileged == ("light",)
    assert groups.reason.startswith("auto: highest validation macro-F1")
    assert f"dark {1.0:.4f}" in groups.reason and f"light {light:.4f}" in groups.reason
    record = groups.as_record()
    assert record["privileged"] == "dark" and record["unprivileged"] == ["light"]
    assert record["privileged_reason"] == groups.reason
    # the other way round, and a tie goes to the first group of the scheme's order
    assert (
        sensitive_groups(
            FakeContext({"val": val_predictions(6, 2)}), None, train, val, scheme="tone2"
        ).privileged
        == "light"
    )
    assert (
        sensitive_groups(
            FakeContext({"val": val_predictions(6, 6)}), None, train, val, scheme="tone2"
        ).privileged
        == "light"
    )


def test_more_than_two_groups_make_every_other_group_unprivileged():
    train = make_split("train", [1, 2, 3, 4, 5, 6])
    val = make_split("val", [1, 2, 3, 4, 5, 6], [0, 1, 0, 1, 0, 1])
    prob = one_hot([1, 0, 0, 1, 0, 1])  # A wrong, B right, C right: B and C tie, B comes first
    groups = sensitive_groups(FakeContext({"val": prob}), None, train, val, scheme="tone3")
    assert groups.privileged == "B" and groups.unprivileged == ("A", "C")
    assert groups.members(groups.unprivileged).tolist() == [0, 1, 4, 5]


def test_a_user_set_privileged_group_must_be_present():
    train, val = make_split("train", TRAIN_FST), make_split("val", VAL_FST, VAL_Y)
    ctx = FakeContext({"val": val_predictions(3, 6)})
    groups = sensitive_groups(ctx, None, train, val, scheme="tone2", privileged="light")
    assert (groups.privileged, groups.reason) == ("light", "set by the user")  # not the auto choice (dark)
    with pytest.raises(DermbenchError, match=r"privileged group .*'drak'.*Did you mean 'dark'"):
        sensitive_groups(ctx, None, train, val, scheme="tone2", privileged="drak")
    # B is a tone3 group, but no training sample has it
    train3 = make_split("train", [1, 2, 5, 6])
    val3 = make_split("val", [1, 2, 5, 6], [0, 1, 0, 1])
    with pytest.raises(
        DermbenchError,
        match=r"unknown privileged group 'B' for scheme tone3 .*; known privileged groups: A, C",
    ):
        sensitive_groups(
            FakeContext({"val": one_hot([0, 1, 0, 1])}), None, train3, val3, scheme="tone3", privileged="B"
        )


def test_one_present_group_is_a_clear_data_error():
    val = make_split("val", VAL_FST, VAL_Y)
    ctx = FakeContext({"val": val_predictions(6, 6)})
    with pytest.raises(
        DataError,
        match=r"needs two tone2 groups in the training split 'train', found \['light'\] "
        r"\(2 of 5 samples have no tone2 group\)",
    ):
        sensitive_groups(ctx, None, make_split("train", [1, 2, 3, -1, None]), val, scheme="tone2")
    with pytest.raises(
        DataError, match=r"found none \(3 of 3 samples have no tone2 group\).*`groups` setting"
    ):
        sensitive_groups(ctx, None, make_split("train", [-1, None, -1]), val, scheme="tone2")
    assert ctx.asked == []  # stopped before predicting


def test_a_group_absent_from_validation_is_a_clear_error():
    train = make_split("train", TRAIN_FST)
    val = make_split("val", [1, 2, 3, 1, -1], [0, 1, 0, 1, 0])  # no dark sample
    with pytest.raises(
        DataError, match=r"validation split 'val' has no tone2 group 'dark' sample.*`privileged` setting"
    ):
        sensitive_groups(FakeContext({"val": one_hot([0, 1, 0, 1, 0])}), None, train, val, scheme="tone2")


def test_a_user_set_privileged_group_needs_no_validation_score():
    """The error above tells the user to set `privileged`; doing so must then work. DEFECT (reported):
    sensitive_groups computes the validation macro-F1 of every group before looking at
    `privileged`, so the user-set group fails with the same error."""
    train = make_split("train", TRAIN_FST)
    val = make_split("val", [1, 2, 3, 1, -1], [0, 1, 0, 1, 0])
    groups = sensitive_groups(
        FakeContext({"val": one_hot([0, 1, 0, 1, 0])}), None, train, val, scheme="tone2", privileged="dark"
    )
    assert (groups.privileged, groups.reason) == ("dark", "set by the user")
    assert groups.val_macro_f1.get("light") == 1.0 and "dark" not in groups.val_macro_f1


def test_check_scheme_names_the_setting():
    assert check_scheme("tone2", "fairprune.groups") == "tone2"
    with pytest.raises(ConfigError, match="fairprune.groups must be a group scheme name"):
        check_scheme(["tone2"], "fairprune.groups")
    with pytest.raises(ConfigError, match="fairprune.groups: .*Did you mean 'tone2'"):
        check_scheme("tone22", "fairprune.groups")


# ----- frozen weights ---------------------------------------------------------------------------


def train_step(model: nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def test_frozen_weights_stay_bit_identical_and_the_rest_trains():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    assert frozen(model) == {}
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    mask = torch.rand(5, 6) < 0.4
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    freeze(model, "0.weight", mask)
    assert torch.equal(frozen(model)["0.weight"][0], mask)
    for step in range(3):
        train_step(model, opt, step)
        restore(model)
    w = model[0].weight.detach()
    assert torch.equal(w[mask], before["0.weight"][mask])  # bit-identical, through Adam's momentum
    assert bool((w[~mask] != before["0.weight"][~mask]).all())
    for name in ("0.bias", "2.weight", "2.bias"):
        assert bool((dict(model.named_parameters())[name].detach() != before[name]).all()), name


def test_masks_combine_across_two_freezes():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    first = torch.zeros(5, 6, dtype=torch.bool)
    first[0] = True
    second = torch.zeros(5, 6, dtype=torch.bool)
    second[:, 0] = True  # overlaps the first at [0, 0]
    original = model[0].weight.detach().clone()
    freeze(model, "0.weight", first)  # as FairPrune: zeros it would have set; here the values as they are
    train_step(model, opt, 0)
    restore(model)
    at_second = model[0].weight.detach().clone()
    freeze(model, "0.weight", second)
    freeze(model, "2.weight", torch.ones(3, 5, dtype=torch.bool))
    assert torch.equal(frozen(model)["0.weight"][0], first | second)
    assert set(frozen(model)) == {"0.weight", "2.weight"}
    head = model[2].weight.detach().clone()
    for step in range(1, 4):
        train_step(model, opt, step)
        restore(model)
    w = model[0].weight.detach()
    assert torch.equal(w[first], original[first])  # held since the first freeze
    assert torch.equal(w[second], at_second[second])
    assert bool((w[~(first | second)] != at_second[~(first | second)]).all())
    assert torch.equal(model[2].weight.detach(), head)


def test_save_masks_and_layer_shares(tmp_path):
    masks = {
        "a.weight": torch.tensor([[True, False], [False, False]]),
        "b.weight": torch.ones(3, dtype=torch.bool),
    }
    save_masks(tmp_path / "masks.safetensors", masks)
    loaded = load_file(str(tmp_path / "masks.safetensors"))
    assert {k: v.dtype for k, v in loaded.items()} == {"a.weight": torch.uint8, "b.weight": torch.uint8}
    assert all(torch.equal(loaded[k].bool(), masks[k]) for k in masks)
    assert layer_shares(masks) == {"a.weight": 0.25, "b.weight": 1.0}


# ----- choosing among candidates -------------------------------------------------------------------

CANDIDATES = [
    {"metric": 0.90, "gap": 0.20},  # the starting model's metric, the largest gap
    {"metric": 0.88, "gap": 0.05},  # within 0.03: the fairest of those within
    {"metric": 0.80, "gap": 0.01},  # the fairest of all, but 0.10 below the start
    {"metric": 0.89, "gap": 0.10},
    {"metric": 0.895, "gap": None},  # no gap (a group missing on validation): never the fairest
]


def test_fairest_within_picks_the_lowest_gap_among_those_within_max_drop():
    index, why = choose(CANDIDATES, reference=0.90, rule="fairest_within", max_drop=0.03)
    assert index == 1 and why.startswith("lowest validation gap among candidates within 0.03")
    assert choose(CANDIDATES, reference=0.90, rule="fairest_within", max_drop=0.2)[0] == 2
    # the bound is inclusive
    exact = [{"metric": 0.75, "gap": 0.3}, {"metric": 0.5, "gap": 0.1}]
    assert choose(exact, reference=0.75, rule="fairest_within", max_drop=0.25)[0] == 1


def test_fairest_within_falls_back_to_the_best_metric_when_none_is_within():
    index, why = choose(CANDIDATES, reference=0.99, rule="fairest_within", max_drop=0.05)
    assert index == 0 and why.startswith(
        "no candidate within 0.05 of the starting metric 0.9900: best metric"
    )


def test_tradeoff_and_best_metric_rules():
    index, why = choose(CANDIDATES, reference=0.90, rule="tradeoff", max_drop=0.0)
    assert index == 1 and why == "best validation metric minus gap"  # 0.83 against 0.70, 0.79, 0.79, -inf
    assert choose(CANDIDATES, reference=0.90, rule="best_metric", max_drop=0.0) == (
        0,
        "best validation metric",
    )


def test_without_any_gap_every_rule_takes_the_best_metric():
    no_gaps = [{"metric": 0.7, "gap": None}, {"metric": 0.9, "gap": None}, {"metric": 0.8, "gap": None}]
    for rule in ("fairest_within", "tradeoff"):
        index, why = choose(no_gaps, reference=0.9, rule=rule, max_drop=0.05)
        assert index == 1 and why.startswith("no candidate has a defined validation gap"), rule


def test_choose_rejects_unknown_rules_and_no_candidates():
    with pytest.raises(ConfigError, match="select must be one of fairest_within, tradeoff, best_metric"):
        choose(CANDIDATES, reference=0.9, rule="fairest", max_drop=0.1)
    with pytest.raises(ConfigError, match="no candidate"):
        choose([], reference=0.9, rule="best_metric", max_drop=0.1)
