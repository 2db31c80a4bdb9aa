"""Atomic file writes that survive a crash of the machine, not only of the process, and JSON
reading that names the file at fault.

Each write goes to a uniquely named temporary file in the target's folder, is flushed and
fsynced, renamed over the target, and the folder is fsynced so the rename itself is durable.
A reader therefore sees the old file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from dermbench.errors import DataError


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


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(fh)` on a temporary file beside `path`, then durably rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically and durably."""
    write_atomic(path, lambda fh: fh.write(text.encode("utf-8")))


def _json_default(value: Any):
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
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default, allow_nan=False) + "\n")


def read_json(path: Path) -> Any:
    """The JSON value in `path`; a DataError naming the file when it cannot be read or parsed."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read it as JSON ({exc})") from exc
