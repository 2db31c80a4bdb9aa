"""guided-diffusion ADM checkpoints (Dhariwal & Nichol 2021) as diffusers `UNet2DModel` folders:
FEDD's paper backbone, the ImageNet 256 x 256 unconditional model `256x256_diffusion_uncond.pt`.

Why a diffusers `UNet2DModel` and not an ADM module of our own. `UNet2DModel` can hold ADM
exactly, layer for layer, with these settings (checked by tests/test_adm.py against a reference
forward pass written from ADM's description with explicit tensor ops):

- ResBlocks: GroupNorm(32) - SiLU - conv3x3, the timestep projection, GroupNorm - (1 + scale) *
  h + shift (`use_scale_shift_norm`, diffusers `resnet_time_scale_shift="scale_shift"`) - SiLU -
  dropout - conv3x3, a 1x1 skip convolution where the width changes: `ResnetBlock2D`;
- up/down-sampling ResBlocks (`resblock_updown`: nearest x2 / average-pool /2 applied to both the
  branch after the first norm and activation, and the skip input): `ResnetBlock2D(up/down=True)`,
  diffusers `upsample_type="resnet"` / `downsample_type="resnet"`; without `resblock_updown` the
  strided 3x3 conv / nearest + conv3x3 samplers: `Downsample2D` / `Upsample2D` with a conv;
- attention: GroupNorm, one 1x1 conv to q, k, v, softmax(q k^T / sqrt(d)) per head, 1x1 output
  conv, residual: diffusers `Attention` with separate q / k / v projections. ADM's single qkv conv
  is split into them; in ADM's (legacy) order the 3C output rows are per head [q_h, k_h, v_h], in
  `use_new_attention_order` they are [q, k, v] of all heads. Heads: `num_head_channels` per head
  (diffusers `attention_head_dim`), or a fixed `num_heads` where every attention layer has the same
  width; the middle block's attention keeps its GroupNorm (`attn_norm_num_groups=32`, which
  diffusers otherwise drops under "scale_shift");
- sinusoidal timestep embedding [cos, sin] with frequencies 10000^(-i/half) (`flip_sin_to_cos`,
  `freq_shift=0`), then Linear - SiLU - Linear to 4 x num_channels;
- skip connections: every input block's output, concatenated after the decoder's input, in the
  same order; learned variance: 6 output channels (`learn_sigma`).

Keeping the diffusers layout means the converted folder is an ordinary `fedd.model` folder
(`dermbench.diffusion.pixel` loads it, `dermbench.methods.fedd.features` numbers its decoder blocks
0..17 as ADM's `output_blocks`), with no second UNet implementation to maintain. The conversion
is a renaming (plus the qkv split and 1D-to-linear reshapes); `convert` refuses a checkpoint with
a key it does not map, a key it expects but does not find, or a tensor of another shape, naming
the key and the file.

`dermbench fedd convert-adm CKPT OUT` writes OUT/unet (config.json + safetensors), OUT/scheduler
(the linear 1000-step schedule ADM's ImageNet models were trained with) and OUT/adm.json (the ADM
settings and the checkpoint's SHA-256).
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DModel

from dermbench.data.metadata import sha256_file
from dermbench.diffusion.pixel import default_scheduler
from dermbench.errors import ConfigError, DermbenchError

#: the name `fedd.model` takes for the converted paper backbone (resolved to DEFAULT_FOLDER)
PAPER_MODEL = "adm-imagenet256-uncond"
CHECKPOINT = "256x256_diffusion_uncond.pt"
#: openai/guided-diffusion README, "Download pre-trained models" (ImageNet 256x256 unconditional)
CHECKPOINT_URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt"
ADM_JSON = "adm.json"


def models_root() -> Path:
    """`$DERMBENCH_CACHE/models`, else `~/.cache/dermbench/models`."""
    env = os.environ.get("DERMBENCH_CACHE")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "dermbench") / "models"


def default_folder() -> Path:
    """Where `convert-adm` puts the paper backbone by default and
    `fedd.model: adm-imagenet256-uncond` looks."""
    return models_root() / PAPER_MODEL


def fetch_commands(out: Path | None = None) -> str:
    """The two commands that provide the paper backbone."""
    out = default_folder() if out is None else out
    return f"curl -L -o {CHECKPOINT} {CHECKPOINT_URL}\ndermbench fedd convert-adm {CHECKPOINT} {out}"


@dataclass(frozen=True)
class ADMConfig:
    """guided-diffusion's `create_model` arguments that shape the weights (use_fp16, dropout and
    use_checkpoint do not). `attention_resolutions` are in pixels, as on its command line."""

    image_size: int = 256
    num_channels: int = 256
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    channel_mult: tuple[int, ...] = ()  # () = guided-diffusion's default for image_size
    num_heads: int = 4
    num_head_channels: int = 64  # -1: num_heads heads
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    learn_sigma: bool = True
    use_new_attention_order: bool = False
    in_channels: int = 3
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def mult(self) -> tuple[int, ...]:
        if self.channel_mult:
            return tuple(int(m) for m in self.channel_mult)
        defaults = {
            512: (0.5, 1, 1, 2, 2, 4, 4),
            256: (1, 1, 2, 2, 4, 4),
            128: (1, 1, 2, 3, 4),
            64: (1, 2, 3, 4),
            32: (1, 2, 2, 2),
        }
        if self.image_size not in defaults:
            raise ConfigError(
                f"ADM has no default channel_mult for image size {self.image_size}: give --channel-mult"
            )
        return defaults[self.image_size]  # type: ignore[return-value]

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    def widths(self) -> list[int]:
        return [int(m * self.num_channels) for m in self.mult]

    def attends(self, level: int) -> bool:
        """Attention at this level (downsampling factor 2**level), as `image_size // resolution`."""
        return 2**level in {self.image_size // int(r) for r in self.attention_resolutions}


#: the ImageNet 256 x 256 unconditional model (guided-diffusion README's MODEL_FLAGS)
PAPER_ADM = ADMConfig()


def heads_dim(config: ADMConfig) -> int:
    """diffusers' `attention_head_dim` (channels per head) for every attention layer."""
    if config.num_head_channels > 0:
        return int(config.num_head_channels)
    widths = config.widths()
    attended = {widths[level] for level in range(len(widths)) if config.attends(level)} | {widths[-1]}
    if len(attended) != 1 or next(iter(attended)) % config.num_heads:
        raise ConfigError(
            f"ADM with num_heads={config.num_heads} on attention layers of widths {sorted(attended)} "
            "has a different head size per level, which a diffusers UNet2DModel cannot hold"
        )
    return next(iter(attended)) // config.num_heads


def diffusers_config(config: ADMConfig) -> dict[str, Any]:
    """The `UNet2DModel` arguments that hold `config` exactly."""
    levels = range(len(config.mult))
    plain_down = "ResnetDownsampleBlock2D" if config.resblock_updown else "DownBlock2D"
    plain_up = "ResnetUpsampleBlock2D" if config.resblock_updown else "UpBlock2D"
    return {
        "sample_size": config.image_size,
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "block_out_channels": config.widths(),
        "layers_per_block": config.num_res_blocks,
        "down_block_types": ["AttnDownBlock2D" if config.attends(lv) else plain_down for lv in levels],
        "up_block_types": ["AttnUpBlock2D" if config.attends(lv) else plain_up for lv in reversed(levels)],
        "downsample_type": "resnet" if config.resblock_updown else "conv",
        "upsample_type": "resnet" if config.resblock_updown else "conv",
        "resnet_time_scale_shift": "scale_shift" if config.use_scale_shift_norm else "default",
        "attention_head_dim": heads_dim(config),
        "norm_num_groups": 32,
        "attn_norm_num_groups": 32,
        "norm_eps": 1e-5,
        "time_embedding_type": "positional",
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "downsample_padding": 1,
        "add_attention": True,
        "act_fn": "silu",
        "center_input_sample": False,
        "mid_block_scale_factor": 1,
        "dropout": 0.0,
    }


# --------------------------------------------------------------------------- the key map
Transform = Callable[[torch.Tensor], torch.Tensor]


def _same(x: torch.Tensor) -> torch.Tensor:
    return x


def _squeeze_1d(x: torch.Tensor) -> torch.Tensor:
    return x[..., 0] if x.dim() == 3 else x  # a 1x1 conv1d weight (out, in, 1) as a Linear weight


@dataclass(frozen=True)
class Target:
    """Where one ADM tensor goes: (diffusers key, transform) pairs, and the shape ADM has."""

    shape: tuple[int, ...]
    outputs: tuple[tuple[str, Transform], ...]


def _qkv(part: int, heads: int, width: int, legacy: bool) -> Transform:
    def take(x: torch.Tensor) -> torch.Tensor:
        x = _squeeze_1d(x)
        rest = x.shape[1:]
        per = width // heads
        if legacy:  # rows per head: [q_h, k_h, v_h]
            return x.reshape(heads, 3, per, *rest)[:, part].reshape(width, *rest)
        return x.reshape(3, width, *rest)[part]

    return take


def key_map(config: ADMConfig) -> dict[str, Target]:
    """{ADM key: Target} for every tensor an ADM checkpoint of `config` holds."""
    out: dict[str, Target] = {}
    emb = 4 * config.num_channels
    widths = config.widths()
    head = heads_dim(config)
    legacy = not config.use_new_attention_order

    def param(adm: str, dst: str, shape: tuple[int, ...], transform: Transform = _same) -> None:
        out[adm] = Target(shape, ((dst, transform),))

    def conv(adm: str, dst: str, cin: int, cout: int, k: int = 3) -> None:
        param(f"{adm}.weight", f"{dst}.weight", (cout, cin, k, k))
        param(f"{adm}.bias", f"{dst}.bias", (cout,))

    def norm(adm: str, dst: str, ch: int) -> None:
        param(f"{adm}.weight", f"{dst}.weight", (ch,))
        param(f"{adm}.bias", f"{dst}.bias", (ch,))

    def linear(adm: str, dst: str, cin: int, cout: int) -> None:
        param(f"{adm}.weight", f"{dst}.weight", (cout, cin))
        param(f"{adm}.bias", f"{dst}.bias", (cout,))

    def resblock(adm: str, dst: str, cin: int, cout: int) -> None:
        norm(f"{adm}.in_layers.0", f"{dst}.norm1", cin)
        conv(f"{adm}.in_layers.2", f"{dst}.conv1", cin, cout)
        linear(
            f"{adm}.emb_layers.1",
            f"{dst}.time_emb_proj",
            emb,
            cout * (2 if config.use_scale_shift_norm else 1),
        )
        norm(f"{adm}.out_layers.0", f"{dst}.norm2", cout)
        conv(f"{adm}.out_layers.3", f"{dst}.conv2", cout, cout)
        if cin != cout:
            conv(f"{adm}.skip_connection", f"{dst}.conv_shortcut", cin, cout, k=1)

    def attention(adm: str, dst: str, ch: int) -> None:
        heads = ch // head
        norm(f"{adm}.norm", f"{dst}.group_norm", ch)
        for suffix, shape in (("weight", (3 * ch, ch, 1)), ("bias", (3 * ch,))):
            out[f"{adm}.qkv.{suffix}"] = Target(
                shape,
                tuple(
                    (f"{dst}.to_{name}.{suffix}", _qkv(i, heads, ch, legacy)) for i, name in enumerate("qkv")
                ),
            )
        param(f"{adm}.proj_out.weight", f"{dst}.to_out.0.weight", (ch, ch, 1), _squeeze_1d)
        param(f"{adm}.proj_out.bias", f"{dst}.to_out.0.bias", (ch,))

    linear("time_embed.0", "time_embedding.linear_1", config.num_channels, emb)
    linear("time_embed.2", "time_embedding.linear_2", emb, emb)
    ch = widths[0]
    conv("input_blocks.0.0", "conv_in", config.in_channels, ch)
    skips = [ch]
    index = 1
    levels = len(widths)
    for level, width in enumerate(widths):
        for i in range(config.num_res_blocks):
            resblock(f"input_blocks.{index}.0", f"down_blocks.{level}.resnets.{i}", ch, width)
            ch = width
            if config.attends(level):
                attention(f"input_blocks.{index}.1", f"down_blocks.{level}.attentions.{i}", ch)
            skips.append(ch)
            index += 1
        if level != levels - 1:
            if config.resblock_updown:
                resblock(f"input_blocks.{index}.0", f"down_blocks.{level}.downsamplers.0", ch, ch)
            else:
                conv(f"input_blocks.{index}.0.op", f"down_blocks.{level}.downsamplers.0.conv", ch, ch)
            skips.append(ch)
            index += 1
    resblock("middle_block.0", "mid_block.resnets.0", ch, ch)
    attention("middle_block.1", "mid_block.attentions.0", ch)
    resblock("middle_block.2", "mid_block.resnets.1", ch, ch)
    index = 0
    for up, level in enumerate(reversed(range(levels))):
        width = widths[level]
        for i in range(config.num_res_blocks + 1):
            resblock(f"output_blocks.{index}.0", f"up_blocks.{up}.resnets.{i}", ch + skips.pop(), width)
            ch = width
            position = 1
            if config.attends(level):
                attention(f"output_blocks.{index}.1", f"up_blocks.{up}.attentions.{i}", ch)
                position = 2
            if level and i == config.num_res_blocks:
                if config.resblock_updown:
                    resblock(f"output_blocks.{index}.{position}", f"up_blocks.{up}.upsamplers.0", ch, ch)
                else:
                    conv(
                        f"output_blocks.{index}.{position}.conv", f"up_blocks.{up}.upsamplers.0.conv", ch, ch
                    )
            index += 1
    norm("out.0", "conv_norm_out", ch)
    conv("out.2", "conv_out", widths[0], config.out_channels)
    return out


# --------------------------------------------------------------------------- reading and converting
def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in a guided-diffusion .pt file (torch.load, weights_only); a clear error for
    a missing, truncated or non-checkpoint file."""
    path = Path(path)
    if not path.is_file():
        raise DermbenchError(
            f"ADM checkpoint {path} does not exist; fetch it with\ncurl -L -o {CHECKPOINT} {CHECKPOINT_URL}"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DermbenchError(
            f"ADM checkpoint {path} could not be read (truncated or not a torch checkpoint: "
            f"{first}); download it again: curl -L -o {CHECKPOINT} {CHECKPOINT_URL}"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DermbenchError(
            f"ADM checkpoint {path} does not hold a state dict of tensors (got {type(state).__name__})"
        )
    return state


def infer_config(state: dict[str, torch.Tensor], base: ADMConfig = PAPER_ADM) -> ADMConfig:
    """`base` with the widths the tensors show: num_channels and in_channels (the first conv),
    learn_sigma (the last conv's outputs), use_scale_shift_norm (the first ResBlock's embedding
    projection). The rest (levels, res blocks, attention, heads, up/down ResBlocks) is checked by
    the key map: a difference is an unexpected or missing key, or a shape."""
    first, last = state.get("input_blocks.0.0.weight"), state.get("out.2.weight")
    if first is None or last is None or first.dim() != 4:
        return base
    config = replace(base, num_channels=int(first.shape[0]), in_channels=int(first.shape[1]))
    config = replace(config, learn_sigma=int(last.shape[0]) == 2 * config.in_channels)
    proj = state.get("input_blocks.1.0.emb_layers.1.weight")
    if proj is not None:
        config = replace(config, use_scale_shift_norm=int(proj.shape[0]) == 2 * int(config.widths()[0]))
    return config


def convert_state(
    state: dict[str, torch.Tensor], config: ADMConfig, *, source: str
) -> dict[str, torch.Tensor]:
    """The diffusers state dict of an ADM state dict; a DermbenchError names the first key that is
    not mapped, missing, or of another shape (and `source`)."""
    mapping = key_map(config)
    for key in state:
        if key not in mapping:
            raise DermbenchError(
                f"{source}: key {key!r} is not part of ADM {describe(config)}; "
                "not converted (a class-conditional model, or other architecture settings?)"
            )
    for key, target in mapping.items():
        if key not in state:
            raise DermbenchError(f"{source}: key {key!r} of ADM {describe(config)} is missing")
        if tuple(state[key].shape) != target.shape:
            raise DermbenchError(
                f"{source}: {key!r} has shape {tuple(state[key].shape)}, ADM {describe(config)} "
                f"has {target.shape}"
            )
    out: dict[str, torch.Tensor] = {}
    for key, target in mapping.items():
        for dst, transform in target.outputs:
            out[dst] = transform(state[key].float()).contiguous().clone()
    return out


def describe(config: ADMConfig) -> str:
    return (
        f"({config.image_size} px, num_channels {config.num_channels}, channel_mult "
        f"{','.join(f'{m:g}' for m in config.mult)}, num_res_blocks {config.num_res_blocks}, attention at "
        f"{','.join(str(r) for r in config.attention_resolutions)} px, "
        + (
            f"num_head_channels {config.num_head_channels}"
            if config.num_head_channels > 0
            else f"num_heads {config.num_heads}"
        )
        + f", resblock_updown {config.resblock_updown}, use_scale_shift_norm {config.use_scale_shift_norm}, "
        f"learn_sigma {config.learn_sigma})"
    )


def to_unet(state: dict[str, torch.Tensor], config: ADMConfig, *, source: str = "ADM state dict"):
    """A diffusers `UNet2DModel` holding the ADM weights (strict load: every key on both sides)."""
    converted = convert_state(state, config, source=source)
    unet = UNet2DModel(**diffusers_config(config))
    missing, unexpected = unet.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise DermbenchError(
            f"{source}: the converted weights do not fill the diffusers UNet2DModel exactly "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    return unet.eval().requires_grad_(False)


def check_out(out: Path) -> None:
    """OUT must be new (or an empty folder): a conversion never overwrites."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DermbenchError(f"{out} exists and is not an empty folder: give a new folder (or remove it)")


def convert_checkpoint(
    checkpoint: Path,
    out: Path,
    config: ADMConfig | None = None,
    *,
    state: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Read, check and convert `checkpoint`; write OUT/unet, OUT/scheduler and OUT/adm.json.
    `config` None: the paper model's settings with the widths read from the tensors."""
    checkpoint, out = Path(checkpoint), Path(out)
    check_out(out)
    state = read_checkpoint(checkpoint) if state is None else state
    config = infer_config(state) if config is None else config
    unet = to_unet(state, config, source=str(checkpoint))
    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    default_scheduler().save_pretrained(out / "scheduler")
    info = {
        "format": 1,
        "checkpoint": checkpoint.name,
        "sha256": sha256_file(checkpoint),
        "tensors": len(state),
        "parameters": int(sum(v.numel() for v in state.values())),
        "adm": {k: v for k, v in asdict(config).items() if k != "extra"}
        | {"channel_mult": list(config.mult)},
        "decoder_blocks": len(config.mult) * (config.num_res_blocks + 1),
    }
    (out / ADM_JSON).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return info
