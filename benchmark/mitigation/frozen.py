"""Weights held at fixed values while a model is retrained: FairPrune's zeros and FairQuantize's
power-of-two values.

The masks live on the model object (attribute `dermbench_frozen`: {parameter name: (mask,
the values under it)}), so a method wrapped around another sees what the inner one froze: with
`fairprune+fairquantize` the pruned zeros stay zero through FairQuantize's retraining, and
FairQuantize quantises only weights that are not pruned. `restore` writes the frozen values
back; retraining calls it after every optimiser step.
"""

from __future__ import annotations

import torch
from safetensors.torch import save
from torch import nn

from dermbench.files import write_atomic

ATTRIBUTE = "dermbench_frozen"


def frozen(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{parameter name: (bool mask, the frozen values in mask order)} of the model's frozen weights."""
    return getattr(model, ATTRIBUTE, {})


def freeze(model: nn.Module, name: str, mask: torch.Tensor) -> None:
    """Hold the weights of parameter `name` under `mask` at their current values from now on."""
    param = dict(model.named_parameters())[name]
    masks = dict(frozen(model))
    old = masks.get(name)
    combined = mask.to(param.device, torch.bool) | (old[0] if old is not None else False)
    masks[name] = (
        combined,
        param.detach()[combined].clone(),
    )  # only the frozen values: no second copy of the layer
    setattr(model, ATTRIBUTE, masks)


def set_frozen(model: nn.Module, masks: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Replace the model's frozen weights by `masks` (as `frozen` returns them), e.g. to go back
    to what an inner method froze before choosing among one's own candidates."""
    setattr(model, ATTRIBUTE, dict(masks))


@torch.no_grad()
def restore(model: nn.Module) -> None:
    """Write every frozen weight back to its value (after an optimiser step moved it)."""
    params = dict(model.named_parameters())
    for name, (mask, values) in frozen(model).items():
        p = params[name]
        p[mask.to(p.device)] = values.to(p.device, p.dtype)


def save_masks(path, masks: dict[str, torch.Tensor]) -> None:
    """Masks as a safetensors file of uint8 tensors (1 = pruned or quantised), beside the weights."""
    data = save({k: v.detach().to("cpu", torch.uint8).contiguous() for k, v in masks.items()})
    write_atomic(path, lambda fh: fh.write(data))


def layer_shares(masks: dict[str, torch.Tensor]) -> dict[str, float]:
    """{parameter name: share of its weights under the mask}, for the record and the report."""
    return {k: round(float(v.float().mean()), 6) for k, v in masks.items()}
