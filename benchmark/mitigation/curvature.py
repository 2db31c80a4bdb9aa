"""Second-order information for saliency-based mitigation (FairPrune, FairQuantize): the
diagonal of the generalized Gauss-Newton matrix (GGN) of the cross-entropy loss.

For a network f with softmax cross-entropy the GGN is G = sum_n J_n^T H_n J_n, where J_n is
the Jacobian of sample n's logits with respect to the parameters and H_n = diag(p_n) - p_n p_n^T
the Hessian of the loss with respect to the logits. Unlike the exact Hessian it is positive
semi-definite and defined for every layer, BatchNorm included (the reimplementations of both
papers use BackPACK's DiagGGNExact for that reason). It does not depend on the labels.

How it is computed (what BackPACK's DiagGGNExact does, written for the layers the harness's
CNN backbones use): H_n has rank K - 1 (its rows sum to zero), so H_n = sum_r s_nr s_nr^T over
its non-zero eigenpairs (s = sqrt(lambda) v), and diag(G) = sum_n sum_r (J_n^T s_nr)^2
elementwise. For each r, one batched backward pass of sum_n s_nr . f(x_n) gives every layer's
per-sample output gradient; each layer then forms its per-sample parameter gradients in closed
form (Linear: g a^T; Conv2d: g times the unfolded input; BatchNorm: sums of g * x_hat) and adds
their squares. A binary task therefore costs one forward and one backward pass per batch plus
the per-sample products, about one training step; a generic per-sample-gradient route
(torch.func.vmap) measured about 12x a training step on resnet18.

The model is evaluated in eval mode (BatchNorm with its running statistics, dropout off): the
curvature of the model as deployed, and the only mode in which samples are independent. In-place
activations are switched off during the pass (a captured layer output must not be overwritten).
A trainable layer of another kind (LayerNorm, attention, ...) is an error naming it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from dermbench.errors import ConfigError

#: eigenvalues of H_n below this are treated as zero (H_n = diag(p) - pp^T has one exact zero)
EIGEN_EPS = 1e-10
#: at most about this many floats of per-sample products are held at once per conv layer (2^22 = 16 MB)
PER_SAMPLE_BUDGET = 2**22
#: a conv whose output has at most this many positions uses the pairwise form (see _add_conv)
PAIRWISE_MAX_POSITIONS = 4
SUPPORTED = (nn.Linear, nn.Conv2d, nn.BatchNorm2d)


def output_hessian_factor(logits: torch.Tensor) -> torch.Tensor:
    """S of shape (n, K - 1, K) with H_n = S_n^T S_n, H_n = diag(p_n) - p_n p_n^T the Hessian of
    softmax cross-entropy with respect to sample n's logits. The zero eigenvalue (direction 1) is
    dropped; rows of numerically zero eigenvalues are zeroed, so shapes stay fixed."""
    p = torch.softmax(logits.double(), dim=1)
    hessian = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    values, vectors = torch.linalg.eigh(hessian)  # ascending: the first is the zero eigenvalue
    values, vectors = values[:, 1:], vectors[:, :, 1:]
    values = torch.where(values > EIGEN_EPS, values, torch.zeros_like(values))
    return (vectors * values.sqrt()[:, None, :]).transpose(1, 2).to(logits.dtype)


def curvature_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The modules that own trainable parameters, by name; a kind without a closed form is an error."""
    layers: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        if (
            type(module) not in SUPPORTED
        ):  # exact types: a subclass (timm's BatchNormAct2d, StdConv2d) computes otherwise
            raise ConfigError(
                "the GGN diagonal supports Linear, Conv2d and BatchNorm2d layers; "
                f"{name or 'the model'} is a {type(module).__name__} with trainable "
                "parameters. Use a CNN backbone (resnet18, vgg11_bn, ...)"
            )
        if isinstance(module, nn.Conv2d) and (
            module.padding_mode != "zeros" or isinstance(module.padding, str)
        ):
            raise ConfigError(
                f"the GGN diagonal supports convolutions with explicit zero padding; {name} pads with "
                f"{module.padding_mode!r} / padding={module.padding!r}"
            )
        if isinstance(module, nn.BatchNorm2d) and not module.track_running_stats:
            raise ConfigError(
                f"{name}: BatchNorm without running statistics couples the samples of a batch in "
                "eval mode; the per-sample GGN needs independent samples"
            )
        layers[name] = module
    return layers


def ggn_diagonal(model: nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """diag(GGN) of the cross-entropy summed over every sample of `batches` (input tensors on the
    model's device): one tensor per trainable parameter, by name (as in named_parameters), on the
    model's device. The model's modes and in-place flags are restored afterwards."""
    layers = curvature_layers(model)
    names = {id(p): k for k, p in model.named_parameters()}
    total = {
        k: torch.zeros_like(p, dtype=torch.float32) for k, p in model.named_parameters() if p.requires_grad
    }
    modes = [(m, m.training) for m in model.modules()]
    inplace = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    model.eval()
    for m in inplace:
        m.inplace = False
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [module.register_forward_hook(_capture(name, captured)) for name, module in layers.items()]
    try:
        for x in batches:
            captured.clear()
            logits = model(x).float()
            factor = output_hessian_factor(logits.detach())
            names_out = list(captured)
            outputs = [captured[k][1] for k in names_out]
            for r in range(factor.shape[1]):
                grads = torch.autograd.grad(
                    (logits * factor[:, r]).sum(),
                    outputs,
                    retain_graph=r < factor.shape[1] - 1,
                    allow_unused=True,
                )
                for name, g in zip(names_out, grads):
                    if g is not None:
                        _add_layer(layers[name], captured[name][0], g.float(), total, names)
    finally:
        for h in hooks:
            h.remove()
        for m in inplace:
            m.inplace = True
        for module, training in modes:
            module.training = training
    return total


def _capture(name: str, store: dict):
    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        store[name] = (inputs[0].detach(), output)
        return (
            output.clone()
        )  # the next layers get a copy: an in-place op after the layer cannot rebase the kept one

    return hook


def _add(total: dict, names: dict, param: torch.Tensor | None, value: torch.Tensor) -> None:
    if param is not None and param.requires_grad:
        total[names[id(param)]] += value.reshape(param.shape)


def _add_layer(module: nn.Module, a: torch.Tensor, g: torch.Tensor, total: dict, names: dict) -> None:
    """Add sum_n (per-sample gradient of the layer's parameters)^2 for input `a`, output grad `g`."""
    a = a.float()
    n = a.shape[0]
    if isinstance(module, nn.Linear):
        a, g = a.reshape(n, -1, a.shape[-1]), g.reshape(n, -1, g.shape[-1])  # (n, positions, features)
        if a.shape[1] == 1:  # one position: (g a^T)^2 = g^2 (a^2)^T, no per-sample matrix needed
            _add(total, names, module.weight, (g[:, 0] ** 2).T @ (a[:, 0] ** 2))
        else:
            _add(total, names, module.weight, torch.einsum("npo,npi->noi", g, a).square_().sum(0))
        _add(total, names, module.bias, (g.sum(1) ** 2).sum(0))
    elif isinstance(module, nn.Conv2d):
        _add_conv(module, a, g, total, names)
    else:  # BatchNorm2d in eval mode: y = gamma * x_hat + beta with the running statistics
        x_hat = (a - module.running_mean[None, :, None, None]) / torch.sqrt(
            module.running_var[None, :, None, None] + module.eps
        )
        _add(total, names, module.weight, ((g * x_hat).sum((2, 3)) ** 2).sum(0))
        _add(total, names, module.bias, (g.sum((2, 3)) ** 2).sum(0))


def _add_conv(module: nn.Conv2d, a: torch.Tensor, g: torch.Tensor, total: dict, names: dict) -> None:
    n, groups = a.shape[0], module.groups
    out_ch, in_per_group, kh, kw = module.weight.shape
    positions = g.shape[2] * g.shape[3]
    g = g.reshape(n, groups, out_ch // groups, positions)
    weight = torch.zeros(groups, out_ch // groups, in_per_group * kh * kw, device=a.device)
    pairwise = positions <= PAIRWISE_MAX_POSITIONS
    held = (
        (out_ch + in_per_group * kh * kw * groups) * positions**2
        if pairwise
        else out_ch * in_per_group * kh * kw
    )
    step = max(
        1, PER_SAMPLE_BUDGET // max(1, held)
    )  # samples per chunk: bounded memory, few Python iterations
    for start in range(0, n, step):
        cols = F.unfold(
            a[start : start + step],
            (kh, kw),
            dilation=module.dilation,
            padding=module.padding,
            stride=module.stride,
        )
        cols = cols.reshape(cols.shape[0], groups, in_per_group * kh * kw, positions)
        gs = g[start : start + step]
        m = gs.shape[0]
        if pairwise:  # sum over position pairs: one matrix product, no per-sample tensor
            pairs_g = (gs[..., :, None] * gs[..., None, :]).reshape(m, groups, -1, positions * positions)
            pairs_a = (cols[..., :, None] * cols[..., None, :]).reshape(m, groups, -1, positions * positions)
            weight += torch.einsum("ngop,ngkp->gok", pairs_g, pairs_a)
        else:
            per_sample = torch.bmm(
                gs.reshape(m * groups, -1, positions), cols.reshape(m * groups, -1, positions).transpose(1, 2)
            )
            weight += per_sample.square_().reshape(m, groups, *per_sample.shape[1:]).sum(0)
    _add(total, names, module.weight, weight)
    _add(total, names, module.bias, (g.sum(3) ** 2).sum(0).reshape(-1))
