"""Atomic file writes that survive a crash of the machine, not only of the process, and JSON
reading that names the file at fault.

Each write goes to a uniquely named temporary file in the target's folder, is flushed and
fsynced, renamed over the target, and the folder is fsynced so the rename itself is durable.
A reader therefore sees the old file or the new one, never a torn one.

A write that fails because the folder is read-only, not ours, or on a full disk becomes a
`StorageError` naming the file and what to do, not an OSError traceback; any other OSError is
left as it is. `exclusive_lock` is the OS lock one run folder is worked on under.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from dermbench.errors import DataError, DermbenchError

try:
    import fcntl
except ImportError:  # POSIX only: without it (Windows) exclusive_lock does not lock
    fcntl = None  # type: ignore[assignment]


class StorageError(DermbenchError):
    """A run file could not be written because of where it goes (permissions, a read-only file
    system, a full disk or quota); the message names the path and what to do."""


#: errno -> (what happened, what to do): the OSErrors a user fixes by writing elsewhere or freeing space
_ELSEWHERE = "choose an output folder you can write to (for runs: --out)"
_SPACE = (
    "free some space or choose another output folder, then rerun the same command "
    "(an unfinished run resumes from its last checkpoint)"
)
_STORAGE_ERRNOS = {
    errno.EACCES: ("permission denied", f"{_ELSEWHERE} or fix its permissions"),
    errno.EPERM: ("operation not permitted", f"{_ELSEWHERE} or fix its permissions"),
    errno.EROFS: ("the file system is read-only", _ELSEWHERE),
    errno.ENOSPC: ("no space left on the device", _SPACE),
    errno.EDQUOT: ("disk quota exceeded", _SPACE),
}


def storage_error(exc: OSError, path: Path | str) -> StorageError | None:
    """A StorageError naming `path` for a permission, read-only or full-disk `exc`; None for others."""
    known = _STORAGE_ERRNOS.get(exc.errno) if exc.errno is not None else None
    if known is None:
        return None
    what, todo = known
    return StorageError(f"cannot write {path}: {what}; {todo}")


@contextlib.contextmanager
def storage_errors(path: Path | str) -> Iterator[None]:
    """Turn a permission, read-only or full-disk OSError raised inside the block into a StorageError
    naming `path`; other OSErrors pass unchanged."""
    try:
        yield
    except OSError as exc:
        error = storage_error(exc, path)
        if error is None:
            raise
        raise error from exc


def make_dirs(folder: Path) -> None:
    """`folder` and its parents (mkdir -p), with a StorageError naming it when it cannot be made."""
    with storage_errors(folder):
        Path(folder).mkdir(parents=True, exist_ok=True)


def fsync_dir(folder: Path) -> None:
    """Make renames and creations inside `folder` durable (a no-op where the OS cannot)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


#: the suffix of write_atomic's temporary files (`.<name>.<random>.tmp`); one left behind
#: means a process died while writing
TMP_SUFFIX = ".tmp"


def _file_mode() -> int:
    """0666 less the process umask: the mode `open()` would give a new file (read once)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


#: the mode of files written atomically (mkstemp alone would make them owner-only)
FILE_MODE = _file_mode()


def write_atomic(
    path: Path, write: Callable[[BinaryIO], None], *, before_replace: Callable[[], None] | None = None
) -> None:
    """Call `write(fh)` on a temporary file beside `path`, then durably rename it to `path`.

    The temporary name is unique (mkstemp), so two processes writing the same file never share
    one; a failure removes it and leaves `path` as it was. Permission, read-only and full-disk
    failures are StorageErrors naming `path`. `before_replace()` runs once the new content is
    durable, just before the rename (the checkpoint writer keeps the previous file there).
    """
    path = Path(path)
    make_dirs(path.parent)
    with storage_errors(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        try:
            os.fchmod(fd, FILE_MODE)  # mkstemp makes 0600; a run's files are shared like any other
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            if before_replace is not None:
                before_replace()
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    fsync_dir(path.parent)


#: flock errnos that mean "this file system cannot lock", not "someone holds the lock"
_NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


@contextlib.contextmanager
def exclusive_lock(path: Path, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive OS lock (flock) on the file `path` for the block, waiting while another
    process holds it.

    The kernel drops a flock when its holder exits, even on SIGKILL, so a killed run leaves no
    stale lock, and the lock file itself is kept (deleting it would let a waiter and a newcomer
    lock two different files). The holder writes its pid into the file; `on_wait(pid)` is called
    once, with that pid as text ("unknown" if not yet written), before blocking. Where the OS or
    file system has no flock (Windows, some network mounts) the block runs unlocked.
    """
    path = Path(path)
    make_dirs(path.parent)
    with storage_errors(path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait(os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown")
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                if exc.errno not in _NO_LOCKING:
                    raise
        with storage_errors(path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically and durably."""
    write_atomic(path, lambda fh: fh.write(text.encode("utf-8")))


def to_json_value(value: Any) -> Any:
    """numpy scalars and arrays, and paths, as JSON values (NaN as null); a TypeError for anything
    else. The one conversion for every JSON file a run writes (records, configs, detector info)."""
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a JSON record")


def write_json(path: Path, data: Any) -> None:
    """`data` as indented JSON (NaN refused), written atomically and durably."""
    write_text(
        path, json.dumps(data, indent=2, sort_keys=False, default=to_json_value, allow_nan=False) + "\n"
    )


def read_json(path: Path) -> Any:
    """The JSON value in `path`; a DataError naming the file when it cannot be read or parsed."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read it as JSON ({exc})") from exc
