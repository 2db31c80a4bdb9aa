"""Run directories: every file is written atomically and the `done` marker comes last, so a
directory either holds a finished run or one that the same command resumes."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

DONE = "done"


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(value: Any):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a run record")


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default, allow_nan=False) + "\n")


class RunDir:
    """One run's directory, `<out>/<run_id>/`."""

    def __init__(self, out: Path, run_id: str) -> None:
        self.run_id = run_id
        self.path = Path(out) / run_id

    @property
    def done(self) -> bool:
        return (self.path / DONE).exists()

    def file(self, name: str) -> Path:
        return self.path / name

    def reset(self) -> None:
        """Forget everything (for --force)."""
        if self.path.exists():
            shutil.rmtree(self.path)

    def append_log(self, message: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        with open(self.path / "log.txt", "a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {message}\n")

    def mark_done(self) -> None:
        """Written last: a run without it is unfinished; drop the resume checkpoints."""
        shutil.rmtree(self.path / "work" / "checkpoints", ignore_errors=True)
        write_text(self.path / DONE, datetime.now(timezone.utc).isoformat() + "\n")

    def metrics(self) -> dict:
        return json.loads((self.path / "metrics.json").read_text(encoding="utf-8"))


def environment() -> dict:
    """What a reader needs to reproduce the run."""
    import torch

    from dermbench import __version__

    env = {
        "dermbench": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
    }
    for pkg in ("timm", "numpy", "pandas", "scikit-learn", "fairlearn", "diffusers", "peft"):
        try:
            from importlib.metadata import version

            env[pkg] = version(pkg)
        except Exception:
            env[pkg] = None
    return env
