"""`dermbench evaluate`: score a user's own predictions file or model on a dataset's test sets, with
the same record, report and plots as `dermbench run` (the run is marked external)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

from dermbench import config as configuration
from dermbench.audit import ExternalSource, check_name, evaluate_external, model_source
from dermbench.cli.run import json_summary, print_record
from dermbench.errors import ConfigError
from dermbench.results.records import METRICS_FILE, read_record


def _triple(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"expected three comma-separated numbers (R,G,B), got {text!r}") from None
    if len(values) != 3:
        raise ConfigError(f"expected three comma-separated numbers (R,G,B), got {text!r}")
    return values


def cmd_evaluate(args: argparse.Namespace) -> int:
    console = Console(stderr=True) if args.json else Console()
    check_name(args.name)
    if (args.predictions is None) == (args.model is None):
        raise ConfigError(
            "give exactly one of --predictions FILE (probabilities per sample) and --model FILE "
            "(a timm weights file with --arch, or a TorchScript file)"
        )
    if args.predictions is not None and any(
        v is not None for v in (args.arch, args.input_size, args.mean, args.std)
    ):
        raise ConfigError(
            "--arch, --input-size, --mean and --std describe a --model; a predictions file needs none"
        )
    sets = list(args.set or [])
    if args.data_root:
        sets.append(f"data.root={json.dumps(args.data_root)}")
    flags = {
        "dataset": args.dataset,
        "seed": args.seed,
        "profile": args.profile,
        "device": args.device,
        "out": args.out,
        "task": args.task,
    }
    cfg = configuration.resolve(sets=sets, flags=flags)
    if args.test_set:
        cfg["data"]["test_sets"] = list(dict.fromkeys(args.test_set))
    spec = None
    if args.model is not None:
        spec = model_source(
            args.model,
            arch=args.arch,
            input_size=args.input_size,
            mean=_triple(args.mean),
            std=_triple(args.std),
            output=args.output,
        )
    source = ExternalSource(
        name=args.name,
        predictions=args.predictions,
        val_predictions=args.val_predictions,
        model=spec,
        model_val=args.val_split,
        id_column=args.id_column,
        batch_size=args.batch_size,
    )
    result = evaluate_external(
        cfg, source, force=args.force, counterfactual=args.counterfactual, console=console
    )
    record = read_record(result.run_dir.path / METRICS_FILE)
    print_record(record, console)
    console.print(
        f"{'reused' if result.reused else 'evaluated'} {result.run_dir.path}; add its folder to "
        "`dermbench leaderboard --runs` to see it beside the methods",
        highlight=False,
    )
    if args.json:
        sys.stdout.write(json.dumps(json_summary(result, record), indent=2) + "\n")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score your own predictions file or model on a dataset's test sets (per-tone metrics, "
        "intervals, report), as an external row of the leaderboard",
        description="Score a predictions file (CSV or parquet: sample_id, one probability column per class "
        "such as prob_0, prob_1, and test_set when it covers several test sets) or a model (a timm weights "
        "file with --arch, or a TorchScript file) on a dataset's test sets, and write the same run folder, "
        "record and report as `dermbench run`, marked external.",
    )
    p.add_argument(
        "--name", required=True, help="your model's name: the leaderboard row and the run folder's prefix"
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--predictions", type=Path, metavar="FILE", help="per-sample probabilities (.csv or .parquet)"
    )
    what.add_argument(
        "--model",
        type=Path,
        metavar="FILE",
        help="a timm weights file (.safetensors, or a torch state dict) with --arch, or a TorchScript file",
    )
    p.add_argument(
        "--val-predictions",
        type=Path,
        metavar="FILE",
        help="your predictions on the dataset's validation split: the decision threshold is chosen on them "
        "by eval.threshold, as `dermbench run` does (without: fixed 0.5, said in the record)",
    )
    p.add_argument(
        "--val-split",
        action="store_true",
        help="with --model: run it on the dataset's validation split to choose the threshold",
    )
    p.add_argument("--dataset", help="whose test sets to score on (default synthderm)")
    p.add_argument(
        "--test-set",
        action="append",
        metavar="NAME",
        help="score only this test set (repeatable; default: the dataset's test sets)",
    )
    p.add_argument("--task", help="task (default malignant)")
    p.add_argument(
        "--id-column", default="sample_id", help="the predictions file's id column (default sample_id)"
    )
    p.add_argument("--arch", help="timm architecture of a weights file (default: the file's metadata)")
    p.add_argument(
        "--input-size", type=int, help="the model's input size in pixels (default: file metadata, then timm)"
    )
    p.add_argument(
        "--mean",
        metavar="R,G,B",
        help="input normalisation mean in [0, 1] (default: file metadata, then timm)",
    )
    p.add_argument(
        "--std", metavar="R,G,B", help="input normalisation std (default: file metadata, then timm)"
    )
    p.add_argument(
        "--output",
        choices=("logits", "probabilities"),
        help="what the model returns (default: file metadata, else logits)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--counterfactual",
        action="store_true",
        help="also run the exact skin-tone counterfactual test on the SynthDerm test sets "
        "(docs/counterfactual.md; needs --model)",
    )
    p.add_argument(
        "--profile",
        help="the profile whose data settings (image size for tones) to use (default tiny); "
        "its rows are the ones the leaderboard compares with",
    )
    p.add_argument("--seed", type=int, help="seed of the bootstrap intervals (default 0)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a data or eval setting, e.g. eval.threshold=youden or data.tone=ita",
    )
    p.add_argument("--device", help="auto, cpu, cuda or mps (for --model)")
    p.add_argument("--out", help="directory for run records (default runs/)")
    p.add_argument("--data-root", help="folder holding one sub-folder per dataset (default $DERMBENCH_DATA)")
    p.add_argument("--force", action="store_true", help="redo an evaluation even if a finished record exists")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.set_defaults(func=cmd_evaluate)
