"""Light-weight ways to teach a frozen text-to-image model new concepts: Textual Inversion (one new
token embedding per concept, Gal et al. 2022) and LoRA adapters on the UNet's attention
projections (Hu et al. 2021, through peft), as majority-to-minority uses them.

Textual Inversion trains the text encoder's whole embedding matrix as one parameter but keeps
every row except the new tokens' exactly as it was: gradients of the other rows are zeroed and,
since AdamW's update of a row with zero gradient is zero only without weight decay, weight
decay is off and the other rows are restored after every step as well.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from rich.console import Console
from safetensors.torch import load_file, save_file

from dermbench.diffusion.components import Components
from dermbench.diffusion.training import train_denoiser
from dermbench.errors import ConfigError

#: the UNet attention projections LoRA adapts (majority-to-minority: to_q, to_k, to_v, to_out.0)
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def add_concept_tokens(c: Components, tokens: list[str], *, init_word: str) -> list[int]:
    """Add `tokens` to the tokenizer and give each a new embedding row initialised to the mean
    embedding of `init_word`'s tokens (the paper's initialiser "skin"); returns their ids."""
    clash = [t for t in tokens if t in c.tokenizer.get_vocab()]
    if clash or len(set(tokens)) != len(tokens):
        raise ConfigError(
            f"concept token(s) {clash or tokens} already exist or repeat; choose other placeholders"
        )
    init_ids = c.tokenizer(init_word, add_special_tokens=False).input_ids
    if not init_ids:
        raise ConfigError(f"the initialiser word {init_word!r} has no tokens")
    c.tokenizer.add_tokens(tokens)
    c.text_encoder.resize_token_embeddings(len(c.tokenizer), mean_resizing=False)  # rows set below
    ids = c.tokenizer.convert_tokens_to_ids(tokens)
    weight = c.text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        weight[ids] = weight[init_ids].mean(dim=0)
    return list(ids)


def train_textual_inversion(
    c: Components,
    images: np.ndarray,
    prompts: list[str],
    token_ids: list[int],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
    console: Console,
) -> list[float]:
    """Learn the embedding rows `token_ids` from `images` captioned by `prompts` (which name the
    tokens); every other weight of the model stays as it was."""
    weight = c.text_encoder.get_input_embeddings().weight
    original = weight.detach().clone()
    others = torch.ones(len(weight), dtype=torch.bool)
    others[token_ids] = False
    weight.requires_grad_(True)
    hook = weight.register_hook(lambda grad: grad.masked_fill(others.to(grad.device)[:, None], 0.0))

    def restore() -> None:
        with torch.no_grad():
            weight[others] = original[others].to(weight.device)

    try:
        return train_denoiser(
            c,
            images,
            prompts,
            params=[weight],
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            device=device,
            console=console,
            label="textual inversion",
            after_step=restore,
        )
    finally:
        hook.remove()


def add_lora(c: Components, *, rank: int, alpha: float) -> list[torch.nn.Parameter]:
    """LoRA adapters of `rank` on the UNet's attention projections; returns the adapter weights,
    the only parameters that train (the UNet's own stay frozen)."""
    c.unet.requires_grad_(False)
    c.unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(LORA_TARGETS))
    )
    params = [p for p in c.unet.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"the UNet has none of the LoRA target modules {LORA_TARGETS}")
    return params


def save_concepts(c: Components, tokens: list[str], path: Path) -> None:
    ids = c.tokenizer.convert_tokens_to_ids(tokens)
    rows = c.text_encoder.get_input_embeddings().weight.detach().cpu()
    save_file({token: rows[i].clone().contiguous() for token, i in zip(tokens, ids)}, str(path))


def load_concepts(c: Components, path: Path, *, tokens: list[str]) -> None:
    """Add the tokens saved by `save_concepts` with their learned embeddings."""
    learned = load_file(str(path))
    ids = add_concept_tokens(c, tokens, init_word="a")  # the initialiser is overwritten just below
    weight = c.text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for token, i in zip(tokens, ids):
            weight[i] = learned[token].to(weight)


def save_lora(c: Components, path: Path) -> None:
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(c.unet).items()}, str(path)
    )


def load_lora(c: Components, path: Path, *, rank: int, alpha: float) -> None:
    add_lora(c, rank=rank, alpha=alpha)
    set_peft_model_state_dict(c.unet, load_file(str(path)))
    c.unet.requires_grad_(False)
