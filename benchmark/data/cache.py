"""The decoded-image cache: every image is decoded and resized once, then memory-mapped.

`load_images(root, files, size=N)` returns a read-only (n, N, N, 3) uint8 array. The first
call decodes all files in parallel into `<cache>/<key>/images.npy`; later calls (the next
epoch, the next run, another method on the same data) only map that file.

The key is a SHA-256 over: the cache format version, the Pillow version, the resolved
dataset root, `size`, and the ordered file list with each file's byte size and mtime. A
changed list, order, size, or a touched/replaced file gives a new key (a new entry);
stale entries are never reused. Unreadable images are recorded as {row: "reason: file"}
in `failures.json` next to the array, so a cached call reports the same failures.

An entry is built in a hidden temporary directory and renamed into place only when
complete, so an interrupted build never leaves a half-written cache under the final name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import numbers
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from dermbench.data.images import ImageError, RootResolver, decode_image
from dermbench.errors import ConfigError, DataError, human_size

#: bump when decoding/resizing changes pixels, so old entries are not reused
CACHE_VERSION = 1
#: a build that runs longer than this many seconds shows a progress bar
PROGRESS_AFTER_S = 1.0
_IMAGES = "images.npy"
_META = "meta.json"
_TMP_PREFIX = ".tmp-"
#: how pool workers start: None is Python's default for the platform (fork on Linux up to 3.13,
#: which needs no `if __name__ == "__main__"` guard in user scripts). Workers get every setting
#: they need as arguments, so any start method gives the same pixels.
START_METHOD: str | None = None
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildInfo:
    """What one build did (for logs and tests): where, how many decoded, with how many workers."""

    path: Path
    decoded: int
    failures: int
    workers: int
    seconds: float


def cache_root(cache_dir: Path | None = None) -> Path:
    """Where cache entries live: `cache_dir`, else $DERMBENCH_CACHE, else ~/.cache/dermbench/images."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("DERMBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "dermbench" / "images"


def clear_cache(cache_dir: Path | None = None) -> int:
    """Delete every cache entry (and leftover temporary builds) under the cache root; returns bytes freed."""
    root = cache_root(cache_dir)
    freed = 0
    if not root.is_dir():
        return 0
    for entry in root.iterdir():
        if entry.is_dir() and ((entry / _META).exists() or entry.name.startswith(_TMP_PREFIX)):
            freed += sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
            shutil.rmtree(entry, ignore_errors=True)
    return freed


def default_workers() -> int:
    """Worker processes for a build: all cores."""
    return os.cpu_count() or 1


def load_images(
    root: Path | None,
    files: list[str],
    *,
    size: int,
    cache_dir: Path | None = None,
    workers: int | None = None,
) -> tuple[np.ndarray, dict[int, str]]:
    """Pixels of `files` (paths relative to `root`) as a read-only (n, size, size, 3) uint8 memmap.

    Returns the array and {row position: "reason: file"} for rows that could not be read
    (their pixels are zero). With `root=None` the paths are used as given (absolute or
    relative to the working directory) without a containment check.
    """
    if not _positive_int(size):
        raise ConfigError(f"image size must be a positive integer, got {size!r}")
    if workers is not None and not _positive_int(workers):
        raise ConfigError(f"cache workers must be a positive integer, got {workers!r}")
    size, workers = int(size), (int(workers) if workers is not None else None)
    files = [str(f) for f in files]
    if not files:
        return np.zeros((0, size, size, 3), dtype=np.uint8), {}
    base = cache_root(cache_dir)
    paths, early_failures, stats = _resolve_all(root, files)
    key = _cache_key(root, files, size, stats)
    entry = base / key
    cached = _open_entry(entry, len(files), size)
    if cached is not None:
        return cached
    try:
        info = _build(
            entry, files, paths, early_failures, size=size, workers=workers or default_workers(), root=root
        )
    except OSError as exc:
        raise DataError(
            f"cannot write the image cache under {base}: {exc}. Set DERMBENCH_CACHE to a writable folder"
        ) from exc
    log.info(
        "cached %d images at %d px in %.1f s with %d worker(s): %s (%d unreadable)",
        info.decoded,
        size,
        info.seconds,
        info.workers,
        info.path,
        info.failures,
    )
    cached = _open_entry(entry, len(files), size)
    if cached is None:
        raise DataError(f"image cache entry {entry} could not be read back after building it")
    return cached


def _positive_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 1


def _resolve_all(
    root: Path | None, files: Sequence[str]
) -> tuple[list[str | None], dict[int, str], list[object]]:
    """Resolve every file under root; refused paths become failures, stats feed the key."""
    paths: list[str | None] = []
    failures: dict[int, str] = {}
    stats: list[object] = []
    resolve = RootResolver(root) if root is not None else (lambda rel: Path(rel).expanduser().resolve())
    for pos, rel in enumerate(files):
        try:
            path = resolve(rel)
        except ImageError as exc:
            paths.append(None)
            failures[pos] = _failure_text(exc, rel)
            stats.append(["refused", exc.reason])
            continue
        paths.append(str(path))
        try:
            st = path.stat()
            # ctime and inode change when a file is replaced even if size and mtime are kept (cp -p, rsync -a)
            stats.append([st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
        except OSError:
            stats.append(None)  # missing now; appearing later changes the key
    return paths, failures, stats


def _cache_key(root: Path | None, files: Sequence[str], size: int, stats: Sequence[object]) -> str:
    """SHA-256 over everything that determines the cached pixels."""
    root_text = str(Path(root).expanduser().resolve()) if root is not None else None
    digest = hashlib.sha256()
    header = {
        "version": CACHE_VERSION,
        "pillow": PIL.__version__,
        "root": root_text,
        "size": size,
        "n": len(files),
        "max_image_pixels": Image.MAX_IMAGE_PIXELS,  # a raised limit must retry cached "bomb" failures
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for rel, st in zip(files, stats, strict=True):
        name = (
            rel if root is not None else str(Path(rel).expanduser().resolve())
        )  # relative to the cwd otherwise
        digest.update(json.dumps([name, st]).encode())
        digest.update(b"\n")
    return f"{digest.hexdigest()[:40]}-{size}px"


def _failure_text(exc: ImageError, rel: str) -> str:
    """The failure string callers get: short reason first (counted by it), then the file, then detail."""
    return f"{exc.reason}: {rel}" + (f" ({exc.detail})" if exc.detail else "")


def _open_entry(entry: Path, n: int, size: int) -> tuple[np.ndarray, dict[int, str]] | None:
    """A complete cache entry as (read-only memmap, failures), or None if absent or damaged."""
    images, meta = entry / _IMAGES, entry / _META
    if not (images.is_file() and meta.is_file()):
        if entry.exists():
            _discard(entry)  # a file removed by hand: the folder would block the rename of a rebuild
        return None
    try:
        info = json.loads(meta.read_text())
        array = np.load(images, mmap_mode="r", allow_pickle=False)
        failures = {int(k): str(v) for k, v in info["failures"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        array = None
    if array is None or array.shape != (n, size, size, 3) or array.dtype != np.uint8:
        _discard(entry)  # damaged (e.g. disk full, edited by hand): rebuild rather than trust it
        return None
    return array, failures


def _discard(path: Path) -> None:
    """Move a directory out of the way, then delete it (the move is atomic, the delete is not)."""
    aside = path.with_name(f"{_TMP_PREFIX}{path.name}-discard-{uuid.uuid4().hex[:8]}")
    try:
        path.rename(aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _build(
    entry: Path,
    files: Sequence[str],
    paths: Sequence[str | None],
    early_failures: dict[int, str],
    *,
    size: int,
    workers: int,
    root: Path | None,
) -> BuildInfo:
    """Decode every file into a temporary entry, in parallel, then rename it into place."""
    start = time.perf_counter()
    n = len(files)
    entry.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(entry)
    _check_space(entry.parent, n * size * size * 3)
    tmp = entry.with_name(f"{_TMP_PREFIX}{entry.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        array_path = tmp / _IMAGES
        out = np.lib.format.open_memmap(array_path, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
        del out  # workers reopen it r+; rows never written stay zero
        todo = [(pos, paths[pos], files[pos]) for pos in range(n) if paths[pos] is not None]
        failures = dict(early_failures)
        decoded, used = _decode_all(array_path, todo, size, workers, failures)
        meta = {
            "version": CACHE_VERSION,
            "pillow": PIL.__version__,
            "root": str(Path(root).expanduser().resolve()) if root is not None else None,
            "size": size,
            "n": n,
            "failures": {str(k): v for k, v in sorted(failures.items())},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / _META).write_text(json.dumps(meta, indent=1))
        _fsync_dir_files(tmp)
        try:
            tmp.rename(entry)
        except OSError:
            if not (entry / _IMAGES).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same entry first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BuildInfo(entry, decoded, len(failures), used, time.perf_counter() - start)


def _decode_all(
    array_path: Path, todo: list[tuple[int, str, str]], size: int, workers: int, failures: dict[int, str]
) -> tuple[int, int]:
    """Run the chunks in-process (workers == 1) or on a process pool; returns (decoded, workers used)."""
    if not todo:
        return 0, 0
    chunks = _chunks(todo, workers)
    used = min(workers, len(chunks))
    limit = Image.MAX_IMAGE_PIXELS
    decoded = 0
    started = time.perf_counter()
    with _LazyProgress(total=len(todo), started=started) as progress:
        if used == 1:
            for chunk in chunks:
                got, ok = _decode_chunk(str(array_path), chunk, size, limit)
                failures.update(got)
                decoded += ok
                progress.advance(len(chunk))
            return decoded, 1
        with ProcessPoolExecutor(max_workers=used, mp_context=_pool_context()) as pool:
            pending: dict[Future, int] = {
                pool.submit(_decode_chunk, str(array_path), chunk, size, limit): len(chunk)
                for chunk in chunks
            }
            try:
                while pending:
                    done, _ = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                    for fut in done:
                        got, ok = fut.result()
                        failures.update(got)
                        decoded += ok
                        progress.advance(pending.pop(fut))
                    progress.tick()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    return decoded, used


def _pool_context() -> multiprocessing.context.BaseContext:
    ctx = multiprocessing.get_context(START_METHOD)
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(["dermbench.data.cache"])  # workers start with the decoder imported
    return ctx


def _chunks(todo: list, workers: int) -> list[list]:
    """Split work into about 8 chunks per worker (load balance) of at most 256 images."""
    per = max(1, min(256, math.ceil(len(todo) / (workers * 8))))
    return [todo[i : i + per] for i in range(0, len(todo), per)]


def _decode_chunk(
    array_path: str, chunk: list[tuple[int, str, str]], size: int, max_pixels: int | None
) -> tuple[dict[int, str], int]:
    """Worker: decode a chunk of (row, path, name) straight into the shared .npy; returns failures."""
    Image.MAX_IMAGE_PIXELS = max_pixels  # the caller's limit, also under spawn/forkserver
    out = np.load(array_path, mmap_mode="r+")
    failures: dict[int, str] = {}
    ok = 0
    try:
        for pos, path, name in chunk:
            try:
                out[pos] = decode_image(Path(path), size)
                ok += 1
            except ImageError as exc:
                failures[pos] = _failure_text(exc, name)
    finally:  # no msync per chunk: the page cache shares the writes, _build fsyncs the file once
        del out
    return failures, ok


def _remove_stale_tmp(entry: Path) -> None:
    """Delete temporary builds of this entry left by processes that no longer exist."""
    for tmp in entry.parent.glob(f"{_TMP_PREFIX}{entry.name}-*"):
        pid_text = tmp.name[len(f"{_TMP_PREFIX}{entry.name}-") :].split("-")[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            shutil.rmtree(tmp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    """Whether a process exists (signal 0 probes without signalling; on Windows it would kill)."""
    if pid == os.getpid() or os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _check_space(folder: Path, needed: int) -> None:
    """Fail early with a clear message instead of a SIGBUS half-way through writing the memmap."""
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DataError(
            f"image cache needs {human_size(needed)} but {folder} has {human_size(free)} free; "
            "set DERMBENCH_CACHE to a larger disk or use a smaller image size"
        )


def _fsync_dir_files(folder: Path) -> None:
    """Make the entry's contents durable before it gets its final name."""
    for f in folder.iterdir():
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _LazyProgress:
    """A rich progress bar that appears only once a build has taken PROGRESS_AFTER_S seconds."""

    def __init__(self, total: int, started: float) -> None:
        self.total, self.started, self.completed = total, started, 0
        self._bar = None
        self._task = None

    def __enter__(self) -> _LazyProgress:
        return self

    def advance(self, n: int) -> None:
        self.completed += n
        self.tick()

    def tick(self) -> None:
        if self._bar is None and time.perf_counter() - self.started >= PROGRESS_AFTER_S:
            self._bar = Progress(
                TextColumn("caching images"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("cache", total=self.total)
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
