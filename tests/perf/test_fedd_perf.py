"""FEDD feature extraction throughput (pytest-benchmark; run with `pytest tests/perf`).

Images per second of the pooled decoder features of a tiny pixel UNet (64 px, CPU, one torch
thread), computed afresh (one noised forward pass per image) and read back from the feature cache
(`dermbench.methods.fedd.features.cached_features`: a verified entry, memory-mapped). Both rates go
into the benchmark's extra_info; the cache must be at least 5x faster than computing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rich.console import Console

from dermbench.diffusion.pixel import PixelModel, default_scheduler, tiny_unet
from dermbench.methods.fedd.features import cached_features, pooled_features

N_IMAGES, SIZE, T = 64, 64, 50
CPU = torch.device("cpu")
_results: dict[str, float] = {}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def model() -> PixelModel:
    unet = tiny_unet(SIZE, channels=[16, 32, 32], layers_per_block=1, seed=0).eval().requires_grad_(False)
    return PixelModel(unet=unet, scheduler=default_scheduler(), source={"identity": "perf-tiny-unet"})


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(N_IMAGES, SIZE, SIZE, 3), dtype=np.uint8)


def _rate(name: str, benchmark) -> None:
    if benchmark.disabled or benchmark.stats is None:
        pytest.skip("benchmarks disabled: no statistics to compare")
    _results[name] = benchmark.stats.stats.min
    benchmark.extra_info["images_per_s"] = round(N_IMAGES / benchmark.stats.stats.min, 1)


@pytest.mark.benchmark(group="fedd-features")
def test_features_computed(benchmark, model, images) -> None:
    out = benchmark.pedantic(
        pooled_features,
        args=(model, images),
        kwargs={"t": T, "noise_seed": 0, "dim": 512, "device": CPU, "batch_size": 16},
        rounds=3,
        iterations=1,
        warmup_rounds=1,
    )
    assert out.shape == (6, N_IMAGES, 512)
    _rate("computed", benchmark)


@pytest.mark.benchmark(group="fedd-features")
def test_features_from_cache(benchmark, model, images) -> None:
    kwargs = {"t": T, "noise_seed": 0, "dim": 512, "device": CPU, "console": Console(quiet=True)}
    _, entry = cached_features(model, images, **kwargs)  # made once, outside the timing

    def read() -> np.ndarray:
        features, hit = cached_features(model, images, **kwargs)
        assert hit.hit
        return np.asarray(features[3])

    out = benchmark.pedantic(read, rounds=10, iterations=1, warmup_rounds=1)
    assert out.shape == (N_IMAGES, 512)
    _rate("cached", benchmark)


def test_the_cache_is_faster_than_computing() -> None:
    if set(_results) != {"computed", "cached"}:
        pytest.skip("needs both benchmarks of this module")
    assert _results["computed"] / _results["cached"] >= 5, _results
