"""docs/gpu-costs.md from the GPU check's timings (dermbench.gpucheck): the projected GPU-hours of
each method's full paper protocol, with how each projection is computed, so a user knows before
renting a GPU what `dermbench run --profile paper` will cost.

A projection is the sum over the protocol's parts of (how often the part runs) x (its measured
median seconds per step); parts counted in samples use the measured seconds per sample (step time
/ batch), which is a lower bound where the protocol's batch is smaller than the measured one.
Data loading, validation passes, checkpoints and FID are left out: they are small beside the
counted parts on one GPU, and the table says so. The counts come from the paper profiles
(methods/*.py, profiles/paper.yaml) and the datasets' sizes below.

`python -m dermbench.gpu_costs gpu-check.json docs/gpu-costs.md` writes the page;
`python -m dermbench.gpu_costs --placeholder docs/gpu-costs.md` the page before any GPU ran it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Fitzpatrick17k: 16,577 images; the FairQuantize split trains on 60 % (fitzpatrick17k_holdout_score_v2)
FITZ_TRAIN = round(16_577 * 0.6)
#: its dark (FST IV-VI) training images: the smaller side, all of which FairQuantize scores on
FITZ_DARK_TRAIN = round(3_919 * 0.6 / 0.8)
#: DermDiff's neoplastic Fitzpatrick17k images (its Tab. 1: 2,234 + 2,263), 60 % of them in training
DERMDIFF_REAL = round(4_497 * 0.6)
#: majority-to-minority scenario (i): 1,228 light + 291 dark training images (the paper's Tab. 1;
#: docs/majority2minority.md)
M2M_TRAIN = 1_228 + 291
#: ISIC 2019 (25,331 images): benign 16,858; a 60 % training share (assumed; the split is the dataset's)
ISIC_BENIGN_TRAIN = round(16_858 * 0.6)
#: DDI: 656 images, every one's features extracted once (all decoder blocks in one pass)
DDI_IMAGES = 656


@dataclass(frozen=True)
class Part:
    """One part of a protocol: `count` runs of the measured step `step` (per step, or per sample)."""

    step: str  # "<method>.<step name>" in the GPU check's JSON
    count: int
    unit: str  # "step" or "sample"
    why: str


def _steps(n: int, batch: int) -> int:
    return math.ceil(n / batch)


ERM_STEPS = 200 * _steps(FITZ_TRAIN, 128)
#: {method: [parts]} of each paper protocol, on its paper's dataset
PROTOCOLS: dict[str, list[Part]] = {
    "erm": [
        Part(
            "erm.train",
            ERM_STEPS,
            "step",
            f"200 epochs x {_steps(FITZ_TRAIN, 128)} steps of 128 "
            f"({FITZ_TRAIN:,} Fitzpatrick17k training images)",
        )
    ],
    "fairprune": [
        Part(
            "erm.train",
            ERM_STEPS,
            "step",
            "the shared ERM model (trained once for ERM, FairPrune, FairQuantize, MFD)",
        ),
        Part("fairprune.score", 10 * 2 * 32, "step", "10 rounds x 2 groups x 32 scoring batches of 16"),
    ],
    "fairquantize": [
        Part("erm.train", ERM_STEPS, "step", "the shared ERM model"),
        Part(
            "fairquantize.score",
            4 * 2 * FITZ_DARK_TRAIN,
            "sample",
            f"4 steps of 5 % to 20 % x 2 groups x {FITZ_DARK_TRAIN:,} "
            "scoring samples (all of the smaller group)",
        ),
        Part(
            "erm.train",
            4 * 20 * FITZ_TRAIN,
            "sample",
            f"4 steps x 20 retraining epochs x {FITZ_TRAIN:,} samples "
            "(batch 4: per-sample time at batch 128, a lower bound)",
        ),
    ],
    "mfd": [
        Part("erm.train", ERM_STEPS, "step", "the teacher: the shared ERM model"),
        Part("mfd.train", 200 * _steps(FITZ_TRAIN, 128), "step", "the student: 200 epochs x 78 steps of 128"),
    ],
    "dermdiff": [
        Part("dermdiff.finetune", 10_000, "step", "SD 1.4 UNet fine-tuning: 10k steps of 4 (paper §3.2)"),
        Part(
            "dermdiff.sample",
            _steps(60_000, 64) * 50,
            "step",
            "60k images (10k per class x tone cell) in batches of 64 x 50 sampler steps",
        ),
        Part("dermdiff.decode", _steps(60_000, 64), "step", "the VAE decode of each batch"),
        Part(
            "dermdiff.classifier",
            30 * _steps(DERMDIFF_REAL + 60_000, 64),
            "step",
            f"ResNeXt-101: 30 epochs over {DERMDIFF_REAL:,} real + 60,000 synthetic images, batch 64",
        ),
    ],
    "majority2minority": [
        Part("majority2minority.textual_inversion", 500, "step", "textual inversion: 500 steps of 16"),
        Part("majority2minority.lora", 3_000, "step", "LoRA: 3,000 steps of 4"),
        Part(
            "majority2minority.sample",
            _steps(5 * M2M_TRAIN, 16) * 50,
            "step",
            f"img2img: 5 outputs for each of {M2M_TRAIN:,} training images, batches of 16, 100 steps at "
            "strength 0.5 = 50 denoising steps",
        ),
        Part("majority2minority.decode", _steps(5 * M2M_TRAIN, 16), "step", "the VAE decode of each batch"),
        Part(
            "majority2minority.classifier",
            30 * _steps(6 * M2M_TRAIN, 256),
            "step",
            "frozen VGG-16 head: 30 epochs over the real + 5x synthetic images, batch 256",
        ),
    ],
    "classndiff": [
        Part(
            "classndiff.joint", 100_000, "step", "DiT-L/4 + latent classifier: 100k joint steps of 8 (run.sh)"
        ),
        Part(
            "classndiff.sample",
            _steps(2 * ISIC_BENIGN_TRAIN, 64) * 250,
            "step",
            f"per_class = the largest class (~{ISIC_BENIGN_TRAIN:,} ISIC 2019 benign training images, "
            "assumed 60 % split) x 2 classes, batches of 64 x 250 DDPM steps",
        ),
        Part("classndiff.decode", _steps(2 * ISIC_BENIGN_TRAIN, 64), "step", "the VAE decode of each batch"),
        Part(
            "erm.train",
            200 * _steps(3 * ISIC_BENIGN_TRAIN, 128),
            "step",
            "the downstream classifier: 200 epochs over real + synthetic (profile recipe; step time of the "
            "VGG-11 ERM step)",
        ),
    ],
    "fedd": [
        Part(
            "fedd.features",
            _steps(DDI_IMAGES, 16),
            "step",
            f"one ADM forward for each of the {DDI_IMAGES} DDI images, batches of 16 (the MLP probe is "
            "negligible)",
        )
    ],
}
#: what every projection leaves out
LEFT_OUT = (
    "data loading and decoding, validation passes, checkpoints, FID/quality metrics and the "
    "bootstrap; each projection is for one seed"
)
COMMAND = "bash tests/gpu/check.sh"


def seconds_of(timings: dict[str, Any], step: str, unit: str) -> float | None:
    """Measured seconds per step (or per sample) of `step` ("method.name"); None when absent or failed."""
    method, _, name = step.partition(".")
    entry = timings.get("methods", {}).get(method, {}).get(name)
    if not entry or "error" in entry or "seconds" not in entry:
        return None
    seconds = float(entry["seconds"])
    return seconds / int(entry["batch"]) if unit == "sample" else seconds


def project(timings: dict[str, Any], method: str) -> float | None:
    """Projected GPU-hours of `method`'s paper protocol; None when a part was not measured."""
    total = 0.0
    for part in PROTOCOLS[method]:
        seconds = seconds_of(timings, part.step, part.unit)
        if seconds is None:
            return None
        total += part.count * seconds
    return total / 3600


def _peak(timings: dict[str, Any], method: str) -> str:
    steps = timings.get("methods", {}).get(method, {})
    peaks = [e["peak_bytes"] for e in steps.values() if "peak_bytes" in e]
    return f"{max(peaks) / 2**30:.1f}" if peaks else "-"


def render(timings: dict[str, Any]) -> str:
    """The page: per method the projected GPU-hours and peak memory, then every measured step and
    how each projection is computed."""
    lines = [
        "# GPU costs of the paper profiles",
        "",
        f"Measured by `{COMMAND}` on {timings.get('device', '?')} (torch {timings.get('torch', '?')}, bf16 "
        f"{'yes' if timings.get('bf16') else 'no'}; median of {timings.get('iters', '?')} timed iterations "
        "after a warm-up, random weights at full architecture). Regenerate with the same command.",
        "",
        "| method | projected GPU-hours (one seed) | peak memory of its steps (GiB) |",
        "|---|---|---|",
    ]
    for method in PROTOCOLS:
        hours = project(timings, method)
        lines.append(
            f"| {method} | {'not measured' if hours is None else f'{hours:.1f}'} | {_peak(timings, method)} |"
        )
    lines += [
        "",
        "## Measured steps",
        "",
        "| step | batch | seconds per step | peak GiB | what |",
        "|---|---|---|---|---|",
    ]
    for method, steps in timings.get("methods", {}).items():
        for name, e in steps.items():
            if "error" in e:
                lines.append(f"| {method}.{name} | - | failed | - | {e['error']} |")
            else:
                lines.append(
                    f"| {method}.{name} | {e['batch']} | {e['seconds']:.3f} | "
                    f"{e['peak_bytes'] / 2**30:.1f} | {e['note']} |"
                )
    lines += _how()
    return "\n".join(lines) + "\n"


def _how() -> list[str]:
    lines = [
        "",
        "## How each projection is computed",
        "",
        "GPU-hours = sum over the parts of count x measured seconds (per step, or per sample = step time / "
        f"measured batch) / 3600. Left out: {LEFT_OUT}.",
        "",
    ]
    for method, parts in PROTOCOLS.items():
        lines.append(
            f"- **{method}**: " + "; ".join(f"{p.count:,} x `{p.step}` per {p.unit} ({p.why})" for p in parts)
        )
    return lines


def placeholder() -> str:
    """The page before any GPU has run the check."""
    return (
        "\n".join(
            [
                "# GPU costs of the paper profiles",
                "",
                "**The GPU check has not run yet**: no paper profile has been timed on a GPU, so this page "
                "has no measured numbers. On a machine with one CUDA GPU run",
                "",
                "```bash",
                COMMAND,
                "```",
                "",
                "(under 8 minutes): it trains and samples every method's paper-profile models at full size "
                "with random weights for a few iterations, records each step's time and peak memory, and "
                "rewrites this page with the projected GPU-hours of each method's full paper protocol.",
                *_how(),
            ]
        )
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dermbench.gpu_costs", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("timings", nargs="?", type=Path, help="the GPU check's JSON")
    parser.add_argument("out", type=Path, help="the page to write (docs/gpu-costs.md)")
    parser.add_argument("--placeholder", action="store_true", help="write the not-yet-run page")
    args = parser.parse_args(argv)
    if args.placeholder:
        args.out.write_text(placeholder())
        return 0
    if args.timings is None:
        parser.error("give the GPU check's JSON, or --placeholder")
    args.out.write_text(render(json.loads(args.timings.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
