"""Saving a trained model's weights as safetensors: the one saver the run record (model.safetensors)
and the tone detector use, so both files are written the same way.

safetensors holds only tensors (loading one can never run code) but refuses tensors that share
memory, which tied weights do; those are stored as copies. The file is written atomically and
durably, so a crash leaves the old file or the new one, never a torn one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save
from torch import nn

from dermbench.files import write_atomic


def weights_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict on the CPU, contiguous, with tensors whose memory another one
    already uses (tied weights, views) copied."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        tensor = value.detach().cpu().contiguous()
        storage = tensor.untyped_storage().data_ptr()
        out[key] = tensor.clone() if storage in seen and tensor.numel() else tensor
        seen.add(storage)
    return out


def save_weights(model: nn.Module, path: Path) -> None:
    """Write `model`'s weights to `path` (.safetensors), atomically and durably."""
    data = save(weights_of(model))
    write_atomic(Path(path), lambda fh: fh.write(data))
