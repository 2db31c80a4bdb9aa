"""The tiny bases shipped with dermbench: the part Stable Diffusion's and ADM's pretraining play in
the papers, for the tiny profile.

The papers start from models pretrained on web images whose captions name what is seen (skin,
its colour, a spot's look) and seldom a diagnosis. The tiny profile's stand-ins are pretrained
once, by `dermbench diffusion pretrain-base`, the same way: on SynthDerm images rendered from
seeds that are none of the protocol splits' (`pretraining_seeds`), in equal shares of the six
Fitzpatrick types, clinical and dermoscopic, with captions that name the skin tone and describe
the lesion in general terms (size, symmetry, border, colours, artifacts) and never its diagnosis
(`caption`). Two models come out, both shipped in the package under `tiny_base/`:

- `latent/`: a text-to-image latent diffusion model in the diffusers layout (the tiny VAE,
  UNet, CLIP text encoder and character tokenizer of `components.tiny_components`): the VAE is
  trained to reconstruct, then the UNet and text encoder together on the noise-prediction loss
  of the captioned images, 10 % of captions empty (classifier-free guidance needs it). DermDiff,
  majority-to-minority and Class-N-Diff (its VAE) start from it; per-run fine-tuning is the
  papers'.
- `pixel/`: an unconditional pixel-space DDPM (`pixel.tiny_unet`) on the same scenes: FEDD's
  frozen feature extractor.

`checksums.json` holds the SHA-256 of every file; `shipped.verify` checks them before either model
is loaded and refuses a changed, missing or extra file. The build is deterministic on CPU (fixed
seeds, one thread): `dermbench diffusion pretrain-base --out DIR` rebuilds the same bytes.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console

from dermbench.data.metadata import sha256_file
from dermbench.datasets.synthderm import SPLITS
from dermbench.datasets.synthderm_params import BALANCED_TONE_MIX
from dermbench.datasets.synthderm_render import render, sample_scenes
from dermbench.diffusion.components import save_components, tiny_components
from dermbench.diffusion.pixel import default_scheduler, tiny_unet, train_pixel_ddpm
from dermbench.diffusion.shipped import CHECKSUMS, LATENT, PIXEL, files
from dermbench.diffusion.training import train_autoencoder, train_denoiser
from dermbench.errors import ConfigError, DermbenchError
from dermbench.seeds import split_seed

MANIFEST = "pretraining.json"
#: the pretraining recipe (`--set key=value` overrides it; a reduced one for tests)
SETTINGS: dict[str, Any] = {
    "images": 6000,
    "render_batch": 500,
    "dermoscopic_share": 0.25,
    "malignant_rate": 0.3,
    "latent_size": 48,
    "vae_steps": 1500,
    "vae_lr": 1e-3,
    "unet_steps": 4000,
    "unet_lr": 5e-4,
    "batch_size": 32,
    "uncond_prob": 0.1,
    "pixel_size": 32,
    "pixel_steps": 3000,
    "pixel_lr": 1e-3,
    "pixel_channels": [16, 32, 32],
    "pixel_layers_per_block": 1,
}
#: the seed of every weight initialisation and training stream
SEED = 0
#: the render seeds' namespace: none of them is a split seed of any data_seed below this
CHECKED_DATA_SEEDS = 1000
#: words a web caption seldom carries and the captions never do (the diagnosis is the fine-tuning's to learn)
DIAGNOSIS_WORDS = (
    "benign",
    "malignant",
    "melanoma",
    "cancer",
    "carcinoma",
    "nevus",
    "naevus",
    "mole",
    "disease",
    "tumour",
    "tumor",
    "keratosis",
    "lesion of",
)
#: the tokenizer's length: a longer caption would be cut
MAX_CAPTION = 77

# Tone vocabularies in the styles methods' prompts and web captions use (the pretraining draws one per image).
_FST_WORDS = {1: "very light", 2: "light", 3: "medium", 4: "olive", 5: "dark", 6: "very dark"}
_TONE3_WORDS = {1: "lighter", 2: "lighter", 3: "brown", 4: "brown", 5: "darker", 6: "darker"}
_PERSON_WORDS = {
    1: "a very light-skinned",
    2: "a light-skinned",
    3: "a medium-skinned",
    4: "an olive-skinned",
    5: "a dark-skinned",
    6: "a very dark-skinned",
}
_ROMAN = {1: "I", 2: "II", 3: "III", 4: "IV", 5: "V", 6: "VI"}
_TEMPLATES = (
    "{look} on {fst} skin",
    "{look} on {tone3} skin tone",
    "{short} on the skin of {person} individual",
    "{look}, skin type {roman}",
)


def pretraining_seeds(n_batches: int) -> list[int]:
    """32-bit render seeds, one per batch of pretraining scenes, none of which is a SynthDerm split
    seed (`split_seed(data_seed, split)`) for any data_seed below CHECKED_DATA_SEEDS: no pretraining
    image is an image of a protocol's training, validation or test split."""
    taken = {split_seed(d, s) for d in range(CHECKED_DATA_SEEDS) for s in SPLITS}
    stream = np.random.SeedSequence([SEED, zlib.crc32(b"dermbench tiny base pretraining")])
    seeds: list[int] = []
    for word in stream.generate_state(4 * n_batches + 8):
        if int(word) not in taken and int(word) not in seeds:
            seeds.append(int(word))
        if len(seeds) == n_batches:
            return seeds
    raise DermbenchError("could not draw disjoint pretraining seeds")  # pragma: no cover (4x spare words)


def look(row: Mapping[str, Any], *, full: bool = True) -> str:
    """The lesion in general terms, from its rendered parameters: its size, shape and colours (and,
    `full`, the kind of image and hair over it)."""
    size = "small" if row["diameter"] < 0.26 else "large" if row["diameter"] > 0.38 else ""
    shape = "irregular" if max(row["asymmetry"], row["border"]) > 0.5 else "round"
    colour = "mottled" if row["variegation"] > 0.45 else "dark" if row["contrast"] > 20 else "faint"
    words = " ".join(w for w in (size if full else "", shape, colour, "spot") if w)
    text = f"{'an' if words[0] in 'aeiou' else 'a'} {words}"
    if not full:
        return text
    return (
        ("dermoscopy of " if row["domain"] == "dermoscopic" else "")
        + text
        + (" with hair" if row["has_hair"] else "")
    )


def caption(row: Mapping[str, Any], style: int) -> str:
    """One web-style caption of a scene: its look and its skin tone in one of four vocabularies."""
    fst = int(row["fst"])
    text = _TEMPLATES[style % len(_TEMPLATES)].format(
        look=look(row),
        short=look(row, full=False),
        fst=_FST_WORDS[fst],
        tone3=_TONE3_WORDS[fst],
        person=_PERSON_WORDS[fst],
        roman=_ROMAN[fst],
    )
    return text[:1].upper() + text[1:] if style >= len(_TEMPLATES) else text


def pretraining_data(settings: Mapping[str, Any]) -> tuple[dict[int, np.ndarray], pd.DataFrame]:
    """The rendered images at each size the bases need, and the scenes' table with captions."""
    n, batch = int(settings["images"]), int(settings["render_batch"])
    sizes = sorted({int(settings["latent_size"]), int(settings["pixel_size"])})
    seeds = pretraining_seeds(-(-n // batch))
    images: dict[int, list[np.ndarray]] = {s: [] for s in sizes}
    tables = []
    for i, seed in enumerate(seeds):
        count = min(batch, n - i * batch)
        dermoscopic = bool(np.random.default_rng([SEED, i]).random() < float(settings["dermoscopic_share"]))
        scenes = sample_scenes(
            count,
            seed=seed,
            tone_mix=BALANCED_TONE_MIX,
            dermoscopic=dermoscopic,
            malignant_rate=float(settings["malignant_rate"]),
        )
        for size in sizes:
            images[size].append(render(scenes, image_size=size)[0])
        tables.append(scenes.table.drop(columns=["label"]).assign(render_seed=seed))
    table = pd.concat(tables, ignore_index=True)
    styles = np.random.default_rng([SEED, 1]).integers(len(_TEMPLATES) * 2, size=len(table))
    table["caption"] = [caption(row, int(s)) for row, s in zip(table.to_dict("records"), styles)]
    return {s: np.concatenate(v) for s, v in images.items()}, table


def check_settings(overrides: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(overrides) - set(SETTINGS))
    if unknown:
        raise ConfigError(f"unknown pretraining setting(s) {unknown}; known: {', '.join(SETTINGS)}")
    settings = {**SETTINGS, **overrides}
    for key in ("images", "render_batch", "latent_size", "pixel_size", "batch_size"):
        if int(settings[key]) <= 0:
            raise ConfigError(f"pretraining setting {key} must be positive, got {settings[key]}")
    return settings


def pretrain_bases(out: Path, *, overrides: Mapping[str, Any], console: Console) -> dict[str, str]:
    """Render, caption and train both bases into `out` (replaced); returns the checksums written."""
    settings = check_settings(overrides)
    torch.set_num_threads(1)  # the same bytes on every CPU
    device = torch.device("cpu")
    if out.exists() and any(out.iterdir()):
        raise DermbenchError(f"{out} is not empty: pretrain into a new folder, then move it into place")
    images, table = pretraining_data(settings)
    leaks = [w for w in DIAGNOSIS_WORDS if table["caption"].str.lower().str.contains(w).any()]
    if leaks or table["caption"].str.len().max() > MAX_CAPTION:
        raise DermbenchError(f"pretraining captions carry {leaks} or exceed {MAX_CAPTION} characters")
    latent_images = images[int(settings["latent_size"])]
    c = tiny_components(int(settings["latent_size"]), seed=SEED, tokenizer_dir=out / LATENT / "tokenizer")
    vae_loss = train_autoencoder(
        c,
        latent_images,
        steps=int(settings["vae_steps"]),
        batch_size=int(settings["batch_size"]),
        lr=float(settings["vae_lr"]),
        seed=SEED,
        device=device,
        console=console,
    )
    c.unet.requires_grad_(True)
    c.text_encoder.requires_grad_(True)
    unet_loss = train_denoiser(
        c,
        latent_images,
        table["caption"].tolist(),
        params=[*c.unet.parameters(), *c.text_encoder.parameters()],
        steps=int(settings["unet_steps"]),
        batch_size=int(settings["batch_size"]),
        lr=float(settings["unet_lr"]),
        seed=SEED,
        device=device,
        console=console,
        label="pretraining the tiny text-to-image UNet",
        uncond_prob=float(settings["uncond_prob"]),
    )
    save_components(c, out / LATENT)
    unet = tiny_unet(
        int(settings["pixel_size"]),
        channels=list(settings["pixel_channels"]),
        layers_per_block=int(settings["pixel_layers_per_block"]),
        seed=SEED,
    )
    scheduler = default_scheduler()
    pixel_loss = train_pixel_ddpm(
        unet,
        scheduler,
        images[int(settings["pixel_size"])],
        steps=int(settings["pixel_steps"]),
        batch_size=int(settings["batch_size"]),
        lr=float(settings["pixel_lr"]),
        seed=SEED,
        device=device,
        console=console,
        label="pretraining the tiny pixel DDPM",
    )
    unet.save_pretrained(out / PIXEL / "unet")
    scheduler.save_pretrained(out / PIXEL / "scheduler")
    manifest = {
        "settings": settings,
        "seed": SEED,
        "render_seeds": sorted(int(s) for s in table["render_seed"].unique()),
        "images_per_fst": {int(k): int(v) for k, v in table["fst"].value_counts().sort_index().items()},
        "dermoscopic": int((table["domain"] == "dermoscopic").sum()),
        "example_captions": table["caption"].head(12).tolist(),
        "final_loss": {"vae": _tail(vae_loss), "unet": _tail(unet_loss), "pixel": _tail(pixel_loss)},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    checksums = {p.relative_to(out).as_posix(): sha256_file(p) for p in files(out)}
    (out / CHECKSUMS).write_text(json.dumps(checksums, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return checksums


def _tail(history: list[float]) -> float:
    return round(float(np.mean(history[-50:])), 6) if history else float("nan")
