"""Backbones: any timm model by name, with weights from a local file or timm's cache.

ImageNet initialisation (`pretrained: true` in `model`, or in a method's own model settings such
as Class-N-Diff's `latent_classifier` or MFD's `student_model`) reads the weights timm would
download from the local caches only, never the network: the Hugging Face hub cache
(`$HF_HUB_CACHE`, default `~/.cache/huggingface/hub`, where timm stores `timm/<model>.<tag>`) or
the torch hub cache (`$TORCH_HOME/hub/checkpoints`, the file of the weights' URL). A backbone name
may carry timm's pretrained tag (`vgg16.tv_in1k`) to pin which ImageNet weights. When they are
absent, `check_pretrained_weights(config)` (run before any data loads) and `create_backbone` stop
with the exact command that fetches them on a connected machine (`fetch_command`). Tests point
`pretrained` at a local weights file, or populate a temporary hub cache.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import timm
import torch
from huggingface_hub import constants, try_to_load_from_cache
from safetensors.torch import load_file
from timm.models import register_model
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


#: majority-to-minority's classifier (the authors' code): ImageNet VGG-16 frozen under a new head
FROZEN_VGG16 = "vgg16_frozen_head"
#: dermbench's own timm architectures -> the timm weights their `pretrained` loads
WEIGHTS_OF = {FROZEN_VGG16: "vgg16.tv_in1k"}


@register_model
def vgg16_frozen_head(pretrained: bool = False, num_classes: int = 1000, **kwargs) -> nn.Module:
    """timm VGG-16 (torchvision's ImageNet weights `vgg16.tv_in1k` when pretrained) with every
    parameter frozen (its features and its classifier up to the 4096-d layer) under a new
    trainable head Linear(4096 -> 256) -> ReLU -> Dropout(0.4) -> Linear(256 -> num_classes), as
    majority-to-minority's `train_classifier.py` builds it. `drop_rate` is the dropout of the two
    frozen 4096-d layers (torchvision's 0.5)."""
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    model = timm.create_model(
        WEIGHTS_OF[FROZEN_VGG16], pretrained=pretrained, num_classes=num_classes, **kwargs
    )
    return frozen_with_head(model, num_classes=num_classes, hidden=256, dropout=0.4)


def _pretrained_cfg(name: str):
    try:
        return timm.models.get_pretrained_cfg(WEIGHTS_OF.get(name, name))
    except Exception:  # an unknown tag: create_backbone names the problem
        return None


def weights_id(name: str) -> str:
    """The `model.tag` timm resolves `name`'s pretrained weights to (`vgg16` -> `vgg16.tv_in1k`)."""
    cfg = _pretrained_cfg(name)
    hub = getattr(cfg, "hf_hub_id", None) or ""
    return hub.split("/", 1)[1] if hub.startswith("timm/") else name


def fetch_command(name: str) -> str:
    """The commands that put `name`'s ImageNet weights into the local cache (run where the network is)."""
    cfg = _pretrained_cfg(name)
    full = weights_id(name)
    command = f"python -c \"import timm; timm.create_model('{full}', pretrained=True)\""
    hub = getattr(cfg, "hf_hub_id", None)
    return f"{command}   (or: huggingface-cli download {hub})" if hub else command


def pretrained_cached(name: str) -> str | None:
    """Where the local caches hold `name`'s pretrained weights, None when they do not."""
    cfg = _pretrained_cfg(name)
    if cfg is None:
        return None
    hub = getattr(cfg, "hf_hub_id", None)
    if hub:
        filename = getattr(cfg, "hf_hub_filename", None)
        for candidate in [filename] if filename else ["model.safetensors", "pytorch_model.bin"]:
            found = try_to_load_from_cache(hub, candidate, cache_dir=constants.HF_HUB_CACHE)
            if isinstance(found, str):
                return found
    url = getattr(cfg, "url", None)
    if url:
        local = Path(torch.hub.get_dir()) / "checkpoints" / Path(url.split("?")[0]).name
        if local.is_file():
            return str(local)
    return None


def pretrained_requests(config: dict) -> list[tuple[str, str]]:
    """(setting, backbone) of every ImageNet initialisation a resolved config asks for: each mapping
    with a `backbone` and `pretrained: true`, in `model` and in a method's own settings."""
    found: list[tuple[str, str]] = []

    def walk(node, where: str) -> None:
        if isinstance(node, dict):
            if node.get("pretrained") is True and isinstance(node.get("backbone"), str):
                found.append((f"{where}.pretrained", node["backbone"]))
            for key, value in node.items():
                walk(value, f"{where}.{key}" if where else str(key))

    walk(config, "")
    return found


def check_pretrained_weights(config: dict) -> list[dict[str, str]]:
    """Each ImageNet initialisation the config asks for, with the cached file it will read; a
    DermbenchError naming the commands that fetch every missing one (run it before loading data)."""
    out, missing = [], []
    for where, backbone in pretrained_requests(config):
        if not timm.is_model(backbone):
            raise unknown_name("backbone (timm model)", backbone, timm.list_models())
        path = pretrained_cached(backbone)
        if path is None:
            missing.append(
                f"  {where}: {backbone} (weights {weights_id(backbone)}): {fetch_command(backbone)}"
            )
        else:
            out.append(
                {"setting": where, "backbone": backbone, "weights": weights_id(backbone), "file": path}
            )
    if missing:
        raise DermbenchError(
            "ImageNet weights are not in the local timm/Hugging Face or torch hub cache and runs never use "
            "the network. Fetch them once on a connected machine (the same cache, or copy it here):\n"
            + "\n".join(missing)
            + "\nor set the setting to the path of a weights file (.safetensors/.pth)."
        )
    return out


def create_backbone(
    name: str,
    *,
    num_classes: int,
    pretrained: bool | str = False,
    drop_rate: float = 0.0,
    image_size: int | None = None,
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
                f"pretrained weights for {name!r} are not in the local timm/Hugging Face cache and the "
                f"run is offline ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}). Fetch them once on a connected "
                f"machine: {fetch_command(name)}; or set model.pretrained to the path of a weights file."
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
        raise ConfigError(
            f"model.pretrained: {path} lacks {len(missing)} tensor(s) of the backbone, e.g. {shown}"
        )
    model.load_state_dict(usable, strict=False)


def _head_keys(model: nn.Module) -> list[str]:
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if head is None:
        return []
    ids = {id(p) for p in head.parameters()}
    return [k for k, p in model.named_parameters() if id(p) in ids]


def frozen_with_head(model: nn.Module, *, num_classes: int, hidden: int, dropout: float) -> nn.Module:
    """Freeze every parameter of `model` and replace its classifier (timm's `get_classifier()`)
    by a trainable Linear(in -> hidden) -> ReLU -> Dropout(dropout) -> Linear(hidden -> num_classes)
    (majority-to-minority's classifier: the authors freeze the pretrained VGG-16 under such a head).
    The model is changed in place and returned; only the new head's parameters require gradients."""
    old = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(old, nn.Linear):
        raise ConfigError(
            f"cannot put a new head on {type(model).__name__}: its classifier is not one Linear layer"
        )
    path = next(n for n, m in model.named_modules() if m is old)
    parent = model.get_submodule(path.rpartition(".")[0]) if "." in path else model
    head = nn.Sequential(
        nn.Linear(old.in_features, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )
    head.to(device=old.weight.device, dtype=old.weight.dtype)
    model.requires_grad_(False)
    setattr(parent, path.rpartition(".")[2], head)
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes
    return model


def input_stats(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std the backbone expects its input normalised with."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))
