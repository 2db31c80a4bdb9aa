"""The run context handed to every hook: settings, device, seeded RNGs, directories, the
reusable trainer and data access. What a plugin author needs besides `hookspecs`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.text import Text

from dermbench.data.model import Split
from dermbench.data.pool import DatasetPool
from dermbench.errors import ConfigError, DermbenchError
from dermbench.seeds import seed_for
from dermbench.train.models import create_backbone
from dermbench.train.pretrained import pretrained_erm
from dermbench.train.trainer import predict_proba, train_model

__all__ = ["RunContext", "choose_device", "seed_for"]


def choose_device(requested: str) -> torch.device:
    """cuda, then mps, then cpu for "auto"; an explicit device that is absent is an error."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but torch sees no CUDA GPU; use --device auto or cpu")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' was requested but this machine has no MPS backend")
    if requested.startswith("cuda:"):
        index = requested.partition(":")[2]
        if not index.isdigit():
            raise ConfigError(f"device {requested!r}: expected cuda:N with N a GPU number, e.g. cuda:0")
        count = torch.cuda.device_count()
        if int(index) >= count:
            raise ConfigError(
                f"device {requested!r} does not exist: torch sees {count} CUDA GPU(s)"
                + (f" (cuda:0 to cuda:{count - 1})" if count else "; use --device auto or cpu")
            )
    elif requested not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {requested!r}")
    return torch.device(requested)


@dataclass
class RunContext:
    """What a hook may use. Plugins never see test labels: the harness owns evaluation."""

    config: dict
    device: torch.device
    work_dir: Path
    cache_dir: Path
    console: Console = field(default_factory=Console)
    log: Any = None  # a callable(str) that appends to the run log
    datasets: DatasetPool | None = None  # the run's datasets, for `load_split`
    trained: set[str] = field(default_factory=set)  # names given to train_model in this run
    #: what methods report about their own run, {method: {key: value}}: metrics.json "methods"
    records: dict[str, dict[str, Any]] = field(default_factory=dict)

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
            self.log(Text.from_markup(message).plain)

    def create_model(self, num_classes: int, *, seed_name: str = "model-init"):
        """The configured backbone, initialised from a seed derived from the run seed."""
        torch.manual_seed(seed_for(self.seed, seed_name))
        m = self.config["model"]
        return create_backbone(
            m["backbone"],
            num_classes=num_classes,
            pretrained=m["pretrained"],
            drop_rate=m["drop_rate"],
            image_size=self.config["data"]["image_size"],
        )

    def train_model(self, model, train, val, **kwargs):
        """The reusable ERM trainer (dermbench.train.trainer.train_model) bound to this run."""
        return train_model(self, model, train, val, **kwargs)

    def pretrained_erm(self, train, val):
        """The trained ERM model for this run's settings, seed and data, from the shared cache or
        trained once and stored (dermbench.train.pretrained): FairPrune, FairQuantize and MFD
        start from the ERM model the ERM baseline itself trains."""
        return pretrained_erm(self, train, val)

    def record(self, method: str, values: dict[str, Any]) -> None:
        """Add `values` to `method`'s entry of the run record (metrics.json "methods"): what a
        reader needs to trust the run, such as the checkpoint it started from or the group it
        treated as privileged and why. Values must be JSON-like (numbers, strings, lists, dicts)."""
        self.records.setdefault(method, {}).update(values)

    def artifact(self, name: str) -> Path:
        """Where a method saves a file that belongs with the run's model (a pruning mask, the
        quantised-weight mask): in the run folder beside model.safetensors."""
        return self.work_dir.parent / name

    def predict_proba(self, model, split, **kwargs) -> np.ndarray:
        return predict_proba(self, model, split, **kwargs)

    def load_split(
        self,
        dataset: str,
        split: str,
        *,
        image_size: int,
        with_masks: bool = False,
        without_subsets: bool = False,
    ) -> Split:
        """`dataset`'s `split` at `image_size` px through the shared image cache (a diffusion
        model trains at 256-512 px while the classifier sees 64-224 px): each size is decoded
        once, later calls map the cached pixels. With `with_masks`, the lesion masks too, at
        the same size (a DataError naming the dataset and split when it has none). With
        `without_subsets`, the dataset without the options that choose an experiment's subsets
        (FEDD's data fraction, a majority-to-minority scenario): the data a model pretrained
        without them would have seen."""
        if self.datasets is None:
            raise DermbenchError("this context has no datasets attached (it was not made by the runner)")
        return self.datasets.load(
            dataset, split, image_size=image_size, with_masks=with_masks, without_subsets=without_subsets
        )
