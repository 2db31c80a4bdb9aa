"""A user's own trained classifier, loaded for `dermbench evaluate --model` and the counterfactual test.

Two kinds of file:

- weights (`.safetensors`, or a torch state dict `.pt`/`.pth`/`.bin`, possibly wrapped as
  {"state_dict": ...} or {"model": ...}, keys possibly prefixed `module.`) for a timm
  architecture named by `--arch` or the file's metadata; every tensor must load (strict: a
  checkpoint of another architecture or class count is an error naming the mismatched keys);
- a TorchScript file (`torch.jit.save`), which carries its own architecture.

The input size and normalisation come from the options given, else from the file's metadata
(safetensors `__metadata__`; a TorchScript extra file `dermbench.json`; a state dict's `metadata`
entry), else for a timm architecture from its pretrained config (mean, std; input size), else
an error naming the missing option. Metadata keys: `arch`, `input_size`, `mean`, `std`
(JSON values or comma lists), `output` (`logits` or `probabilities`).

The model's outputs are logits (softmax; a single output column is one binary logit: sigmoid)
unless `output` says probabilities. Prediction runs in batches over a split's cached uint8 images
with a progress bar.

Imports data/, errors and the timm backbones (models.py); names no run context.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from dermbench.errors import ConfigError, DataError, unknown_name
from dermbench.train.models import create_backbone

#: the TorchScript extra file holding the metadata
TORCHSCRIPT_META = "dermbench.json"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
OUTPUTS = ("logits", "probabilities")


class ModelFileError(DataError):
    """A model file that cannot be loaded or used as given; the message names the file."""


@dataclass
class ModelSpec:
    """What is known of a user's model: its file and kind, and (once resolved) its input."""

    path: Path
    kind: str  # "timm" or "torchscript"
    arch: str | None = None
    input_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    output: str = "logits"
    #: where each input setting came from: "option", "file metadata", "timm pretrained config"
    sources: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "arch": self.arch,
            "input_size": self.input_size,
            "mean": list(self.mean) if self.mean else None,
            "std": list(self.std) if self.std else None,
            "output": self.output,
            "settings_from": dict(self.sources),
        }


def _floats(value: Any, key: str, where: str) -> tuple[float, ...]:
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text) if text.startswith("[") else [float(v) for v in text.split(",")]
        except ValueError:
            raise ModelFileError(f"{where}: {key} {value!r} is not three numbers") from None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ModelFileError(f"{where}: {key} {value!r} is not three numbers") from None
    if len(out) != 3 or not all(np.isfinite(out)) or (key == "std" and min(out) <= 0):
        raise ModelFileError(
            f"{where}: {key} must be three finite numbers (RGB){', each > 0' if key == 'std' else ''}, "
            f"got {value!r}"
        )
    return out


def _size(value: Any, where: str) -> int:
    try:
        size = int(json.loads(value) if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ModelFileError(f"{where}: input_size {value!r} is not a whole number of pixels") from None
    if size < 8:
        raise ModelFileError(f"{where}: input_size must be at least 8 pixels, got {size}")
    return size


def kind_of(path: Path) -> str:
    """ "torchscript" for a TorchScript archive, "timm" for a weights file; by content, not only name."""
    if path.suffix == ".safetensors":
        return "timm"
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if any(n.endswith("constants.pkl") or "/code/" in n for n in archive.namelist()):
                    return "torchscript"
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read ({exc})") from None
    return "timm"


def file_metadata(path: Path, kind: str) -> dict[str, Any]:
    """The metadata a model file carries (empty when none)."""
    try:
        if kind == "torchscript":
            extra = {TORCHSCRIPT_META: ""}
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
            text = extra[TORCHSCRIPT_META]
            return json.loads(text) if text else {}
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as fh:
                return dict(fh.metadata() or {})
        state = torch.load(path, map_location="cpu", weights_only=True)
        meta = state.get("metadata") if isinstance(state, dict) else None
        return dict(meta) if isinstance(meta, dict) else {}
    except ModelFileError:
        raise
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: its {TORCHSCRIPT_META} metadata is not JSON ({exc})") from None
    except Exception as exc:
        raise ModelFileError(
            f"{path}: cannot be read as a {kind} model file ({type(exc).__name__}: {exc})"
        ) from None


def resolve_spec(
    path: str | Path,
    *,
    arch: str | None = None,
    input_size: int | None = None,
    mean: Any = None,
    std: Any = None,
    output: str | None = None,
) -> ModelSpec:
    """The model's kind and input settings: options first, then the file's metadata, then (timm) the
    architecture's pretrained config; a ModelFileError or ConfigError names what is missing."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    kind = kind_of(path)
    meta = file_metadata(path, kind)
    where = str(path)
    spec = ModelSpec(path=path, kind=kind)

    def pick(key: str, given: Any):
        if given is not None:
            spec.sources[key] = "option"
            return given
        if key in meta and meta[key] not in (None, ""):
            spec.sources[key] = "file metadata"
            return meta[key]
        return None

    if kind == "timm":
        spec.arch = pick("arch", arch)
        if not spec.arch:
            raise ConfigError(
                f"{where}: a weights file needs its timm architecture: pass --arch NAME (e.g. resnet50) "
                "or store `arch` in the file's metadata"
            )
        spec.arch = str(spec.arch)
        if not timm.is_model(spec.arch):
            raise unknown_name("timm architecture (--arch)", spec.arch, timm.list_models())
    elif arch is not None:
        raise ConfigError(
            f"{where} is a TorchScript model, which carries its own architecture: leave out --arch"
        )
    size, m, s = pick("input_size", input_size), pick("mean", mean), pick("std", std)
    chosen = pick("output", output)
    spec.output = str(chosen) if chosen is not None else "logits"
    if spec.output not in OUTPUTS:
        raise ConfigError(f"{where}: output must be {' or '.join(OUTPUTS)}, got {spec.output!r}")
    if kind == "timm" and (size is None or m is None or s is None):
        try:
            cfg = timm.models.get_pretrained_cfg(spec.arch)
        except Exception:  # an architecture without pretrained configs
            cfg = None
        if size is None and getattr(cfg, "input_size", None):
            size, spec.sources["input_size"] = cfg.input_size[-1], "timm pretrained config"
        if m is None and getattr(cfg, "mean", None):
            m, spec.sources["mean"] = cfg.mean, "timm pretrained config"
        if s is None and getattr(cfg, "std", None):
            s, spec.sources["std"] = cfg.std, "timm pretrained config"
    missing = [opt for opt, v in (("--input-size", size), ("--mean", m), ("--std", s)) if v is None]
    if missing:
        raise ConfigError(
            f"{where}: the model's {', '.join(missing)} is unknown: give it as option(s) or store "
            f"input_size, mean and std in the file's metadata"
            + (f" (TorchScript: the extra file {TORCHSCRIPT_META})" if kind == "torchscript" else "")
        )
    return replace(
        spec, input_size=_size(size, where), mean=_floats(m, "mean", where), std=_floats(s, "std", where)
    )


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFileError(
            f"{path}: cannot be read as a weights file ({type(exc).__name__}: {exc})"
        ) from None
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(
            f"{path}: holds no state dict of tensors (expected safetensors or a torch state dict)"
        )
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_model(spec: ModelSpec, num_classes: int) -> nn.Module:
    """The model of `spec` on the CPU in eval mode; a timm checkpoint must load every tensor."""
    if spec.kind == "torchscript":
        try:
            model = torch.jit.load(str(spec.path), map_location="cpu")
        except Exception as exc:
            raise ModelFileError(
                f"{spec.path}: cannot be loaded as TorchScript ({type(exc).__name__}: {exc})"
            ) from None
        return model.eval()
    model = create_backbone(
        str(spec.arch), num_classes=num_classes, pretrained=False, image_size=spec.input_size
    )
    load_state_strict(model, spec.path, f"timm {spec.arch} with {num_classes} classes")
    return model.eval()


def load_state_strict(model: nn.Module, path: Path, what: str) -> None:
    """Every tensor of the weights file `path` into `model`; a ModelFileError naming the missing,
    unexpected and differently shaped keys when the file is not this model's."""
    state = _state_dict(Path(path))
    own = model.state_dict()
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state]
    shapes = [
        f"{k} {tuple(state[k].shape)} (model {tuple(own[k].shape)})"
        for k in state
        if k in own and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if unexpected or missing or shapes:
        parts = [
            f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", shapes))
            if keys
        ]
        raise ModelFileError(f"{path}: does not load into {what} ({'; '.join(parts)})")
    model.load_state_dict(state, strict=True)


def probabilities(outputs: torch.Tensor, num_classes: int, output: str, where: str) -> torch.Tensor:
    """(n, K) class probabilities from a model's outputs."""
    out = outputs.float()
    if out.ndim == 1:
        out = out[:, None]
    if out.ndim != 2 or out.shape[1] not in (num_classes, 1) or (out.shape[1] == 1 and num_classes != 2):
        raise ModelFileError(
            f"{where}: the model gives outputs of shape {tuple(outputs.shape)}; the task has "
            f"{num_classes} classes (expected (batch, {num_classes})"
            + (" or (batch, 1) for one binary logit)" if num_classes == 2 else ")")
        )
    if out.shape[1] == 1:
        p = out[:, 0] if output == "probabilities" else torch.sigmoid(out[:, 0])
        return torch.stack([1 - p, p], dim=1)
    return out if output == "probabilities" else F.softmax(out, dim=1)


def predict_images(
    model: nn.Module,
    images: Any,
    spec: ModelSpec,
    *,
    num_classes: int,
    device: torch.device,
    batch_size: int = 64,
    console: Console | None = None,
    label: str = "predict",
) -> np.ndarray:
    """(n, K) float64 probabilities for uint8 (n, H, W, 3) `images`, in batches with a progress bar."""
    console = console or Console(stderr=True)
    model = model.to(device)
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1) * 255.0
    n = len(images)
    outs = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with (
        torch.no_grad(),
        Progress(*columns, console=console, transient=False, disable=not console.is_terminal) as bar,
    ):
        task = bar.add_task(label, total=n)
        for start in range(0, n, batch_size):
            x = torch.from_numpy(np.array(images[start : start + batch_size])).to(device)
            x = (x.permute(0, 3, 1, 2).float() - mean) / std
            p = probabilities(model(x), num_classes, spec.output, str(spec.path)).cpu()
            outs.append(p)
            bar.advance(task, len(x))
    prob = torch.cat(outs).numpy().astype(np.float64) if outs else np.zeros((0, num_classes))
    if not np.isfinite(prob).all():
        raise ModelFileError(
            f"{spec.path}: the model gave non-finite outputs for "
            f"{int((~np.isfinite(prob).all(axis=1)).sum())} image(s)"
        )
    return prob
