"""The diffusion models' published architectures, built on torch's meta device for the dry run.

The published checkpoints' configs are written here as dicts (the `config.json` of each hub
folder, as diffusers and transformers read them), so nothing is fetched to know their shapes; the
builders make each part from its config. `sd_parts` is the dry-run rows (`dermbench run --dry-run`,
`dermbench.train.meta_models`) of a Stable Diffusion checkpoint, which the diffusion methods list
through their `dermbench_models` hook; tests/test_paper_architectures.py checks the counts against
the published figures; the GPU check builds the same architectures on a real device.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from dermbench.train.meta_models import BuiltModel, built

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


# ------------------------------------------------------------------------------- the builders


def sd_unet(config: dict[str, Any]) -> nn.Module:
    return UNet2DConditionModel(**config)


def sd_vae(config: dict[str, Any] = SD_VAE) -> nn.Module:
    return AutoencoderKL(**config)


def text_encoder(config: dict[str, Any]) -> nn.Module:
    return CLIPTextModel(CLIPTextConfig(**config))


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


def sd_parts(method: str, source: str) -> list[BuiltModel]:
    """The rows of `method`'s Stable Diffusion checkpoint `source` (a hub id or a local folder): its
    UNet, VAE and text encoder, or one row to be built when the run starts (the tiny base, or a
    checkpoint whose configs are not known here)."""
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
        out.append(built(f"{method}: UNet", "UNet2DConditionModel", source, lambda: sd_unet(parts["unet"])))
    if "vae" in parts:
        out.append(
            built(f"{method}: VAE", "AutoencoderKL", source, lambda: sd_vae(parts["vae"]), note="frozen")
        )
    if "text_encoder" in parts:
        out.append(
            built(
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
