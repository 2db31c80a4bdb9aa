"""The run context handed to every hook: settings, device, seeded RNGs, directories, trainer."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from dermbench.errors import ConfigError


def choose_device(requested: str) -> torch.device:
    """cuda, then mps, then cpu for "auto"; an explicit device that is absent is an error."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but torch sees no CUDA GPU; use --device auto or cpu")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' was requested but this machine has no MPS backend")
    if requested not in ("cpu", "cuda", "mps") and not requested.startswith("cuda:"):
        raise ConfigError(f"device must be auto, cpu, cuda or mps, got {requested!r}")
    return torch.device(requested)


def seed_for(seed: int, name: str) -> int:
    """A stable 63-bit seed for the stream `name` of a run seeded with `seed`."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass
class RunContext:
    """What a hook may use. Plugins never see test labels: the harness owns evaluation."""

    config: dict
    device: torch.device
    work_dir: Path
    cache_dir: Path
    console: Console = field(default_factory=Console)
    schemes: tuple[str, ...] = ("tone3", "tone2", "fst")
    log: Any = None  # a callable(str) that appends to the run log
    trained: set[str] = field(default_factory=set)  # names given to train_model in this run

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    def hparams(self, method: str) -> dict:
        """The resolved settings of `method` (from its dermbench_method_defaults and overrides)."""
        return dict(self.config.get(method, {}))

    def rng(self, name: str) -> np.random.Generator:
        """A numpy generator seeded from the run seed and `name`, independent of other streams."""
        return np.random.default_rng(seed_for(self.seed, name))

    def torch_generator(self, name: str) -> torch.Generator:
        gen = torch.Generator()
        gen.manual_seed(seed_for(self.seed, name))
        return gen

    def say(self, message: str) -> None:
        self.console.print(message, highlight=False)
        if self.log is not None:
            from rich.text import Text

            self.log(Text.from_markup(message).plain)

    def create_model(self, num_classes: int, *, seed_name: str = "model-init"):
        """The configured backbone, initialised from a seed derived from the run seed."""
        from dermbench.models import create_backbone

        torch.manual_seed(seed_for(self.seed, seed_name))
        m = self.config["model"]
        return create_backbone(m["backbone"], num_classes=num_classes, pretrained=m["pretrained"], drop_rate=m["drop_rate"],
                               image_size=self.config["data"]["image_size"])

    def train_model(self, model, train, val, **kwargs):
        """The reusable ERM trainer (dermbench.train.train_model) bound to this run."""
        from dermbench.train import train_model

        return train_model(self, model, train, val, **kwargs)

    def predict_proba(self, model, split, **kwargs) -> np.ndarray:
        from dermbench.train import predict_proba

        return predict_proba(self, model, split, **kwargs)
