"""What the shipped tiny base saves a generative tiny run (pytest-benchmark; `tox -e perf`).

Workload: the start of a DermDiff tiny run on SynthDerm's 4,000-image training split at 48 px,
CPU, one torch thread: getting the base model, then DermDiff's fine-tuning (300 steps, batch 32,
the same in both). Baseline, measured in the same session: the per-run base training every
generative run did before issue 25 (the tiny VAE 200 steps, then the UNet 400 steps with the
caption "an image of skin", batch 32; `PER_RUN_BASE` is that recipe). Against it: the shipped base,
its checksums verified and loaded. The shipped start must be faster; the ratio is printed. The
sampling, quality and classifier stages that follow are the same in both.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from dermbench.datasets.synthderm_render import generate
from dermbench.diffusion.base import tiny_base
from dermbench.diffusion.components import tiny_components
from dermbench.diffusion.training import train_autoencoder, train_denoiser

#: the per-run base recipe before issue 25 (dermbench.diffusion.base.TINY_BASE then)
PER_RUN_BASE = {"vae_steps": 200, "vae_lr": 1e-3, "unet_steps": 400, "unet_lr": 5e-4, "batch_size": 32}
FINETUNE = {"steps": 300, "batch_size": 32, "lr": 5e-4}
SIZE, N = 48, 4000
CPU = torch.device("cpu")
QUIET = Console(quiet=True)
_seconds: dict[str, float] = {}

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def split():
    batch = generate(N, seed=12345, image_size=SIZE)
    prompts = [f"{('benign', 'malignant')[y]} skin disease on brown skin tone" for y in batch.table["label"]]
    return batch.images, prompts


def _finetune(c, images, prompts) -> None:
    c.unet.requires_grad_(True)
    train_denoiser(
        c,
        images,
        prompts,
        params=list(c.unet.parameters()),
        steps=FINETUNE["steps"],
        batch_size=FINETUNE["batch_size"],
        lr=FINETUNE["lr"],
        seed=1,
        device=CPU,
        console=QUIET,
        label="fine-tuning",
        uncond_prob=0.1,
    )


def _per_run_base(images, prompts) -> None:
    with tempfile.TemporaryDirectory() as folder:
        c = tiny_components(SIZE, seed=0, tokenizer_dir=Path(folder) / "tokenizer")
        train_autoencoder(
            c,
            images,
            steps=PER_RUN_BASE["vae_steps"],
            batch_size=PER_RUN_BASE["batch_size"],
            lr=PER_RUN_BASE["vae_lr"],
            seed=0,
            device=CPU,
            console=QUIET,
        )
        c.unet.requires_grad_(True)
        train_denoiser(
            c,
            images,
            ["an image of skin"] * len(images),
            params=list(c.unet.parameters()),
            steps=PER_RUN_BASE["unet_steps"],
            batch_size=PER_RUN_BASE["batch_size"],
            lr=PER_RUN_BASE["unet_lr"],
            seed=0,
            device=CPU,
            console=QUIET,
            label="base",
            uncond_prob=0.1,
        )
        _finetune(c, images, prompts)


def _shipped_base(images, prompts) -> None:
    _finetune(tiny_base(), images, prompts)


def _record(name: str, benchmark) -> None:
    if benchmark.disabled or benchmark.stats is None:
        pytest.skip("benchmarks disabled: no statistics to compare")
    _seconds[name] = benchmark.stats.stats.min


@pytest.mark.benchmark(group="generative-run-start")
def test_per_run_base_training_then_finetuning_baseline(benchmark, split) -> None:
    benchmark.pedantic(_per_run_base, args=split, rounds=1, iterations=1)
    _record("per-run", benchmark)


@pytest.mark.benchmark(group="generative-run-start")
def test_shipped_base_then_finetuning_is_faster(benchmark, split) -> None:
    benchmark.pedantic(_shipped_base, args=split, rounds=2, iterations=1)
    _record("shipped", benchmark)
    if "per-run" not in _seconds:
        pytest.skip("run the baseline in the same session to compare")
    ratio = _seconds["per-run"] / _seconds["shipped"]
    print(
        f"\nshipped base + fine-tuning {_seconds['shipped']:.1f} s against per-run base training + "
        f"fine-tuning {_seconds['per-run']:.1f} s ({ratio:.1f}x faster)"
    )
    assert np.isfinite(ratio) and ratio > 1.0
