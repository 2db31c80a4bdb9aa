"""Backbones: any timm model by name, with weights from a local file or timm's cache."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import timm
import torch
from huggingface_hub import constants
from safetensors.torch import load_file
from torch import nn

from dermbench.errors import ConfigError, DermbenchError, unknown_name


@contextmanager
def _offline_hub():
    """Make the Hugging Face hub fail fast instead of trying the network on a cache miss.
    huggingface_hub reads HF_HUB_OFFLINE once at import, so the module constant is set too."""
    saved_env, saved_flag = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved_flag
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


def _create(name: str, *, pretrained: bool, image_size: int | None, **kwargs) -> nn.Module:
    """timm.create_model, telling models with a fixed input size (ViTs) the run's image size;
    convolutional models take any size and refuse the argument."""
    if image_size is not None:
        try:
            return timm.create_model(name, pretrained=pretrained, img_size=image_size, **kwargs)
        except TypeError:
            pass
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def create_backbone(
    name: str, *, num_classes: int, pretrained: bool | str = False, drop_rate: float = 0.0, image_size: int | None = None
) -> nn.Module:
    """A timm classifier with `num_classes` outputs for `image_size` inputs.

    pretrained: False (random init), True (timm's local cache, never the network), or a path
    to a .safetensors/.pth/.pt state dict; the classifier head is re-initialised when its
    shape differs from the task's.
    """
    if not timm.is_model(name):
        raise unknown_name("backbone (timm model)", name, timm.list_models())
    kwargs = {"num_classes": num_classes, "drop_rate": drop_rate}
    if pretrained is True:
        try:
            with _offline_hub():
                return _create(name, pretrained=True, image_size=image_size, **kwargs)
        except Exception as exc:  # timm raises several kinds on a cache miss
            raise DermbenchError(
                f"pretrained weights for {name!r} are not in the local timm/Hugging Face cache and the run is offline "
                f"({type(exc).__name__}: {exc}). Download them once on a connected machine, or set "
                "model.pretrained to the path of a weights file."
            ) from exc
    model = _create(name, pretrained=False, image_size=image_size, **kwargs)
    if pretrained in (False, None, "", "false"):
        return model
    load_weights(model, Path(str(pretrained)).expanduser())
    return model


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a state dict from `path`, skipping tensors whose shape differs (the task head)."""
    if not path.is_file():
        raise ConfigError(f"model.pretrained: weights file {path} does not exist")
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ConfigError(f"model.pretrained: {path} holds no tensor matching the model's parameters")
    missing = [k for k in own if k not in usable]
    head = set(_head_keys(model))
    if any(k not in head for k in missing):
        shown = ", ".join([k for k in missing if k not in head][:5])
        raise ConfigError(f"model.pretrained: {path} lacks {len(missing)} tensor(s) of the backbone, e.g. {shown}")
    model.load_state_dict(usable, strict=False)


def _head_keys(model: nn.Module) -> list[str]:
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if head is None:
        return []
    ids = {id(p) for p in head.parameters()}
    return [k for k, p in model.named_parameters() if id(p) in ids]


def input_stats(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std the backbone expects its input normalised with."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))
