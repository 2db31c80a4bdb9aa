"""The parts of a latent text-to-image diffusion model, from a checkpoint or from configs.

Paper profiles load Stable Diffusion (1.4 for DermDiff, 2.1-base for majority-to-minority) from
a local folder in the diffusers layout or a hub id. The tiny profile builds a few-channel UNet,
VAE and CLIP text encoder from configs, and a character-level tokenizer from a vocabulary
written on the spot, so the whole path runs on a CPU with no download. A randomly initialised
VAE cannot reconstruct images, so `dermbench.diffusion.base` trains the tiny parts on the
training split first: the stand-in for the pretraining a real checkpoint brings.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import huggingface_hub
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.utils import logging as transformers_logging

from dermbench.errors import ConfigError, DermbenchError

# runs show their own rich progress bars; the libraries' tqdm bars for each saved or loaded
# shard would interleave with them
diffusers_logging.disable_progress_bar()
transformers_logging.disable_progress_bar()

#: what a checkpoint folder must hold (the diffusers layout of a Stable Diffusion model)
SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
#: the tiny VAE halves the resolution twice: 64 px images become 16 x 16 latents
TINY_DOWNSAMPLE = 4
TINY_TEXT_WIDTH = 32
#: the tiny tokenizer's alphabet: printable ASCII, one token per character (a word-final form too)
_ALPHABET = [chr(i) for i in range(33, 127)]
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


@dataclass
class Components:
    """A latent diffusion model's parts and where they came from (`source`, for records and keys)."""

    vae: AutoencoderKL
    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDPMScheduler  # the training noise schedule; samplers are made from its config
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def latent_scale(self) -> int:
        """Pixels per latent cell along a side."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def to(self, device: torch.device) -> Components:
        for module in (self.vae, self.unet, self.text_encoder):
            module.to(device)
        return self

    def freeze(self) -> None:
        """Every weight frozen and in eval mode: a method unfreezes what it trains."""
        for module in (self.vae, self.unet, self.text_encoder):
            module.requires_grad_(False)
            module.eval()


def write_tiny_tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP tokenizer over single characters (no BPE merges), written into `folder`: any prompt
    a template produces is tokenised without a downloaded vocabulary."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {c: i for i, c in enumerate(_ALPHABET)}
    vocab.update({c + "</w>": len(_ALPHABET) + i for i, c in enumerate(_ALPHABET)})
    vocab[BOS], vocab[EOS] = len(vocab), len(vocab) + 1
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    tokenizer.save_pretrained(folder)
    return tokenizer


def tiny_components(image_size: int, *, seed: int, tokenizer_dir: Path) -> Components:
    """Randomly initialised few-channel parts for `image_size` px images (a multiple of 4)."""
    if image_size % TINY_DOWNSAMPLE:
        raise ConfigError(
            f"the tiny diffusion model needs an image size divisible by {TINY_DOWNSAMPLE}, got {image_size}"
        )
    torch.manual_seed(seed)
    tokenizer = write_tiny_tokenizer(tokenizer_dir)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=TINY_TEXT_WIDTH,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        sample_size=image_size,
    )
    unet = UNet2DConditionModel(
        sample_size=image_size // TINY_DOWNSAMPLE,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TINY_TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        steps_offset=1,
    )
    return Components(
        vae=vae,
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        source={"kind": "tiny", "image_size": image_size, "init_seed": seed},
    )


def checkpoint_folder(source: str, *, revision: str | None = None) -> tuple[Path, str]:
    """The local folder of `source` (a folder in the diffusers layout, or a hub id, taken from the
    Hugging Face cache and downloaded only when the hub is reachable) and an identity string that
    pins its content (the hub commit, or the folder's weight-file digest)."""
    local = Path(source).expanduser()
    if local.exists() or source.startswith((".", "/", "~")):
        if not local.is_dir():
            raise ConfigError(
                f"diffusion model folder {local} does not exist: give a folder in the diffusers layout "
                f"({', '.join(SUBFOLDERS)}) or a hub id such as CompVis/stable-diffusion-v1-4"
            )
        _check_layout(local)
        return local, f"folder:{local.resolve()}@{folder_digest(local)}"
    patterns = ["model_index.json", *(f"{sub}/*" for sub in SUBFOLDERS)]
    try:
        folder = Path(
            huggingface_hub.snapshot_download(
                source, revision=revision, allow_patterns=patterns, local_files_only=True
            )
        )
    except Exception:  # noqa: BLE001 (not in the local cache: any hub error means the same thing here)
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
            raise _absent(
                source, "it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
            ) from None
        try:
            folder = Path(
                huggingface_hub.snapshot_download(source, revision=revision, allow_patterns=patterns)
            )
        except Exception as exc:  # noqa: BLE001 (offline, unknown id, gated model: say which and how to fix)
            raise _absent(
                source, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from exc
    _check_layout(folder)
    return folder, f"hub:{source}@{folder.name}"


def _absent(source: str, why: str) -> DermbenchError:
    return DermbenchError(
        f"cannot load the diffusion model {source!r}: {why}. On a machine with network access run "
        f"`huggingface-cli download {source}` (then copy ~/.cache/huggingface or set HF_HOME), or set the "
        "method's `model` setting to a local folder in the diffusers layout (unet/, vae/, text_encoder/, "
        "tokenizer/, "
        "scheduler/); `--profile tiny` needs no checkpoint"
    )


def _check_layout(folder: Path) -> None:
    missing = [sub for sub in SUBFOLDERS if not (folder / sub).is_dir()]
    if missing:
        raise ConfigError(
            f"diffusion model folder {folder} lacks {', '.join(f'{m}/' for m in missing)} "
            "(expected the diffusers layout of a Stable Diffusion checkpoint)"
        )


def folder_digest(folder: Path) -> str:
    """SHA-256 over the weight and config files of a checkpoint folder (names and bytes): the
    identity of a local checkpoint, so a changed file means other weights."""
    digest = hashlib.sha256()
    for path in sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".json", ".txt")
    ):
        digest.update(str(path.relative_to(folder)).encode("utf-8"))
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:20]


def load_components(source: str, *, revision: str | None = None) -> Components:
    """Stable Diffusion's parts from `source` (see `checkpoint_folder`) in float32: training and
    CPU runs need full precision; generation on CUDA casts its own copy."""
    folder, identity = checkpoint_folder(source, revision=revision)
    return components_from_folder(folder, {"kind": "pretrained", "model": source, "identity": identity})


def components_from_folder(folder: Path, source: dict[str, Any]) -> Components:
    """The parts saved in `folder` (diffusers layout), described by `source` (its "identity"
    names the weights in cache keys)."""
    try:
        parts = {
            "vae": AutoencoderKL.from_pretrained(folder, subfolder="vae"),
            "unet": UNet2DConditionModel.from_pretrained(folder, subfolder="unet"),
            "text_encoder": CLIPTextModel.from_pretrained(folder, subfolder="text_encoder"),
            "tokenizer": CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"),
            "scheduler": DDPMScheduler.from_pretrained(folder, subfolder="scheduler"),
        }
    except (OSError, ValueError, RuntimeError) as exc:
        raise DermbenchError(f"diffusion model in {folder} could not be loaded: {exc}") from exc
    components = Components(**parts, source=source)
    components.freeze()
    return components


def save_components(c: Components, folder: Path) -> None:
    """Write every part into `folder` in the diffusers layout (weights as safetensors)."""
    c.vae.save_pretrained(folder / "vae")
    c.unet.save_pretrained(folder / "unet")
    c.text_encoder.save_pretrained(folder / "text_encoder")
    c.tokenizer.save_pretrained(folder / "tokenizer")
    c.scheduler.save_pretrained(folder / "scheduler")


def module_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers by name: the identity of trained weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode("utf-8"))
        digest.update(tensor.detach().to("cpu").reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:20]
