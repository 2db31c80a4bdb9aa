"""Training-step throughput of the tiny profile: the harness trainer (sampling, augmentation,
normalisation, progress, per-epoch checkpoint and validation) against a bare PyTorch loop doing
the same forward/backward/optimiser steps on the same model, measured in the same run."""

import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console

from dermbench.context import RunContext
from dermbench.datasets.synthderm import SynthDerm
from dermbench.runner import resolve_config

N_TRAIN, N_VAL = 1024, 64


def _setup(tmp_path: Path):
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = resolve_config(
        flags={"device": "cpu", "out": str(tmp_path)},
        sets=["train.epochs=1", f"data.options={{n_train: {N_TRAIN}, n_val: {N_VAL}}}"],
    )
    ds = SynthDerm(n_train=N_TRAIN, n_val=N_VAL)
    size = cfg["data"]["image_size"]
    train = ds.load(task="malignant", split="train", image_size=size)
    val = ds.load(task="malignant", split="val", image_size=size)
    ctx = RunContext(
        config=cfg,
        device=torch.device("cpu"),
        work_dir=tmp_path / "work",
        cache_dir=tmp_path / "c",
        console=Console(quiet=True),
    )
    return cfg, ctx, train, val


def test_tiny_profile_training_throughput(benchmark, tmp_path):
    cfg, ctx, train, val = _setup(tmp_path)
    bs = cfg["train"]["batch_size"]

    def harness_epoch():
        shutil.rmtree(ctx.work_dir, ignore_errors=True)  # no resume: train the epoch for real
        ctx.trained.clear()
        ctx.train_model(ctx.create_model(2), train, val, name="bench")

    def bare_epoch():
        model = ctx.create_model(2)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()
        images = torch.from_numpy(np.array(train.images)).permute(0, 3, 1, 2).float() / 255.0
        labels = torch.tensor(train.labels)
        for start in range(0, N_TRAIN, bs):
            loss = F.cross_entropy(model(images[start : start + bs]), labels[start : start + bs])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            model(torch.from_numpy(np.array(val.images)).permute(0, 3, 1, 2).float() / 255.0)

    import time

    bare = []
    for _ in range(3):
        t = time.perf_counter()
        bare_epoch()
        bare.append(time.perf_counter() - t)
    benchmark.pedantic(harness_epoch, rounds=3, iterations=1)
    harness = benchmark.stats.stats.min
    benchmark.extra_info.update(
        images_per_s=N_TRAIN / harness, bare_images_per_s=N_TRAIN / min(bare), overhead=harness / min(bare)
    )
    # the harness may add checkpointing and validation scoring, but not more than a quarter on top
    assert harness <= 1.25 * min(bare), f"harness epoch {harness:.2f}s vs bare loop {min(bare):.2f}s"
