"""The memory-mapped image cache: build once, reuse, invalidate, record failures, survive interrupts."""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermbench.data import cache
from dermbench.data.cache import cache_root, clear_cache, load_images
from dermbench.data.images import decode_image
from dermbench.data.model import Dataset
from dermbench.errors import ConfigError, DataError

SIZE = 8


def _make_images(root: Path, n: int, *, start: int = 0) -> list[str]:
    """n small distinct PNGs under root/imgs; returns their relative names."""
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(start, start + n):
        a = np.full((12, 16, 3), (i * 37 % 256, i * 11 % 256, 200), np.uint8)
        a[:4, :4] = (255 - i % 256, 0, 0)
        name = f"imgs/{i:03d}.png"
        Image.fromarray(a).save(root / name)
        names.append(name)
    return names


def _entries(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.iterdir()) if cache_dir.exists() else []


@pytest.fixture
def count_builds(monkeypatch) -> list[int]:
    """Counts cache builds (each build decodes every file of the entry)."""
    calls: list[int] = []
    real = cache._build

    def spy(entry, files, *args, **kwargs):
        calls.append(len(files))
        return real(entry, files, *args, **kwargs)

    monkeypatch.setattr(cache, "_build", spy)
    return calls


def test_first_call_decodes_second_call_only_maps(tmp_path: Path, monkeypatch) -> None:
    files = _make_images(tmp_path / "data", 6)
    first, failures = load_images(tmp_path / "data", files, size=SIZE, cache_dir=tmp_path / "c", workers=1)
    assert failures == {}
    assert first.shape == (6, SIZE, SIZE, 3) and first.dtype == np.uint8
    for i, name in enumerate(files):
        np.testing.assert_array_equal(first[i], decode_image(tmp_path / "data" / name, SIZE))

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cached call must not decode")

    monkeypatch.setattr(cache, "decode_image", no_decoding)
    monkeypatch.setattr(cache, "_build", no_decoding)
    second, failures2 = load_images(tmp_path / "data", files, size=SIZE, cache_dir=tmp_path / "c", workers=1)
    assert isinstance(second, np.memmap) and not second.flags.writeable
    np.testing.assert_array_equal(np.asarray(second), np.asarray(first))
    assert failures2 == {}
    with pytest.raises(ValueError):
        second[0, 0, 0, 0] = 1


def test_changed_list_order_or_size_is_a_new_entry(tmp_path: Path, count_builds: list[int]) -> None:
    root = tmp_path / "data"
    files = _make_images(root, 5)
    kw = {"cache_dir": tmp_path / "c", "workers": 1}
    a, _ = load_images(root, files, size=SIZE, **kw)
    load_images(root, files, size=SIZE, **kw)
    assert count_builds == [5]
    b, _ = load_images(root, files[:3], size=SIZE, **kw)
    c, _ = load_images(root, files[::-1], size=SIZE, **kw)
    d, _ = load_images(root, files, size=SIZE * 2, **kw)
    assert count_builds == [5, 3, 5, 5]
    np.testing.assert_array_equal(np.asarray(b), np.asarray(a[:3]))
    np.testing.assert_array_equal(np.asarray(c), np.asarray(a[::-1]))
    assert d.shape == (5, SIZE * 2, SIZE * 2, 3)
    assert len(_entries(tmp_path / "c")) == 4


def test_touched_or_replaced_file_invalidates(tmp_path: Path, count_builds: list[int]) -> None:
    root = tmp_path / "data"
    files = _make_images(root, 4)
    kw = {"cache_dir": tmp_path / "c", "workers": 1}
    before, _ = load_images(root, files, size=SIZE, **kw)
    st = os.stat(root / files[2])
    os.utime(root / files[2], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    load_images(root, files, size=SIZE, **kw)
    assert count_builds == [4, 4]
    Image.new("RGB", (12, 16), (1, 2, 3)).save(root / files[1])  # new content, new size/mtime
    after, _ = load_images(root, files, size=SIZE, **kw)
    assert count_builds == [4, 4, 4]
    assert (np.asarray(after[1]) == np.array([1, 2, 3], np.uint8)).all()
    np.testing.assert_array_equal(np.asarray(after[0]), np.asarray(before[0]))


def test_same_files_under_another_root_are_another_entry(tmp_path: Path, count_builds: list[int]) -> None:
    files = _make_images(tmp_path / "one", 3)
    _make_images(tmp_path / "two", 3, start=50)
    a, _ = load_images(tmp_path / "one", files, size=SIZE, cache_dir=tmp_path / "c", workers=1)
    b, _ = load_images(tmp_path / "two", files, size=SIZE, cache_dir=tmp_path / "c", workers=1)
    assert count_builds == [3, 3]
    assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_failures_recorded_zeroed_and_returned_from_cache(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "data"
    files = _make_images(root, 3)
    (root / "imgs" / "text.jpg").write_text("not an image")
    good = (root / "imgs" / "000.png").read_bytes()
    (root / "imgs" / "cut.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "outside.png").write_bytes(good)
    listed = [
        files[0],
        "imgs/missing.png",
        "imgs/text.jpg",
        files[1],
        "imgs/cut.png",
        "../outside.png",
        files[2],
    ]
    images, failures = load_images(root, listed, size=SIZE, cache_dir=tmp_path / "c", workers=1)
    assert sorted(failures) == [1, 2, 4, 5]
    assert failures[1] == "missing file: imgs/missing.png"
    assert failures[2].startswith("not an image: imgs/text.jpg")
    assert failures[4].startswith("corrupt or truncated image: imgs/cut.png")
    assert failures[5].startswith("path escapes dataset root: ../outside.png")
    for row in failures:
        assert not np.asarray(images[row]).any(), "a failed row holds zero pixels"
    for row in (0, 3, 6):
        assert np.asarray(images[row]).any()

    monkeypatch.setattr(cache, "_build", lambda *a, **k: pytest.fail("cached call rebuilt"))
    images2, failures2 = load_images(root, listed, size=SIZE, cache_dir=tmp_path / "c", workers=1)
    assert failures2 == failures
    np.testing.assert_array_equal(np.asarray(images2), np.asarray(images))


def test_interrupted_build_leaves_no_cache_entry(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "data"
    files = _make_images(root, 6)
    real = cache.decode_image
    seen: list[Path] = []

    def interrupted(path, size=None):
        seen.append(path)
        if len(seen) == 4:
            raise KeyboardInterrupt
        return real(path, size)

    monkeypatch.setattr(cache, "decode_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_images(root, files, size=SIZE, cache_dir=tmp_path / "c", workers=1)
    assert _entries(tmp_path / "c") == [], "neither a final entry nor a temporary one may remain"

    monkeypatch.setattr(cache, "decode_image", real)
    images, failures = load_images(root, files, size=SIZE, cache_dir=tmp_path / "c", workers=1)
    assert failures == {} and np.asarray(images[5]).any()
    assert len(_entries(tmp_path / "c")) == 1


def test_crashed_build_leftovers_are_ignored_and_cleaned(tmp_path: Path) -> None:
    root = tmp_path / "data"
    files = _make_images(root, 3)
    images, _ = load_images(root, files, size=SIZE, cache_dir=tmp_path / "c", workers=1)
    (entry,) = _entries(tmp_path / "c")
    clear_cache(tmp_path / "c")
    # a build killed with SIGKILL leaves its temporary directory, named with a pid that is gone
    stale = tmp_path / "c" / f".tmp-{entry.name}-999999999-deadbeef"
    stale.mkdir(parents=True)
    (stale / "images.npy").write_bytes(b"half")
    again, _ = load_images(root, files, size=SIZE, cache_dir=tmp_path / "c", workers=1)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(images))
    assert _entries(tmp_path / "c") == [entry]


def test_damaged_entry_is_rebuilt(tmp_path: Path, count_builds: list[int]) -> None:
    root = tmp_path / "data"
    files = _make_images(root, 3)
    good, _ = load_images(root, files, size=SIZE, cache_dir=tmp_path / "c", workers=1)
    good = np.array(good)
    (entry,) = _entries(tmp_path / "c")
    data = (entry / "images.npy").read_bytes()
    (entry / "images.npy").write_bytes(data[: len(data) // 2])
    again, _ = load_images(root, files, size=SIZE, cache_dir=tmp_path / "c", workers=1)
    assert count_builds == [3, 3]
    np.testing.assert_array_equal(np.asarray(again), good)
    (entry / "images.npy").unlink()
    again, _ = load_images(root, files, size=SIZE, cache_dir=tmp_path / "c", workers=1)
    assert count_builds == [3, 3, 3]
    np.testing.assert_array_equal(np.asarray(again), good)
    (entry / "meta.json").write_text("{not json")
    again, failures = load_images(root, files, size=SIZE, cache_dir=tmp_path / "c", workers=1)
    assert count_builds == [3, 3, 3, 3] and failures == {}
    assert _entries(tmp_path / "c") == [entry]


def test_multi_worker_build_matches_single(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "data"
    files = _make_images(root, 24)
    files.insert(5, "imgs/missing.png")
    pools: list[int] = []
    real_pool = cache.ProcessPoolExecutor

    class CountingPool(real_pool):
        def __init__(self, max_workers=None, **kwargs):
            pools.append(max_workers)
            super().__init__(max_workers=max_workers, **kwargs)

    monkeypatch.setattr(cache, "ProcessPoolExecutor", CountingPool)
    one, f1 = load_images(root, files, size=SIZE, cache_dir=tmp_path / "c1", workers=1)
    assert pools == [], "workers=1 decodes in-process"
    two, f2 = load_images(root, files, size=SIZE, cache_dir=tmp_path / "c2", workers=2)
    assert pools == [2]
    np.testing.assert_array_equal(np.asarray(one), np.asarray(two))
    assert f1 == f2 == {5: "missing file: imgs/missing.png"}


def test_workers_default_to_all_cores(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "data"
    files = _make_images(root, 16)
    monkeypatch.setattr(cache.os, "cpu_count", lambda: 3)
    pools: list[int] = []
    real_pool = cache.ProcessPoolExecutor

    class CountingPool(real_pool):
        def __init__(self, max_workers=None, **kwargs):
            pools.append(max_workers)
            super().__init__(max_workers=max_workers, **kwargs)

    monkeypatch.setattr(cache, "ProcessPoolExecutor", CountingPool)
    load_images(root, files, size=SIZE, cache_dir=tmp_path / "c")
    assert pools == [3]


@pytest.mark.parametrize("start_method", [None, "spawn"])  # platform default; macOS/Windows default
def test_decompression_limit_reaches_the_workers(tmp_path: Path, monkeypatch, start_method) -> None:
    root = tmp_path / "data"
    files = _make_images(root, 4)  # 12 x 16 = 192 pixels each
    monkeypatch.setattr(cache, "START_METHOD", start_method)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # a spawned worker sees it only if passed along
    _, failures = load_images(root, files, size=SIZE, cache_dir=tmp_path / "c", workers=2)
    assert sorted(failures) == [0, 1, 2, 3]
    assert all(
        f.startswith("decompression bomb: imgs/") and "MAX_IMAGE_PIXELS=50" in f for f in failures.values()
    )


def test_cache_location(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "explicit") == tmp_path / "explicit"
    monkeypatch.delenv("DERMBENCH_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "dermbench" / "images"
    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "env"))
    files = _make_images(tmp_path / "data", 2)
    load_images(tmp_path / "data", files, size=SIZE, workers=1)
    (entry,) = _entries(tmp_path / "env")
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["root"] == str((tmp_path / "data").resolve()) and meta["size"] == SIZE and meta["n"] == 2
    assert clear_cache() > 0
    assert _entries(tmp_path / "env") == []


def test_root_none_uses_paths_as_given(tmp_path: Path) -> None:
    files = _make_images(tmp_path / "data", 2)
    absolute = [str(tmp_path / "data" / f) for f in files]
    images, failures = load_images(None, absolute, size=SIZE, cache_dir=tmp_path / "c", workers=1)
    assert failures == {} and images.shape == (2, SIZE, SIZE, 3)


def test_empty_list_and_bad_arguments(tmp_path: Path) -> None:
    images, failures = load_images(tmp_path, [], size=SIZE, cache_dir=tmp_path / "c")
    assert images.shape == (0, SIZE, SIZE, 3) and failures == {}
    with pytest.raises(ConfigError, match="size"):
        load_images(tmp_path, ["a.png"], size=0, cache_dir=tmp_path / "c")
    with pytest.raises(ConfigError, match="workers"):
        load_images(tmp_path, ["a.png"], size=SIZE, cache_dir=tmp_path / "c", workers=0)


class _TinyDataset(Dataset):
    """A dataset over a folder of PNGs, to check that Dataset.load understands the failures."""

    name = "tiny"

    def __init__(self, root: Path, files: list[str], **options) -> None:
        super().__init__(root, **options)
        self.files = files

    def table(self, task: str) -> pd.DataFrame:
        n = len(self.files)
        return pd.DataFrame(
            {
                "sample_id": [f"s{i}" for i in range(n)],
                "image": self.files,
                "label": [i % 2 for i in range(n)],
                "fst": [1 + i % 6 for i in range(n)],
                "tone_source": "annotated",
                "domain": "clinical",
                "split": "train",
            }
        )

    def classes(self, task: str) -> tuple[str, ...]:
        return ("benign", "malignant")


def test_dataset_load_stops_or_skips_on_cache_failures(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "c"))
    files = _make_images(tmp_path / "data", 4)
    files[2] = "imgs/gone.png"
    with pytest.raises(DataError, match="gone.png"):
        _TinyDataset(tmp_path / "data", files).load(task="malignant", split="train", image_size=SIZE)
    split = _TinyDataset(tmp_path / "data", files, on_error="skip").load(
        task="malignant", split="train", image_size=SIZE
    )
    assert len(split) == 3 and "imgs/gone.png" not in split.table["image"].tolist()
    assert split.meta["excluded"] == {"unreadable image: missing file": 1}


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="patching workers needs fork"
)
def test_crashed_worker_fails_the_build_and_leaves_no_entry(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "data"
    files = _make_images(root, 8)
    monkeypatch.setattr(cache, "START_METHOD", "fork")  # so the workers inherit the patch below

    def die(path, size=None):
        os._exit(3)  # a worker killed mid-build (out of memory, segfault in a codec)

    monkeypatch.setattr(cache, "decode_image", die)
    with pytest.raises(BrokenProcessPool):
        load_images(root, files, size=SIZE, cache_dir=tmp_path / "c", workers=2)
    assert _entries(tmp_path / "c") == []


def test_numpy_integer_size_and_unwritable_cache(tmp_path: Path) -> None:
    files = _make_images(tmp_path / "data", 2)
    images, _ = load_images(
        tmp_path / "data", files, size=np.int64(SIZE), cache_dir=tmp_path / "c", workers=1
    )
    assert images.shape == (2, SIZE, SIZE, 3)
    (tmp_path / "file").write_text("a file where the cache folder should be")
    with pytest.raises(DataError, match="cannot write the image cache.*DERMBENCH_CACHE"):
        load_images(tmp_path / "data", files, size=SIZE, cache_dir=tmp_path / "file" / "c", workers=1)
