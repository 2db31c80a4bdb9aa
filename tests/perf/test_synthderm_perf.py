"""SynthDerm generation speed (pytest-benchmark; run with `pytest tests/perf`).

Generating 64x64 images (pixels, masks and the latent table) on ONE core must reach
>= 2,000 images/s, asserted on the benchmark statistics (min of the rounds: the least
noisy). The baseline, measured in the same session on the same images, is what a
file-backed dataset pays: decoding the same number of 64x64 PNG files with Pillow
(`dermbench.data.images.decode_image`, the project's loader). One core: numpy's elementwise
work is single-threaded, and threadpoolctl limits the BLAS pool used by the noise
upsampling to one thread.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from threadpoolctl import threadpool_limits

from dermbench.data.images import decode_image
from dermbench.datasets.synthderm_render import generate

N_IMAGES, SIZE = 1000, 64
TARGET_PER_S = 2000
_rates: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def one_core():
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def pngs(tmp_path_factory) -> list[Path]:
    """The same number of 64x64 images, stored as PNG files (SynthDerm's own pixels)."""
    root = tmp_path_factory.mktemp("pngs")
    images = generate(N_IMAGES, seed=1, image_size=SIZE).images
    paths = []
    for i, img in enumerate(images):
        path = root / f"{i:05d}.png"
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths


def _record(name: str, benchmark) -> float:
    if benchmark.disabled or benchmark.stats is None:
        pytest.skip("benchmarks disabled: no statistics to compare")
    rate = N_IMAGES / benchmark.stats.stats.min
    benchmark.extra_info["images_per_s"] = round(rate)
    _rates[name] = rate
    return rate


@pytest.mark.benchmark(group="synthderm-64px")
def test_decode_png_baseline(benchmark, pngs) -> None:
    def decode() -> np.ndarray:
        return np.stack([decode_image(p, SIZE) for p in pngs])

    images = benchmark.pedantic(decode, rounds=3, iterations=1, warmup_rounds=1)
    assert images.shape == (N_IMAGES, SIZE, SIZE, 3)
    rate = _record("png", benchmark)
    print(f"\ndecoding {N_IMAGES} 64x64 PNGs: {rate:,.0f} images/s")


@pytest.mark.benchmark(group="synthderm-64px")
def test_generate_one_core(benchmark) -> None:
    batch = benchmark.pedantic(
        generate,
        args=(N_IMAGES,),
        kwargs={"seed": 2, "image_size": SIZE},
        rounds=5,
        iterations=1,
        warmup_rounds=1,
    )
    assert batch.images.shape == (N_IMAGES, SIZE, SIZE, 3) and batch.masks.shape == (N_IMAGES, SIZE, SIZE)
    rate = _record("generate", benchmark)
    vs = f" ({rate / _rates['png']:.2f}x the PNG decoding baseline)" if "png" in _rates else ""
    print(f"\ngenerating 64x64 images on one core: {rate:,.0f} images/s{vs}")
    assert rate >= TARGET_PER_S, (
        f"SynthDerm generated {rate:,.0f} images/s on one core; target {TARGET_PER_S:,}"
    )


@pytest.mark.benchmark(group="synthderm-64px")
def test_generate_dermoscopic_one_core(benchmark) -> None:
    benchmark.pedantic(
        generate,
        args=(N_IMAGES,),
        kwargs={"seed": 3, "image_size": SIZE, "dermoscopic": True},
        rounds=5,
        iterations=1,
        warmup_rounds=1,
    )
    rate = _record("dermoscopic", benchmark)
    print(f"\ngenerating dermoscopic 64x64 images on one core: {rate:,.0f} images/s")
    assert rate >= TARGET_PER_S, (
        f"SynthDerm (dermoscopic) generated {rate:,.0f} images/s; target {TARGET_PER_S:,}"
    )
