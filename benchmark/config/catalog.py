"""Named experiment configs shipped with the package: `experiments/<name>.yaml`.

An experiment config is an ordinary config file (read like `--config`) that fixes a paper's
dataset, task, data options and test sets, e.g. the majority-to-minority scenarios
(docs/experiments.md). `dermbench run --experiment NAME` uses it; the method, profile, seed and
classifier stay the user's to choose unless the experiment is an ablation that fixes them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from dermbench.errors import unknown_name

SUFFIX = ".yaml"


def experiments_dir() -> Path:
    """The folder of packaged experiment configs."""
    return Path(str(resources.files("dermbench.config").joinpath("experiments")))


def experiment_names() -> list[str]:
    """Every packaged experiment's name, sorted."""
    folder = experiments_dir()
    return sorted(p.name[: -len(SUFFIX)] for p in folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []


def experiment_path(name: str) -> Path:
    """The config file of experiment `name`; an unknown name is an error naming the closest."""
    names = experiment_names()
    if name not in names:
        raise unknown_name("experiment", name, names)
    return experiments_dir() / f"{name}{SUFFIX}"
