"""Data access for methods: `ctx.load_split` at other sizes and with masks, and pooling splits
without copying memory-mapped pixels (`Split.concat` -> `ConcatArray`)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import dermbench.datasets.synthderm as synthderm
import dermbench.datasets.synthderm_params as synthderm_params
from dermbench.context import RunContext
from dermbench.data import cache
from dermbench.data.lazy import ConcatArray
from dermbench.data.model import Split
from dermbench.data.pool import DatasetPool, resize_masks
from dermbench.errors import DataError
from dermbench.runner import resolve_config
from dermbench.tone.ita import ita_of_split

SYNTH = "data.options={n_train: 40, n_val: 20, n_test: 20, n_test_ddi: 20, n_test_dermoscopic: 20}"


def make_ctx(tmp_path: Path, *sets: str) -> RunContext:
    cfg = resolve_config(
        sets=["data.image_size=16", *sets], flags={"out": str(tmp_path / "runs"), "device": "cpu"}
    )
    return RunContext(
        config=cfg,
        device=torch.device("cpu"),
        work_dir=tmp_path / "work",
        cache_dir=tmp_path / "work",
        datasets=DatasetPool(cfg, ()),
    )


@pytest.fixture
def count_renders(monkeypatch) -> list[tuple[int, int]]:
    """(images, size) of every SynthDerm render (SynthDerm's "decoding")."""
    calls: list[tuple[int, int]] = []
    real = synthderm.render

    def spy(scenes, *, image_size):
        calls.append((len(scenes), image_size))
        return real(scenes, image_size=image_size)

    monkeypatch.setattr(synthderm, "render", spy)
    return calls


def test_synthderm_at_two_sizes_with_masks_renders_each_size_once(tmp_path, count_renders):
    ctx = make_ctx(tmp_path, SYNTH)
    small = ctx.load_split("synthderm", "train", image_size=16, with_masks=True)
    large = ctx.load_split("synthderm", "train", image_size=48, with_masks=True)
    assert small.images.shape == (40, 16, 16, 3) and large.images.shape == (40, 48, 48, 3)
    assert small.masks.shape == (40, 16, 16) and large.masks.shape == (40, 48, 48)
    assert small.masks.dtype == np.uint8 and set(np.unique(large.masks)) <= set(
        range(len(synthderm_params.MASK_CLASSES))
    )
    assert small.meta["mask_classes"] == synthderm_params.MASK_CLASSES
    assert small.table["sample_id"].tolist() == large.table["sample_id"].tolist()
    # the masks belong to these images: lesion pixels are darker than skin pixels in every image
    for split in (small, large):
        for img, mask in zip(split.images[:10], split.masks[:10], strict=True):
            lum = img.astype(float).mean(axis=2)
            assert lum[mask == synthderm_params.LESION].mean() < lum[mask == synthderm_params.SKIN].mean()
    assert count_renders == [(40, 16), (40, 48)]
    again = ctx.load_split("synthderm", "train", image_size=48, with_masks=True)
    assert count_renders == [(40, 16), (40, 48)]  # a hit: nothing rendered again
    assert np.array_equal(again.images, large.images) and np.array_equal(again.masks, large.masks)
    # the run's own size is the same cache entry as the classifier's split
    ctx.datasets.load("synthderm", "train")
    assert count_renders == [(40, 16), (40, 48)]


def test_file_dataset_two_sizes_are_two_cache_entries_and_a_repeat_only_maps(tmp_path, make_ddi, monkeypatch):
    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "cache"))
    builds: list[int] = []
    real = cache._build

    def spy(entry, files, *args, **kwargs):
        builds.append(kwargs["size"])
        return real(entry, files, *args, **kwargs)

    monkeypatch.setattr(cache, "_build", spy)
    tree = make_ddi()
    ctx = make_ctx(tmp_path, f"data.root={tree.root.parent}")
    a = ctx.load_split("ddi", "test", image_size=8)
    b = ctx.load_split("ddi", "test", image_size=24)
    assert a.images.shape == (12, 8, 8, 3) and b.images.shape == (12, 24, 24, 3)
    assert builds == [8, 24]
    again = ctx.load_split("ddi", "test", image_size=24)
    assert builds == [8, 24]  # mapped, not decoded
    assert isinstance(again.images, np.memmap) and np.array_equal(again.images, b.images)
    with pytest.raises(DataError, match=r"dataset 'ddi' has no lesion masks.*split 'test'"):
        ctx.load_split("ddi", "test", image_size=24, with_masks=True)
    with pytest.raises(DataError, match="no rows in split 'train'"):
        ctx.load_split("ddi", "train", image_size=24)


def test_masks_at_another_size_are_resized_by_nearest_neighbour():
    masks = np.zeros((2, 4, 4), np.uint8)
    masks[0, :2, :2], masks[1, 2:, 2:] = 3, 4
    big = resize_masks(masks, 8)
    assert big.shape == (2, 8, 8) and set(np.unique(big)) == {0, 3, 4}  # ids never blend
    assert (big[0, :4, :4] == 3).all() and (big[0, 4:, :] == 0).all() and (big[1, 4:, 4:] == 4).all()
    assert np.array_equal(resize_masks(big, 4), masks)


def test_split_refuses_masks_that_do_not_match_the_images():
    table = pd.DataFrame({"label": [0, 1]})
    with pytest.raises(DataError, match=r"masks have shape \(2, 4, 4\), expected \(2, 8, 8\)"):
        Split(
            "x",
            table,
            np.zeros((2, 8, 8, 3), np.uint8),
            ("benign", "malignant"),
            masks=np.zeros((2, 4, 4), np.uint8),
        )


# ----- pooling without copying ----------------------------------------------------------------


def memmapped_split(folder: Path, name: str, n: int, size: int, seed: int) -> Split:
    """A split whose images and masks are .npy files opened read-only, like the image cache's."""
    rng = np.random.default_rng(seed)
    for what, shape in (("images", (n, size, size, 3)), ("masks", (n, size, size))):
        out = np.lib.format.open_memmap(folder / f"{name}-{what}.npy", mode="w+", dtype=np.uint8, shape=shape)
        out[:] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        out.flush()
        del out
    table = pd.DataFrame(
        {
            "sample_id": [f"{name}-{i}" for i in range(n)],
            "label": np.arange(n) % 2,
            "fst": np.arange(n) % 6 + 1,
        }
    )
    return Split(
        name,
        table,
        np.load(folder / f"{name}-images.npy", mmap_mode="r"),
        ("benign", "malignant"),
        masks=np.load(folder / f"{name}-masks.npy", mmap_mode="r"),
        meta={"mask_classes": ("lesion", "skin")},
    )


def test_concat_of_memory_mapped_splits_allocates_almost_nothing_and_indexes_like_numpy(tmp_path):
    real = memmapped_split(tmp_path, "real", 300, 64, 0)
    synthetic = memmapped_split(tmp_path, "synthetic", 200, 64, 1)
    parts_bytes = sum(s.images.nbytes + s.masks.nbytes for s in (real, synthetic))
    assert parts_bytes > 8e6
    tracemalloc.start()
    pooled = Split.concat("train+augment", [real, synthetic])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"concat of {parts_bytes / 1e6:.1f} MB of memory-mapped parts: tracemalloc peak {peak / 1e3:.1f} kB "
        f"({100 * peak / parts_bytes:.3f} %)"
    )
    assert peak < 0.05 * parts_bytes
    assert isinstance(pooled.images, ConcatArray) and isinstance(pooled.masks, ConcatArray)
    assert all(isinstance(p, np.memmap) for p in pooled.images.parts)
    assert len(pooled) == 500 and pooled.images.shape == (500, 64, 64, 3) and pooled.images.ndim == 4
    assert pooled.images.dtype == np.uint8 and pooled.masks.shape == (500, 64, 64)

    ref_images = np.concatenate([np.asarray(real.images), np.asarray(synthetic.images)])
    ref_masks = np.concatenate([np.asarray(real.masks), np.asarray(synthetic.masks)])
    rng = np.random.default_rng(3)
    keys = [
        0,
        299,
        300,
        -1,
        -500,
        slice(None),
        slice(250, 350),
        slice(10, 20),
        slice(320, 330),
        slice(None, None, 7),
        slice(450, 100, -3),
        slice(600, 700),
        rng.integers(0, 500, 64),
        rng.integers(-500, 0, 5),
        np.array([], dtype=np.int64),
        [499, 0, 300, 299],
        rng.random(500) < 0.3,
        (slice(290, 310), 5),
        (np.array([1, 400]), slice(None), 3),
    ]
    for key in keys:
        assert np.array_equal(pooled.images[key], ref_images[key]), key
        if not isinstance(key, tuple) or len(key) < 3:
            assert np.array_equal(pooled.masks[key], ref_masks[key]), key
    assert np.array_equal(np.asarray(pooled.images), ref_images)
    for bad in (500, -501, np.array([0, 500]), np.ones(499, bool)):
        with pytest.raises(IndexError):
            pooled.images[bad]

    # what the trainer, Split.subset and tone estimation do with it
    order = rng.permutation(500)[:32]
    assert np.array_equal(np.array(pooled.images[order]), ref_images[order])
    picked = pooled.subset(np.arange(500) % 3 == 0)
    assert len(picked) == 167 and np.array_equal(picked.images, ref_images[::3])
    assert (
        np.array_equal(picked.masks, ref_masks[::3]) and picked.table["sample_id"].iloc[-1] == "synthetic-198"
    )
    eager = Split("eager", pooled.table, ref_images, pooled.classes, masks=ref_masks, meta=pooled.meta)
    rows = np.array([5, 310, 480])
    assert np.array_equal(ita_of_split(pooled, rows), ita_of_split(eager, rows), equal_nan=True)
    # pooling a pooled split keeps one flat list of parts
    again = Split.concat("more", [pooled, real])
    assert len(again.images.parts) == 3 and np.array_equal(again.images[799], np.asarray(real.images[299]))


def test_concat_checks_classes_and_image_size_and_drops_partial_masks(tmp_path):
    a = memmapped_split(tmp_path, "a", 4, 8, 0)
    b = memmapped_split(tmp_path, "b", 3, 16, 1)
    with pytest.raises(DataError, match="image shape"):
        Split.concat("x", [a, b])
    c = Split("c", a.table, np.zeros((4, 8, 8, 3), np.uint8), ("benign", "malignant"))
    assert Split.concat("x", [a, c]).masks is None
    with pytest.raises(DataError, match="classes"):
        Split.concat("x", [a, Split("d", a.table, np.zeros((4, 8, 8, 3), np.uint8), ("x", "y"))])
