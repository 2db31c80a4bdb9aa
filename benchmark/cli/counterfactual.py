"""`dermbench counterfactual RUN_DIR`: the exact skin-tone counterfactual test of a finished run's model
on its SynthDerm test sets (docs/counterfactual.md), into RUN_DIR/counterfactual.json and the report."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from dermbench.audit import counterfactual_for_run
from dermbench.results.counterfactual import counterfactual_lines, read_counterfactual


def cmd_counterfactual(args: argparse.Namespace) -> int:
    console = Console()
    path = counterfactual_for_run(
        args.run_dir, device=args.device, model=args.model, batch_size=args.batch_size, console=console
    )
    for name, entry in (read_counterfactual(args.run_dir) or {}).get("test_sets", {}).items():
        console.rule(f"counterfactual: {name}")
        for line in counterfactual_lines(entry):
            console.print(line, highlight=False, markup=False)
    console.print(f"wrote {path} and the run's report.md", highlight=False)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "counterfactual",
        help="flip rate and per-tone scores of a run's model on its SynthDerm test lesions "
        "re-rendered on FST I-VI",
        description="Re-render every lesion of a finished run's SynthDerm test sets once per Fitzpatrick "
        "type with everything but the skin tone held fixed, score the run's model (model.safetensors, or an "
        "external run's model file) on them, and write counterfactual.json and the report.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a finished run directory")
    p.add_argument("--device", help="cpu, cuda or mps (default: the run's device type)")
    p.add_argument(
        "--model", type=Path, help="an external run's model file, when it moved since the evaluation"
    )
    p.add_argument("--batch-size", type=int, default=64, help="for an external model")
    p.set_defaults(func=cmd_counterfactual)
