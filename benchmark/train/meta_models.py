"""The models a run builds, on torch's meta device: no memory, no weights, no download.

`run_models(config, pm)` lists every model a resolved run config asks for, each built from its
architecture on the meta device with its parameter count and where its weights would come from:
the harness's classifier first, then what each selected method describes through its
`dermbench_models` hook (MFD's student, the diffusion methods' parts, FEDD's backbone and probe), in
the order the methods were registered. `dermbench run --dry-run` prints it;
tests/test_paper_architectures.py checks the paper profiles' counts against the published figures.

Kept free of diffusers and transformers (the diffusion methods' published configs and builders are
`dermbench.diffusion.architectures`), so a method that builds only timm models, such as MFD, can
describe them without importing the diffusion stack.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy
import timm
import torch
from torch import nn

from dermbench.errors import ConfigError
from dermbench.hookspecs import CLASSIFIER_REPLACED
from dermbench.train.models import WEIGHTS_OF, weights_id

#: the classes of tasks whose class count is fixed; others come from the data
TASK_CLASSES = {"malignant": 2, "partition3": 3, "m2m7": 7}
#: (dataset, task) -> classes, for tasks whose count is the published dataset's
DATASET_TASK_CLASSES = {("fitz17k", "condition"): 114, ("fitz17k", "condition9"): 9}


@dataclass
class BuiltModel:
    """One model of a run: its role, architecture, where its weights come from, and its size."""

    role: str
    architecture: str
    weights: str
    params: int | None = None
    trainable: int | None = None
    note: str = ""
    module: nn.Module | None = field(default=None, repr=False)

    def row(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "architecture": self.architecture,
            "weights": self.weights,
            "params": self.params,
            "trainable": self.trainable,
            "note": self.note,
        }


def on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """`build()` with every parameter on the meta device (shapes only: no memory, no init cost)."""
    with torch.device("meta"):
        return build()


def counts(module: nn.Module) -> tuple[int, int]:
    """(parameters, trainable parameters); a parameter shared by several modules counts once."""
    params = {id(p): p for p in module.parameters()}.values()
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def built(
    role: str, architecture: str, weights: str, build: Callable[[], nn.Module], note: str = ""
) -> BuiltModel:
    """The row of the model `build()` makes, built on the meta device and counted."""
    module = on_meta(build)
    total, trainable = counts(module)
    return BuiltModel(role, architecture, weights, total, trainable, note, module)


def classifier(backbone: str, num_classes: int, drop_rate: float = 0.0) -> nn.Module:
    if not timm.is_model(backbone):
        raise ConfigError(f"unknown backbone (timm model) {backbone!r}")
    return timm.create_model(backbone, pretrained=False, num_classes=num_classes, drop_rate=drop_rate)


def weights_of(setting: Any) -> str:
    """Where a `pretrained` setting's weights come from, in words."""
    if setting is True:
        return "ImageNet (local timm cache)"
    if setting in (False, None, "", "false"):
        return "random init"
    return f"file {setting}"


def timm_weights(setting: Any, backbone: str) -> str:
    """`weights_of(setting)` for timm model `backbone`, naming the ImageNet weights it would load."""
    weights = weights_of(setting)
    return (
        f"ImageNet {weights_id(backbone)} (local timm cache)" if weights.startswith("ImageNet") else weights
    )


def task_classes(config: dict[str, Any]) -> tuple[int, str]:
    """(classes the heads are built for, the note saying so when the data decides the count)."""
    k = TASK_CLASSES.get(str(config.get("task"))) or DATASET_TASK_CLASSES.get(
        (config.get("dataset"), config.get("task"))
    )
    return k or 2, "" if k else "head shown for 2 classes: the task's classes come from the data"


def run_models(config: dict[str, Any], pm: pluggy.PluginManager) -> list[BuiltModel]:
    """Every model the resolved run `config` builds, on the meta device (see the module doc); `pm` is
    the run's plugin manager, whose methods describe their own models."""
    num_classes, note = task_classes(config)
    # pluggy answers in reverse registration order; the rows follow the methods' order
    roles = pm.hook.dermbench_classifier_role(config=config)[::-1]
    out: list[BuiltModel] = []
    if CLASSIFIER_REPLACED not in roles:
        model = config["model"]
        backbone = str(model["backbone"])
        arch = f"timm {backbone}" + (
            f" ({WEIGHTS_OF[backbone]} under a new head)" if backbone in WEIGHTS_OF else ""
        )
        out.append(
            built(
                roles[0] if roles else "classifier",
                arch,
                timm_weights(model.get("pretrained"), backbone),
                lambda: classifier(backbone, num_classes, float(model.get("drop_rate", 0.0))),
                note,
            )
        )
    for rows in pm.hook.dermbench_models(config=config, num_classes=num_classes, note=note)[::-1]:
        out += rows
    return out
