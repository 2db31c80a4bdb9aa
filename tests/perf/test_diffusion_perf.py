"""Generation speed of the tiny diffusion pipeline (pytest-benchmark; `pytest tests/perf --benchmark-only`).

The tiny model at 64 px (the SynthDerm default: 16 x 16 latents), DDIM, 5 steps, classifier-free
guidance, 16 images, CPU, one torch thread (on a shared machine the thread pool's spinning
measures the neighbours, not the code). Each comparison measures both sides in the same session
and asserts on the minimum of the rounds:
- images per second batched (`batch_size` 16) against one image at a time: batching must be
  faster (the same images: each has its own seeded generator, so the batch does not change them);
- a generation cache hit (`cached_generation` finding the verified entry: the checksums of the
  images it reads) against making the same generation again: a hit must be at least 10x faster.
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from rich.console import Console

from dermbench.diffusion.components import tiny_components
from dermbench.diffusion.generation import cached_generation, generate_into
from dermbench.diffusion.store import diffusion_cache_root

SIZE, N, STEPS, BATCH = 64, 16, 5, 16
CPU = torch.device("cpu")
QUIET = Console(quiet=True)
_results: dict[str, float] = {}
_images: dict[str, np.ndarray] = {}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    c = tiny_components(SIZE, seed=0, tokenizer_dir=tmp_path_factory.mktemp("tiny") / "tokenizer")
    c.freeze()
    return c


def _requests(n: int = N) -> pd.DataFrame:
    tones, words = "ABC", ("lighter", "brown", "darker")
    return pd.DataFrame(
        {
            "sample_id": [f"p-{i}" for i in range(n)],
            "label": [i % 2 for i in range(n)],
            "class_name": [("benign", "malignant")[i % 2] for i in range(n)],
            "fst": "",
            "tone3": [tones[i % 3] for i in range(n)],
            "prompt": [
                f"{('benign', 'malignant')[i % 2]} skin disease on {words[i % 3]} skin tone" for i in range(n)
            ],
            "seed": list(range(1000, 1000 + n)),
            "source_id": "",
            "domain": "clinical",
        }
    )


def _settings(batch: int) -> dict:
    return {"sampler": "ddim", "steps": STEPS, "guidance": 3.0, "batch_size": batch, "strength": None}


def _record(name: str, benchmark) -> None:
    if benchmark.disabled or benchmark.stats is None:
        pytest.skip("benchmarks disabled: no statistics to compare")
    _results[name] = benchmark.stats.stats.min


def _compare(fast: str, slow: str) -> float:
    if slow not in _results or fast not in _results:
        pytest.skip(f"run {slow!r} and {fast!r} in the same session to compare them")
    return _results[slow] / _results[fast]


def _sample(c, batch: int) -> np.ndarray:
    out = np.zeros((N, SIZE, SIZE, 3), np.uint8)
    generate_into(out, c, _requests(), settings=_settings(batch), device=CPU, console=QUIET, label="perf")
    return out


@pytest.mark.benchmark(group="generation")
def test_generation_one_image_at_a_time(benchmark, tiny) -> None:
    _images["one"] = benchmark.pedantic(_sample, args=(tiny, 1), rounds=3, iterations=1, warmup_rounds=1)
    _record("one", benchmark)
    benchmark.extra_info["images_per_s"] = N / _results["one"]


@pytest.mark.benchmark(group="generation")
def test_generation_batched(benchmark, tiny) -> None:
    out = benchmark.pedantic(_sample, args=(tiny, BATCH), rounds=3, iterations=1, warmup_rounds=1)
    _record("batched", benchmark)
    benchmark.extra_info["images_per_s"] = N / _results["batched"]
    one = _images.get("one")
    if one is not None:  # the same images either way: a seed, not a batch, decides an image
        assert np.abs(one.astype(int) - out.astype(int)).max() <= 1
    speedup = _compare("batched", "one")
    print(
        f"\ntiny pipeline: {N / _results['batched']:.1f} images/s in batches of {BATCH}, "
        f"{N / _results['one']:.1f} one at a time ({speedup:.2f}x)"
    )
    assert speedup > 1.2, f"batches of {BATCH} only {speedup:.2f}x faster than one image at a time"


def _generation(c):
    return cached_generation(
        c,
        _requests(),
        weights="perf-tiny",
        settings=_settings(BATCH),
        image_size=SIZE,
        device=CPU,
        console=QUIET,
        say=lambda _m: None,
        label="perf",
    )


@pytest.mark.benchmark(group="cache")
def test_generation_made_again(benchmark, tiny) -> None:
    def setup():
        shutil.rmtree(diffusion_cache_root() / "generations", ignore_errors=True)
        return (tiny,), {}

    entry = benchmark.pedantic(_generation, setup=setup, rounds=3, iterations=1)
    assert not entry.hit
    _record("regenerate", benchmark)


@pytest.mark.benchmark(group="cache")
def test_generation_cache_hit(benchmark, tiny) -> None:
    made = _generation(tiny)
    assert not made.hit
    entry = benchmark.pedantic(_generation, args=(tiny,), rounds=10, iterations=1, warmup_rounds=1)
    assert entry.hit and entry.key == made.key
    _record("hit", benchmark)
    speedup = _compare("hit", "regenerate")
    print(f"\ngeneration cache hit is {speedup:.0f}x faster than making the {N} images again")
    assert speedup >= 10, f"a cache hit was only {speedup:.1f}x faster than generating again"
