"""The models a run builds, on torch's meta device: no memory, no weights, no download.

`run_models(config)` lists every model a resolved run config asks for (the classifier, MFD's
student, the diffusion parts, Class-N-Diff's DiT and latent classifier, FEDD's backbone and probe),
each built from its architecture on the meta device with its parameter count and where its
weights would come from. `dermbench run --dry-run` prints it; tests/test_paper_architectures.py
checks the paper profiles' counts against the published figures; the GPU check builds the same
architectures on a real device.

The published checkpoints' configs are written here as dicts (the `config.json` of each hub
folder, as diffusers and transformers read them), so nothing is fetched to know their shapes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from dermbench.diffusion import adm
from dermbench.diffusion.dit import LatentClassifier, make_dit
from dermbench.errors import ConfigError
from dermbench.train.models import WEIGHTS_OF, weights_id

# ------------------------------------------------------------------ published configs (config.json)

#: CompVis/stable-diffusion-v1-4 unet/config.json (SD 1.x: 859,520,964 parameters)
SD14_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "mid_block_scale_factor": 1,
    "center_input_sample": False,
}
#: stabilityai/stable-diffusion-2-1-base unet/config.json: OpenCLIP's 1024-d text, linear projections
SD21_UNET: dict[str, Any] = {
    **SD14_UNET,
    "cross_attention_dim": 1024,
    "attention_head_dim": [5, 10, 20, 20],
    "use_linear_projection": True,
}
#: the SD VAE (CompVis/stable-diffusion-v1-4 vae/, SD 2.1-base's vae/ and stabilityai/sd-vae-ft-ema alike)
SD_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "sample_size": 512,
}
#: SD 1.4's text encoder: CLIP ViT-L/14's (openai/clip-vit-large-patch14) text tower
SD14_TEXT: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
#: SD 2.1-base's text encoder: OpenCLIP ViT-H/14's text tower, its last layer dropped (23 of 24)
SD21_TEXT: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 512,
}
#: hub id -> {part: config} of the checkpoints the paper profiles name
HUB_CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "CompVis/stable-diffusion-v1-4": {"unet": SD14_UNET, "vae": SD_VAE, "text_encoder": SD14_TEXT},
    "stabilityai/stable-diffusion-2-1-base": {"unet": SD21_UNET, "vae": SD_VAE, "text_encoder": SD21_TEXT},
    "stabilityai/sd-vae-ft-ema": {"vae": SD_VAE},
}
#: the classes of tasks whose class count is fixed; others come from the data
TASK_CLASSES = {"malignant": 2, "partition3": 3, "m2m7": 7}
#: (dataset, task) -> classes, for tasks whose count is the published dataset's
DATASET_TASK_CLASSES = {("fitz17k", "condition"): 114, ("fitz17k", "condition9"): 9}


@dataclass
class BuiltModel:
    """One model of a run: its role, architecture, where its weights come from, and its size."""

    role: str
    architecture: str
    weights: str
    params: int | None = None
    trainable: int | None = None
    note: str = ""
    module: nn.Module | None = field(default=None, repr=False)

    def row(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "architecture": self.architecture,
            "weights": self.weights,
            "params": self.params,
            "trainable": self.trainable,
            "note": self.note,
        }


def on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """`build()` with every parameter on the meta device (shapes only: no memory, no init cost)."""
    with torch.device("meta"):
        return build()


def counts(module: nn.Module) -> tuple[int, int]:
    """(parameters, trainable parameters); a parameter shared by several modules counts once."""
    params = {id(p): p for p in module.parameters()}.values()
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def _built(
    role: str, architecture: str, weights: str, build: Callable[[], nn.Module], note: str = ""
) -> BuiltModel:
    module = on_meta(build)
    total, trainable = counts(module)
    return BuiltModel(role, architecture, weights, total, trainable, note, module)


# ------------------------------------------------------------------------------- the builders


def sd_unet(config: dict[str, Any]) -> nn.Module:
    return UNet2DConditionModel(**config)


def sd_vae(config: dict[str, Any] = SD_VAE) -> nn.Module:
    return AutoencoderKL(**config)


def text_encoder(config: dict[str, Any]) -> nn.Module:
    return CLIPTextModel(CLIPTextConfig(**config))


def adm_unet(config: adm.ADMConfig = adm.PAPER_ADM) -> nn.Module:
    return UNet2DModel(**adm.diffusers_config(config))


def classifier(backbone: str, num_classes: int, drop_rate: float = 0.0) -> nn.Module:
    if not timm.is_model(backbone):
        raise ConfigError(f"unknown backbone (timm model) {backbone!r}")
    return timm.create_model(backbone, pretrained=False, num_classes=num_classes, drop_rate=drop_rate)


def fedd_probe(dim: int, hidden: list[int], dropout: list[float]) -> nn.Module:
    """FEDD's probe (methods/fedd/model.py `Probe`): Linear-BatchNorm-ReLU-Dropout per hidden layer,
    then Linear(-> 1)."""
    layers: list[nn.Module] = []
    width = dim
    for h, p in zip(hidden, dropout):
        layers += [nn.Linear(width, int(h)), nn.BatchNorm1d(int(h)), nn.ReLU(), nn.Dropout(float(p))]
        width = int(h)
    return nn.Sequential(*layers, nn.Linear(width, 1))


def _part_configs(source: str) -> dict[str, dict[str, Any]] | None:
    """{part: config} of a diffusers checkpoint: a known hub id's, or a local folder's config files."""
    if source in HUB_CONFIGS:
        return HUB_CONFIGS[source]
    folder = Path(source).expanduser()
    if not folder.is_dir():
        return None
    out = {}
    for part in ("unet", "vae", "text_encoder"):
        file = folder / part / "config.json"
        if file.is_file():
            out[part] = {k: v for k, v in json.loads(file.read_text()).items() if not k.startswith("_")}
    return out or None


def _weights_of(setting: Any) -> str:
    if setting is True:
        return "ImageNet (local timm cache)"
    if setting in (False, None, "", "false"):
        return "random init"
    return f"file {setting}"


def _sd_parts(method: str, source: str) -> list[BuiltModel]:
    parts = _part_configs(source)
    if parts is None:
        return [
            BuiltModel(
                f"{method}: diffusion model",
                source,
                "the tiny base shipped in the package" if source == "tiny" else source,
                note="built when the run starts",
            )
        ]
    out = []
    if "unet" in parts:
        out.append(_built(f"{method}: UNet", "UNet2DConditionModel", source, lambda: sd_unet(parts["unet"])))
    if "vae" in parts:
        out.append(
            _built(f"{method}: VAE", "AutoencoderKL", source, lambda: sd_vae(parts["vae"]), note="frozen")
        )
    if "text_encoder" in parts:
        out.append(
            _built(
                f"{method}: text encoder",
                "CLIPTextModel",
                source,
                lambda: text_encoder(
                    {k: v for k, v in parts["text_encoder"].items() if k in CLIPTextConfig().to_dict()}
                ),
                note="frozen",
            )
        )
    return out


def run_models(config: dict[str, Any]) -> list[BuiltModel]:
    """Every model the resolved run `config` builds, on the meta device (see the module doc)."""
    methods = str(config["method"]).split("+")
    k = TASK_CLASSES.get(str(config.get("task"))) or DATASET_TASK_CLASSES.get(
        (config.get("dataset"), config.get("task"))
    )
    num_classes = k or 2
    note = "" if k else "head shown for 2 classes: the task's classes come from the data"
    model = config["model"]
    out: list[BuiltModel] = []
    backbone = str(model["backbone"])
    arch = f"timm {backbone}" + (
        f" ({WEIGHTS_OF[backbone]} under a new head)" if backbone in WEIGHTS_OF else ""
    )
    weights = _weights_of(model.get("pretrained"))
    if weights.startswith("ImageNet"):
        weights = f"ImageNet {weights_id(backbone)} (local timm cache)"
    own_classifier = "fedd" in methods or (
        "classndiff" in methods and (config.get("classndiff") or {}).get("classifier") == "latent"
    )
    if not own_classifier:
        out.append(
            _built(
                "classifier" if "mfd" not in methods else "classifier (MFD's teacher)",
                arch,
                weights,
                lambda: classifier(backbone, num_classes, float(model.get("drop_rate", 0.0))),
                note,
            )
        )
    for method in methods:
        hp = config.get(method) or {}
        if method == "mfd":
            student = hp.get("student_model") or {}
            name = str(student.get("backbone", backbone))
            w = _weights_of(student.get("pretrained", model.get("pretrained")))
            out.append(
                _built(
                    "mfd: student",
                    f"timm {name}",
                    w if not w.startswith("ImageNet") else f"ImageNet {weights_id(name)} (local timm cache)",
                    lambda name=name: classifier(name, num_classes),
                    note,
                )
            )
        elif method in ("dermdiff", "majority2minority"):
            out += _sd_parts(method, str(hp.get("model")))
        elif method == "classndiff":
            out += _classndiff(hp, num_classes, note)
        elif method == "fedd":
            out += _fedd(hp)
    return out


def _classndiff(hp: dict[str, Any], num_classes: int, note: str) -> list[BuiltModel]:
    vae_source = str(hp.get("vae"))
    out = [m for m in _sd_parts("classndiff", vae_source) if "VAE" in m.role or "diffusion model" in m.role]
    size = int(hp.get("image_size") or 256)
    latent = size // 8
    dit = hp.get("dit") or {}
    conditions = num_classes * (3 if hp.get("tone_conditioning") else 1)
    out.append(
        _built(
            "classndiff: DiT",
            f"DiT-{dit.get('size')}/{dit.get('patch')} on {latent}x{latent}x4 latents",
            "random init",
            lambda: make_dit(
                size=str(dit.get("size")),
                patch=int(dit.get("patch", 2)),
                latent_size=latent,
                latent_channels=4,
                num_conditions=conditions,
                seed=0,
            ),
            note=f"{conditions} conditions + the null id; diffusers keeps a copy of the condition "
            "embedding in every block",
        )
    )
    lc = hp.get("latent_classifier") or {}
    name = str(lc.get("backbone"))
    w = _weights_of(lc.get("pretrained"))
    out.append(
        _built(
            "classndiff: latent classifier",
            f"stem + timm {name} + MLP head",
            f"ImageNet {weights_id(name)} (local timm cache)" if w.startswith("ImageNet") else w,
            lambda: LatentClassifier(
                backbone=name,
                num_classes=num_classes,
                hidden=int(lc.get("hidden", 64)),
                dropout=float(lc.get("dropout", 0.5)),
            ),
            note,
        )
    )
    return out


def _fedd(hp: dict[str, Any]) -> list[BuiltModel]:
    source = str(hp.get("model"))
    out = []
    if source == adm.PAPER_MODEL:
        out.append(
            _built(
                "fedd: backbone",
                "ADM ImageNet-256 unconditional as a diffusers UNet2DModel",
                f"converted {adm.CHECKPOINT} ({adm.default_folder()})",
                adm_unet,
                note="frozen",
            )
        )
    else:
        out.append(
            BuiltModel(
                "fedd: backbone",
                source,
                "the tiny pixel base shipped in the package" if source == "tiny" else source,
                note="built when the run starts; frozen",
            )
        )
    out.append(
        _built(
            "fedd: probe",
            "MLP",
            "random init",
            lambda: fedd_probe(
                int(hp.get("dim", 512)),
                list(hp.get("hidden", [64, 32])),
                list(hp.get("dropout", [0.5, 0.25])),
            ),
        )
    )
    return out
