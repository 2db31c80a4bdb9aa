"""Image cache performance (pytest-benchmark; run with `pytest tests/perf`).

Each comparison measures the baseline and the cache in the same session, on the same files,
and asserts on the recorded benchmark statistics (min of the rounds: the least noisy):
- one training epoch read from the memory-mapped cache is >= 10x faster than decoding the
  same JPEGs with Pillow every epoch;
- building the cache by default uses one process per core, and is faster than with one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dermbench.data import cache
from dermbench.data.cache import load_images
from dermbench.data.images import decode_image

N_IMAGES, SOURCE_PX, SIZE, BATCH = 500, 256, 64, 64
_results: dict[str, float] = {}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> tuple[Path, list[str]]:
    """500 photo-like 256 px JPEGs (smooth gradients plus noise, so they compress like photos)."""
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SOURCE_PX, 0:SOURCE_PX].astype(np.float32) / SOURCE_PX
    names = []
    for i in range(N_IMAGES):
        base = rng.uniform(60, 200, 3).astype(np.float32)
        img = base + 50 * np.stack([xx, yy, xx * yy], -1) + rng.normal(0, 12, (SOURCE_PX, SOURCE_PX, 3))
        name = f"{i:04d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name, quality=90)
        names.append(name)
    return root, names


@pytest.fixture(scope="module")
def cached(jpegs, tmp_path_factory) -> np.ndarray:
    root, names = jpegs
    images, failures = load_images(root, names, size=SIZE, cache_dir=tmp_path_factory.mktemp("cache"))
    assert failures == {}
    return images


def _to_tensor(batch: np.ndarray) -> torch.Tensor:
    """What a training loop does with a batch: copy out of the (read-only) map, NHWC uint8 -> NCHW float."""
    return torch.from_numpy(np.array(batch)).permute(0, 3, 1, 2).float().div_(255)


def _epoch_decoding(root: Path, names: list[str]) -> float:
    total = 0.0
    for start in range(0, len(names), BATCH):
        batch = np.stack([decode_image(root / n, SIZE) for n in names[start : start + BATCH]])
        total += float(_to_tensor(batch).sum())
    return total


def _epoch_cached(images: np.ndarray) -> float:
    total = 0.0
    for start in range(0, len(images), BATCH):
        total += float(_to_tensor(images[start : start + BATCH]).sum())
    return total


def _record(name: str, benchmark) -> None:
    if benchmark.disabled or benchmark.stats is None:
        pytest.skip("benchmarks disabled: no statistics to compare")
    _results[name] = benchmark.stats.stats.min


def _compare(fast: str, slow: str) -> float:
    if slow not in _results or fast not in _results:
        pytest.skip(f"run {slow!r} and {fast!r} in the same session to compare them")
    return _results[slow] / _results[fast]


@pytest.mark.benchmark(group="epoch")
def test_epoch_decoding_jpegs(benchmark, jpegs, cached) -> None:
    root, names = jpegs
    total = benchmark.pedantic(_epoch_decoding, args=(root, names), rounds=3, iterations=1, warmup_rounds=1)
    assert total == pytest.approx(_epoch_cached(cached), rel=1e-6), "the cache holds the decoded pixels"
    _record("decode", benchmark)


@pytest.mark.benchmark(group="epoch")
def test_epoch_from_cache(benchmark, cached) -> None:
    benchmark.pedantic(_epoch_cached, args=(cached,), rounds=10, iterations=1, warmup_rounds=1)
    _record("cache", benchmark)
    speedup = _compare("cache", "decode")
    print(f"\ncache epoch is {speedup:.1f}x faster than decoding each epoch")
    assert speedup >= 10, f"cache epoch only {speedup:.1f}x faster than decoding"


def _fresh_build(root: Path, names: list[str], workers: int | None, folder: Path):
    def setup():
        shutil.rmtree(folder, ignore_errors=True)
        return (), {}

    def build():
        images, failures = load_images(root, names, size=SIZE, cache_dir=folder, workers=workers)
        assert failures == {} and images.shape == (len(names), SIZE, SIZE, 3)

    return setup, build


@pytest.mark.benchmark(group="build")
def test_build_one_worker(benchmark, jpegs, tmp_path) -> None:
    setup, build = _fresh_build(*jpegs, 1, tmp_path / "c")
    benchmark.pedantic(build, setup=setup, rounds=5, iterations=1)
    _record("build-1", benchmark)


@pytest.mark.benchmark(group="build")
def test_build_all_cores(benchmark, jpegs, tmp_path, monkeypatch) -> None:
    """The default build (workers=None) runs one process per core and beats a single worker."""
    cores = os.cpu_count() or 1
    pool_sizes: list[int] = []
    real = cache.ProcessPoolExecutor

    class Recording(real):
        def __init__(self, max_workers=None, **kwargs):
            pool_sizes.append(max_workers)
            super().__init__(max_workers=max_workers, **kwargs)

    monkeypatch.setattr(cache, "ProcessPoolExecutor", Recording)
    setup, build = _fresh_build(*jpegs, None, tmp_path / "c")
    benchmark.pedantic(build, setup=setup, rounds=5, iterations=1)
    assert pool_sizes and set(pool_sizes) == {cores} if cores > 1 else pool_sizes == []
    _record("build-all", benchmark)
    if cores == 1:
        pytest.skip("one core: nothing to parallelise")
    speedup = _compare("build-all", "build-1")
    print(f"\nbuild with {cores} workers is {speedup:.2f}x faster than with 1")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    assert speedup > 1.0, (
        f"building with {cores} workers was not faster than with 1 ({speedup:.2f}x; "
        f"load average {load:.1f}: other jobs on the machine take the cores this needs)"
    )
