"""`dermbench tone train|annotate|compare`: the tone detector, tone estimates for datasets without
labels, and estimators side by side per tone group (DermDiff's Table 3)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dermbench.data.pool import DatasetPool
from dermbench.files import write_text
from dermbench.runner import resolve_config
from dermbench.tone import compare
from dermbench.tone.detector import DETECTOR_FILE, RECIPES, _fmt, load_detector, train_detector
from dermbench.tone.filling import annotate_dataset


def _config(args: argparse.Namespace, extra_sets: list[str]) -> dict:
    sets = [*extra_sets, *(args.set or [])]
    if args.data_root:
        sets.append(f"data.root={args.data_root}")
    flags = {
        "dataset": getattr(args, "dataset", None),
        "device": args.device,
        "seed": getattr(args, "seed", None),
    }
    return resolve_config(sets=sets, flags=flags, local=tuple(args.plugin or ()))


def train_config(args: argparse.Namespace) -> dict:
    """The resolved settings of `tone train`: the recipe, then --backbone/--epochs/--image-size,
    then --set."""
    sets = list(RECIPES[args.recipe])
    if args.backbone:
        sets.append(f"model.backbone={args.backbone}")
    if args.epochs is not None:
        sets.append(f"train.epochs={args.epochs}")
    if args.image_size is not None:
        sets.append(f"data.image_size={args.image_size}")
    return _config(args, sets)


def cmd_train(args: argparse.Namespace) -> int:
    cfg = train_config(args)
    out = Path(args.out or f"detectors/tone3-{cfg['dataset']}-{cfg['model']['backbone']}")
    info = train_detector(
        cfg,
        out=out,
        eval_dataset=args.eval_dataset,
        eval_split=args.eval_split,
        synthetic=tuple(args.synthetic or ()),
        recipe=args.recipe,
        force=args.force,
        local=tuple(args.plugin or ()),
        console=Console(),
    )
    Console().print(
        f"wrote {out / DETECTOR_FILE}: accuracy {info['accuracy']:.3f}, balanced accuracy "
        f"{info['balanced_accuracy']:.3f} on {info['evaluated_on']} (n={info['n']})"
    )
    return 0


def cmd_annotate(args: argparse.Namespace) -> int:

    detector = load_detector(args.detector)
    cfg = _config(args, [f"data.image_size={int(detector.info['image_size'])}"])
    frame = annotate_dataset(cfg, detector, splits=args.split, local=tuple(args.plugin or ()))
    out = Path(args.out or f"tones_{cfg['dataset']}.csv")
    write_text(out, frame.to_csv(index=False))
    console = Console()
    console.print(
        f"wrote {len(frame)} rows to {out} (tone_source=detector). Detector: accuracy "
        f"{detector.info['accuracy']:.3f} on {detector.info['evaluated_on']} (n={detector.info['n']}), F1 "
        + ", ".join(f"{k} {_fmt(v)}" for k, v in detector.info["per_tone_f1"].items())
    )
    has = frame["tone3_annotated"].notna()
    if has.any():
        agree = (frame.loc[has, "tone3"] == frame.loc[has, "tone3_annotated"]).mean()
        agree_ita = (frame.loc[has, "tone3_ita"] == frame.loc[has, "tone3_annotated"]).mean()
        console.print(
            f"on the {int(has.sum())} rows with an annotated tone: "
            f"detector agrees {agree:.3f}, ITA {agree_ita:.3f}"
        )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    cfg = _config(args, [])
    loaded = {
        name: load_detector(folder) for name, folder in compare.parse_detectors(args.detector or []).items()
    }
    trained_on = {d.info["trained_on"] for d in loaded.values()} or {cfg["dataset"]}
    evals = (
        [compare.parse_eval(text) for text in args.eval] if args.eval else compare.default_evals(trained_on)
    )
    compare.check_held_out(loaded, evals)
    estimators = [
        compare.ita_estimator(),
        *(compare.detector_estimator(name, d, device=cfg["device"]) for name, d in loaded.items()),
    ]
    frame = compare.compare(DatasetPool(cfg, tuple(args.plugin or ())), estimators, evals)
    console = Console()
    for _, part in frame.groupby("eval", sort=False):
        shown = compare.display_rows(part, f1=False)
        table = Table(title=compare.title(part))
        for col in shown.columns:
            table.add_column(col, justify="left" if col == "estimator" else "right")
        for row in shown.itertuples(index=False):
            table.add_row(*row)
        console.print(table)
    out = Path(args.out)
    write_text(out, compare.markdown(frame))
    console.print(f"wrote {out} (with F1 per tone group)")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", help="folder holding one sub-folder per dataset (default $DERMBENCH_DATA)")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a setting, e.g. train.lr=0.01"
    )
    p.add_argument("--device", help="auto, cpu, cuda or mps")
    p.add_argument(
        "--plugin", action="append", metavar="MODULE:OBJECT", help="load a dataset plugin from a module"
    )


def register(sub) -> None:
    p = sub.add_parser(
        "tone", help="estimate skin tone for datasets without tone labels (ITA, tone detector)"
    )
    tone_sub = p.add_subparsers(dest="tone_command", metavar="{train,annotate,compare}")

    def usage(_args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=usage)

    t = tone_sub.add_parser("train", help="train a tone3 detector on a dataset with FST labels and score it")
    t.add_argument(
        "--dataset", default="fitz17k", help="training dataset with annotated FST (default fitz17k)"
    )
    t.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default="default",
        help="training settings: default (the run's backbone and optimiser, focal loss) or dermdiff "
        "(ResNeXt-101, focal loss, SGD with momentum, lr 3e-4, batch 64); --backbone, --epochs and "
        "--set override them",
    )
    t.add_argument(
        "--backbone", help="timm model name (default: the recipe's, else model.backbone of the config)"
    )
    t.add_argument("--epochs", type=int)
    t.add_argument("--image-size", type=int)
    t.add_argument(
        "--eval-dataset", default="ddi", help="dataset with ground-truth tone to score on (default ddi)"
    )
    t.add_argument("--eval-split", default="test", help="its split to score on (default test)")
    t.add_argument("--seed", type=int)
    t.add_argument(
        "--synthetic",
        action="append",
        metavar="DIR",
        help="a generated set (images.npy + manifest.csv) whose samples join the training split only, "
        "labelled with their requested tone (repeatable)",
    )
    t.add_argument("--out", help="detector folder (default detectors/tone3-DATASET-BACKBONE)")
    t.add_argument("--force", action="store_true", help="replace a detector already in --out")
    _common(t)
    t.set_defaults(func=cmd_train)

    a = tone_sub.add_parser("annotate", help="write detector tone3 and ITA for every sample of a dataset")
    a.add_argument("--detector", required=True, help="detector folder made by `dermbench tone train`")
    a.add_argument("--dataset", required=True, help="dataset to annotate")
    a.add_argument("--split", action="append", help="only this split (repeatable; default every split)")
    a.add_argument("--out", help="CSV file (default tones_DATASET.csv)")
    _common(a)
    a.set_defaults(func=cmd_annotate)

    c = tone_sub.add_parser(
        "compare", help="ITA and tone detectors per tone group on annotated test sets (DermDiff Table 3)"
    )
    c.add_argument(
        "--detector",
        action="append",
        metavar="NAME=DIR",
        help="a detector folder and its row name, e.g. real+syn=detectors/b (repeatable)",
    )
    c.add_argument(
        "--eval",
        action="append",
        metavar="DATASET[:SPLIT]",
        help="test set with annotated tones (repeatable; default synthderm:test_ddi when the detectors "
        "were trained on synthderm, else ddi:test)",
    )
    c.add_argument("--out", default="tone-compare.md", help="markdown file (default tone-compare.md)")
    _common(c)
    c.set_defaults(func=cmd_compare)
