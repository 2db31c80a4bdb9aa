"""Named protocol configs shipped with the package: `protocols/<name>.yaml`.

A protocol config is an ordinary config file (read like `--config`) that fixes a paper's
dataset, task, data options and test sets, e.g. the majority-to-minority scenarios
(docs/protocols.md). `dermbench run --protocol NAME` uses it; the method, profile, seed and
classifier stay the user's to choose unless the protocol is an ablation that fixes them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from dermbench.errors import unknown_name

SUFFIX = ".yaml"


def protocols_dir() -> Path:
    """The folder of packaged protocol configs."""
    return Path(str(resources.files("dermbench.config").joinpath("protocols")))


def protocol_names() -> list[str]:
    """Every packaged protocol's name, sorted."""
    folder = protocols_dir()
    return sorted(p.name[: -len(SUFFIX)] for p in folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []


def protocol_path(name: str) -> Path:
    """The config file of protocol `name`; an unknown name is an error naming the closest."""
    names = protocol_names()
    if name not in names:
        raise unknown_name("protocol", name, names)
    return protocols_dir() / f"{name}{SUFFIX}"
