"""The steps every augmenting diffusion method ends with: its generated set as training samples
at the classifier's image size, and the generation's quality measured and recorded.

Quality is measured against the real training split with the run's ERM model trained on that
split (from the shared ERM cache, so the ERM baseline's own model): its penultimate features
for FID, its predictions for label fidelity; tone fidelity uses the run's tone detector when
`data.tone_detector` names one, else ITA.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from dermbench.context import RunContext
from dermbench.data.generated import read_generated
from dermbench.data.model import Split
from dermbench.diffusion.generation import resized_generation
from dermbench.diffusion.quality import quality_report, tone_assigner
from dermbench.diffusion.store import Entry

GRID = "sample_grid.png"


def split_at(ctx: RunContext, train: Split, size: int) -> Split:
    """The run's training split at `size` px (the size the diffusion model works at)."""
    if int(train.images.shape[1]) == size:
        return train
    return ctx.load_split(ctx.config["dataset"], "train", image_size=size)


def synthetic_split(ctx: RunContext, entry: Entry, train: Split, *, name: str) -> Split:
    """The generated set of `entry` as training samples at `train`'s image size."""
    folder = resized_generation(entry, int(train.images.shape[1]), say=ctx.say)
    return replace(read_generated(folder, classes=train.classes), name=name)


def measure_quality(ctx: RunContext, method: str, *, train: Split, synthetic: Split) -> dict[str, Any]:
    """FID, MS-SSIM diversity, tone and label fidelity and a sample grid (`sample_grid.png` in
    the run folder) of `synthetic` against the real `train`, as a record entry."""
    settings = ctx.hparams(method).get("quality", {})
    val = ctx.load_split(ctx.config["dataset"], "val", image_size=int(train.images.shape[1]))
    reference = ctx.pretrained_erm(train, val)
    reference_info = dict(ctx.records.get("erm", {}).get("checkpoint", {}))
    tone_of = tone_assigner(ctx.config, device=ctx.device)
    report = quality_report(
        real=train,
        synthetic=synthetic,
        classifier=reference,
        tone_of=tone_of,
        device=ctx.device,
        grid_path=ctx.artifact(GRID),
        seed=ctx.seed,
        inception=settings.get("inception"),
        pairs=int(settings.get("pairs", 200)),
    )
    return {**report, "reference_classifier": reference_info}
