"""`dermbench fedd ablate`: FEDD's decoder block x diffusion step sweep (the paper's Fig. 6).

For a FEDD config (the same flags and --set as `dermbench run --method fedd`), every decoder block
at every t of the grid gets its own probe, trained as the method trains it (early stopping on the
validation split); validation and test accuracy (at probability 0.5) and ROC-AUC, overall and per
tone3 group, go into a markdown table, a JSON file and a heat map PNG (blocks x t; validation and
test accuracy and AUC). Features come through the shared FEDD feature cache, so a rerun, or a
later `dermbench run --method fedd` at one of the pairs, does not run the UNet again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from dermbench.context import RunContext, choose_device
from dermbench.data.pool import DatasetPool
from dermbench.errors import ConfigError
from dermbench.methods import fedd
from dermbench.runner import resolve_config, test_sets
from dermbench.seeds import seed_for

PANELS = (("val", "acc"), ("val", "auc"), ("test", "acc"), ("test", "auc"))


def grid(args: argparse.Namespace, steps: int) -> list[int]:
    """The t values: --ts, else 0, step, 2 step, ... below the schedule's length (or --t-max)."""
    if args.ts:
        return [int(t) for t in args.ts]
    top = steps - 1 if args.t_max is None else int(args.t_max)
    if args.t_step < 1:
        raise ConfigError(f"--t-step must be >= 1, got {args.t_step}")
    return list(range(0, top + 1, int(args.t_step)))


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}"


def markdown(rows: list[dict], *, title: str, source: dict, test_name: str, groups: list[str], command: str) -> str:
    head = ["block", "t", "val acc", "val AUC", "test acc", "test AUC"]
    head += [f"test acc {g}" for g in groups] + [f"test AUC {g}" for g in groups]
    lines = [f"# {title}", "", f"Backbone: {source.get('kind')} ({source.get('identity')}). Test set: {test_name}. "
             "Accuracy at probability 0.5; AUC is ROC-AUC; per tone3 group on the test set. Best validation AUC in "
             "bold.", "", f"Command: `{command}`", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    best = max(rows, key=lambda r: -1 if r["val"]["overall"]["auc"] is None else r["val"]["overall"]["auc"])
    for row in rows:
        cells = [str(row["block"]), str(row["t"]), _fmt(row["val"]["overall"]["acc"]), _fmt(row["val"]["overall"]["auc"]),
                 _fmt(row["test"]["overall"]["acc"]), _fmt(row["test"]["overall"]["auc"])]
        cells += [_fmt(row["test"].get(g, {}).get("acc")) for g in groups]
        cells += [_fmt(row["test"].get(g, {}).get("auc")) for g in groups]
        if row is best:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def heat_map(rows: list[dict], path: Path, *, title: str) -> None:
    import matplotlib  # noqa: PLC0415 (plotting only here)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    blocks = sorted({r["block"] for r in rows})
    ts = sorted({r["t"] for r in rows})
    fig, axes = plt.subplots(2, 2, figsize=(max(6.0, 0.5 * len(ts) + 3), max(4.0, 0.35 * len(blocks) * 2 + 2)),
                             squeeze=False)
    for ax, (part, metric) in zip(axes.ravel(), PANELS):
        values = np.full((len(blocks), len(ts)), np.nan)
        for r in rows:
            v = r[part]["overall"][metric]
            values[blocks.index(r["block"]), ts.index(r["t"])] = np.nan if v is None else v
        image = ax.imshow(values, aspect="auto", origin="lower", cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_xticks(range(len(ts)), [str(t) for t in ts], rotation=90, fontsize=7)
        ax.set_yticks(range(len(blocks)), [str(b) for b in blocks], fontsize=7)
        ax.set_xlabel("t")
        ax.set_ylabel("decoder block")
        ax.set_title(f"{part} {metric}")
        fig.colorbar(image, ax=ax)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_ablate(args: argparse.Namespace) -> int:
    console = Console()
    flags = {"method": "fedd", "dataset": args.dataset, "seed": args.seed, "profile": args.profile,
             "device": args.device}
    sets = list(args.set or [])
    if args.data_root:
        sets.append(f"data.root={json.dumps(args.data_root)}")
    cfg = resolve_config(file=args.config, sets=sets, flags=flags)
    device = choose_device(cfg["device"])
    cfg = {**cfg, "device": device.type}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    datasets = DatasetPool(cfg, ())
    ctx = RunContext(config=cfg, device=device, work_dir=out, cache_dir=out, console=console, datasets=datasets)
    train = datasets.load(cfg["dataset"], "train")
    val = datasets.load(cfg["dataset"], "val")
    protocol = test_sets(cfg, datasets.get(cfg["dataset"]))
    chosen = [t for t in protocol if args.test_set in (None, t.name)]
    if not chosen:
        raise ConfigError(f"--test-set {args.test_set!r} is not a test set of this run ({', '.join(t.name for t in protocol)})")
    test_set = chosen[0]
    test = datasets.load(test_set.dataset, test_set.split, as_name=test_set.name)
    if train.num_classes != 2:
        raise ConfigError("dermbench fedd ablate: FEDD is a binary probe; use task malignant")
    settings = fedd.check_settings(ctx.hparams("fedd"))
    steps = 1000 if settings["model"] == "tiny" else None
    if steps is None:
        steps = int(fedd.backbone(ctx, settings, train)[0].scheduler.config.num_train_timesteps)
    ts = grid(args, steps)
    rows, source = fedd.ablate(ctx, settings, train, val, test, blocks=args.blocks, ts=ts,
                               seed=seed_for(int(cfg["seed"]), "fedd-probe"))
    name = args.name or f"fedd-ablation-{cfg['dataset']}"
    title = f"FEDD block x t ablation: {cfg['dataset']} ({cfg['profile']} profile, seed {cfg['seed']})"
    groups = sorted({g for r in rows for g in r["test"] if g != "overall"})
    command = " ".join(["dermbench fedd ablate", *(f"--{k.replace('_', '-')} {v}" for k, v in (
        ("dataset", args.dataset), ("profile", args.profile), ("seed", args.seed), ("test_set", args.test_set))
        if v is not None), *(f"--set {json.dumps(s)}" for s in args.set or []), "--ts", *map(str, ts),
        *(["--blocks", *map(str, args.blocks)] if args.blocks else [])])
    (out / f"{name}.md").write_text(markdown(rows, title=title, source=source, test_name=test_set.name, groups=groups,
                                             command=command), encoding="utf-8")
    (out / f"{name}.json").write_text(json.dumps({"config": cfg, "backbone": source, "test_set": test_set.name,
                                                  "rows": rows}, indent=1, default=str), encoding="utf-8")
    heat_map(rows, out / f"{name}.png", title=title)
    console.print(f"wrote {out / f'{name}.md'}, {out / f'{name}.json'} and {out / f'{name}.png'}")
    return 0


def curve_rows(roots: list[Path]) -> list[dict[str, Any]]:
    """One row per finished FEDD run on the data-efficiency protocol and test set: dataset, fraction,
    seed, test set, AUC and accuracy overall and per tone3 group."""
    from dermbench.results.leaderboard import scan_runs  # noqa: PLC0415
    from dermbench.results.records import METRICS_FILE, read_record  # noqa: PLC0415

    rows = []
    for run_dir in scan_runs(roots).finished:
        record = read_record(run_dir / METRICS_FILE)
        fraction = ((record.methods or {}).get("fedd") or {}).get("fedd_fraction")
        if record.method != "fedd" or fraction is None:
            continue
        for test_set, ev in record.eval.items():
            row = {"dataset": record.dataset, "fraction": int(fraction), "seed": record.seed, "test_set": test_set,
                   "auc": ev.overall.get("auc"), "acc": ev.overall.get("acc")}
            for group, metrics in ev.groups.get("tone3", {}).items():
                row[f"auc {group}"] = metrics.get("auc")
            rows.append(row)
    return rows


def cmd_curve(args: argparse.Namespace) -> int:
    """AUC against the training fraction (FEDD's data-efficiency curve) from finished run records."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import pandas as pd  # noqa: PLC0415

    rows = curve_rows([Path(r) for r in args.runs])
    if not rows:
        raise ConfigError(f"no finished fedd run with data.options.fedd_fraction under {', '.join(args.runs)}")
    frame = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for (dataset, test_set), sub in frame.groupby(["dataset", "test_set"], sort=True):
        columns = [c for c in ("auc", "auc A", "auc B", "auc C", "acc") if c in sub]
        stats = sub.groupby("fraction")[columns].agg(["mean", "std", "count"])
        lines = [f"# FEDD data-efficiency curve: `{dataset}`, test set `{test_set}`", "",
                 f"Mean ± sd over seeds of finished `fedd` runs with `fedd_fraction` under {', '.join(args.runs)} "
                 "(ROC-AUC; accuracy at the validation threshold). Regenerate with "
                 f"`dermbench fedd curve --runs {' '.join(args.runs)} --out {args.out}`.", "",
                 "| fraction (%) | seeds | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 2)]
        for fraction, row in stats.iterrows():
            cells = []
            for c in columns:
                mean, sd = row[(c, "mean")], row[(c, "std")]
                cells.append("–" if mean != mean else (f"{mean:.3f}" + ("" if sd != sd else f" ± {sd:.3f}")))
            lines.append(f"| {fraction} | {int(row[(columns[0], 'count')])} | " + " | ".join(cells) + " |")
        if dataset == "ddi" and test_set == "ddi":
            lines += ["", "FEDD's reported ROC-AUC (supplementary Fig. 2, as read from the author's thesis chapter; "
                      "the main text gives no number): " + ", ".join(f"{f} %: {v}" for f, v in fedd.PAPER_AUC.items())
                      + "; 81 % accuracy at 10 % (abstract)."]
        stem = out / f"fedd-curve-{dataset}-{test_set}"
        stem.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for c in [c for c in columns if c.startswith("auc")]:
            ax.errorbar(stats.index, stats[(c, "mean")], yerr=stats[(c, "std")].fillna(0), marker="o", capsize=3,
                        label=c.replace("auc", "AUC").replace("AUC ", "AUC tone "))
        if dataset == "ddi" and test_set == "ddi":
            ax.plot(list(fedd.PAPER_AUC), list(fedd.PAPER_AUC.values()), "k--", marker="s",
                    label="FEDD paper (supp. Fig. 2)")
        ax.set_xlabel("training fraction (%)")
        ax.set_ylabel("ROC-AUC")
        ax.set_title(f"{dataset}: {test_set}")
        ax.set_xticks(sorted(stats.index))
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(stem.with_suffix(".png"), dpi=120)
        plt.close(fig)
        written += [stem.with_suffix(".md"), stem.with_suffix(".png")]
    Console().print("wrote " + ", ".join(map(str, written)))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("fedd", help="FEDD tools: the decoder block x t ablation")
    sub = parser.add_subparsers(dest="fedd_command", metavar="COMMAND")
    p = sub.add_parser("ablate", help="probe every decoder block at every t; heat map and table",
                       description="FEDD's block x t sweep (paper Fig. 6) on a run's train/val/test splits.")
    p.add_argument("--dataset", help="training dataset (default synthderm)")
    p.add_argument("--profile", help="tiny or paper")
    p.add_argument("--config", type=Path, help="YAML file of settings")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a setting, as for dermbench run")
    p.add_argument("--seed", type=int, help="seed of the probes (and the run config)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--data-root", help="folder holding the datasets")
    p.add_argument("--blocks", type=int, nargs="+", metavar="N", help="decoder blocks (default: all)")
    p.add_argument("--ts", type=int, nargs="+", metavar="T", help="diffusion steps (default: 0, --t-step, ...)")
    p.add_argument("--t-step", type=int, default=50, help="step of the t grid (default 50)")
    p.add_argument("--t-max", type=int, help="largest t of the grid (default: the schedule's last step)")
    p.add_argument("--test-set", help="the test set to score (default: the protocol's first)")
    p.add_argument("--out", default="leaderboards/fedd", metavar="DIR", help="where the table, JSON and PNG go")
    p.add_argument("--name", help="file name without extension (default fedd-ablation-<dataset>)")
    p.set_defaults(func=cmd_ablate)
    c = sub.add_parser("curve", help="AUC against the training fraction from fedd runs on the data-efficiency protocol",
                       description="Reads finished `fedd` run records with data.options.fedd_fraction and writes a "
                                   "markdown table and a plot per dataset and test set (with FEDD's published DDI "
                                   "numbers beside DDI's).")
    c.add_argument("--runs", nargs="+", required=True, metavar="DIR", help="directories holding run records")
    c.add_argument("--out", default="leaderboards/fedd", metavar="DIR")
    c.set_defaults(func=cmd_curve)
    parser.set_defaults(func=lambda _args: parser.print_help() or 2)
