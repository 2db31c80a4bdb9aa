"""Run directories: every file is written atomically and the `done` marker comes last, so a
directory either holds a finished run or one that the same command resumes."""

from __future__ import annotations

import json
import platform
import shutil
import sys
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import torch

from dermbench import __version__
from dermbench.files import write_text

DONE = "done"


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
            env[pkg] = version(pkg)
        except Exception:
            env[pkg] = None
    return env
