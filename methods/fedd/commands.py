"""`dermbench fedd ...`, the commands the fedd plugin adds to the CLI (its `dermbench_add_commands`
hook).

`dermbench fedd ablate`: FEDD's decoder block x diffusion step sweep (the paper's Fig. 6).

For a FEDD config (the same flags and --set as `dermbench run --method fedd`), every decoder block
at every t of the grid gets its own probe, trained as the method trains it (early stopping on the
validation split); validation and test accuracy (at probability 0.5) and ROC-AUC, overall and per
tone3 group, go into a markdown table, a JSON file and a heat map PNG (blocks x t; validation and
test accuracy and AUC). Features come through the shared FEDD feature cache, so a rerun, or a
later `dermbench run --method fedd` at one of the pairs, does not run the UNet again.

`dermbench fedd convert-adm CKPT OUT`: a guided-diffusion ADM checkpoint (the paper's
`256x256_diffusion_uncond.pt`) to a diffusers UNet2DModel folder that `fedd.model` loads
(`dermbench.methods.fedd.adm`); OUT defaults to where `--profile paper` looks for it.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from dermbench.config import settings_digest
from dermbench.context import RunContext, choose_device
from dermbench.data.pool import DatasetPool
from dermbench.errors import ConfigError
from dermbench.methods.fedd import adm
from dermbench.methods.fedd.model import PAPER_AUC, ablate, backbone, check_settings
from dermbench.results.leaderboard import scan_runs
from dermbench.results.records import METRICS_FILE, read_record
from dermbench.runner import resolve_config
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


def markdown(
    rows: list[dict], *, title: str, source: dict, test_name: str, groups: list[str], command: str
) -> str:
    head = ["block", "t", "val acc", "val AUC", "test acc", "test AUC"]
    head += [f"test acc {g}" for g in groups] + [f"test AUC {g}" for g in groups]
    lines = [
        f"# {title}",
        "",
        f"Backbone: {source.get('kind')} ({source.get('identity')}). Test set: {test_name}. "
        "Accuracy at probability 0.5; AUC is ROC-AUC; per tone3 group on the test set. Best validation "
        "AUC in "
        "bold.",
        "",
        f"Command: `{command}`",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    best = max(rows, key=lambda r: -1 if r["val"]["overall"]["auc"] is None else r["val"]["overall"]["auc"])
    for row in rows:
        cells = [
            str(row["block"]),
            str(row["t"]),
            _fmt(row["val"]["overall"]["acc"]),
            _fmt(row["val"]["overall"]["auc"]),
            _fmt(row["test"]["overall"]["acc"]),
            _fmt(row["test"]["overall"]["auc"]),
        ]
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
    fig, axes = plt.subplots(
        2, 2, figsize=(max(6.0, 0.5 * len(ts) + 3), max(4.0, 0.35 * len(blocks) * 2 + 2)), squeeze=False
    )
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


def ablation_command(args: argparse.Namespace, ts: list[int]) -> str:
    """The command written at the top of the table: what regenerates it (and, with --check, checks it)."""
    return " ".join(
        [
            "dermbench fedd ablate",
            *(
                f"--{k.replace('_', '-')} {v}"
                for k, v in (
                    ("dataset", args.dataset),
                    ("profile", args.profile),
                    ("seed", args.seed),
                    ("test_set", args.test_set),
                )
                if v is not None
            ),
            *(f"--set {json.dumps(s)}" for s in args.set or []),
            "--ts",
            *map(str, ts),
            *(["--blocks", *map(str, args.blocks)] if args.blocks else []),
        ]
    )


def ablation_title(cfg: dict) -> str:
    return f"FEDD block x t ablation: {cfg['dataset']} ({cfg['profile']} profile, seed {cfg['seed']})"


def tone_groups(rows: list[dict]) -> list[str]:
    return sorted({g for r in rows for g in r["test"] if g != "overall"})


def ablation_config(args: argparse.Namespace) -> dict:
    flags = {
        "method": "fedd",
        "dataset": args.dataset,
        "seed": args.seed,
        "profile": args.profile,
        "device": args.device,
    }
    sets = list(args.set or [])
    if args.data_root:
        sets.append(f"data.root={json.dumps(args.data_root)}")
    return resolve_config(file=args.config, sets=sets, flags=flags)


def cmd_ablate(args: argparse.Namespace) -> int:
    cfg = ablation_config(args)
    if args.check:
        return check_ablation(args, cfg)
    check_settings(cfg.get("fedd") or {})  # a bad setting or an absent paper backbone stops before any data
    console = Console()
    device = choose_device(cfg["device"])
    cfg = {**cfg, "device": device.type}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    datasets = DatasetPool(cfg, ())
    ctx = RunContext(
        config=cfg, device=device, work_dir=out, cache_dir=out, console=console, datasets=datasets
    )
    train = datasets.load(cfg["dataset"], "train")
    val = datasets.load(cfg["dataset"], "val")
    test_set = chosen_test_set(args, cfg, datasets)
    test = datasets.load(test_set.dataset, test_set.split, as_name=test_set.name)
    if train.num_classes != 2:
        raise ConfigError("dermbench fedd ablate: FEDD is a binary probe; use task malignant")
    settings = check_settings(ctx.hparams("fedd"))
    steps = 1000 if settings["model"] == "tiny" else None
    if steps is None:
        steps = int(backbone(ctx, settings, train)[0].scheduler.config.num_train_timesteps)
    ts = grid(args, steps)
    rows, source = ablate(
        ctx,
        settings,
        train,
        val,
        test,
        blocks=args.blocks,
        ts=ts,
        seed=seed_for(int(cfg["seed"]), "fedd-probe"),
    )
    name = args.name or f"fedd-ablation-{cfg['dataset']}"
    title = ablation_title(cfg)
    (out / f"{name}.md").write_text(
        markdown(
            rows,
            title=title,
            source=source,
            test_name=test_set.name,
            groups=tone_groups(rows),
            command=ablation_command(args, ts),
        ),
        encoding="utf-8",
    )
    (out / f"{name}.json").write_text(
        json.dumps(
            {"config": cfg, "backbone": source, "test_set": test_set.name, "rows": rows},
            indent=1,
            default=str,
        ),
        encoding="utf-8",
    )
    heat_map(rows, out / f"{name}.png", title=title)
    console.print(f"wrote {out / f'{name}.md'}, {out / f'{name}.json'} and {out / f'{name}.png'}")
    return 0


def chosen_test_set(args: argparse.Namespace, cfg: dict, datasets: DatasetPool):
    """--test-set, or the run's first test set."""
    chosen = [t for t in datasets.test_sets if args.test_set in (None, t.name)]
    if not chosen:
        raise ConfigError(
            f"--test-set {args.test_set!r} is not a test set of this run "
            f"({', '.join(t.name for t in datasets.test_sets)})"
        )
    return chosen[0]


def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} of a nested config, for naming the settings that differ."""
    if not isinstance(config, dict) or not config:
        return {prefix: config}
    out: dict[str, Any] = {}
    for key, value in config.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _diff(path: Path, committed: str, expected: str) -> str:
    return "".join(
        difflib.unified_diff(
            committed.splitlines(keepends=True),
            expected.splitlines(keepends=True),
            fromfile=f"{path} (committed)",
            tofile=f"{path} (from its records)",
        )
    )


def check_ablation(args: argparse.Namespace, cfg: dict) -> int:
    """`fedd ablate --check`: the committed table is current with its JSON (the probes' results, as
    the records are an ablation table's), and the JSON was made with this command's settings, t grid,
    blocks and test set. Nothing is trained: the probes are not rerun (the workflow reruns them)."""
    out = Path(args.out)
    name = args.name or f"fedd-ablation-{cfg['dataset']}"
    md_path, json_path = out / f"{name}.md", out / f"{name}.json"
    missing = [str(p) for p in (md_path, json_path) if not p.is_file()]
    if missing:
        print(f"{md_path}: STALE: {', '.join(missing)} missing; regenerate it with the command it names")
        return 1
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
        recorded, rows, source, test_name = data["config"], data["rows"], data["backbone"], data["test_set"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{json_path}: not a fedd ablate result ({type(exc).__name__}: {exc})") from None
    # the device only where asked for: `auto` is whatever the machine that made it had
    device = recorded.get("device") if args.device in (None, "auto") else choose_device(args.device).type
    cfg = {**cfg, "device": device}
    problems = []
    if settings_digest(cfg) != settings_digest(recorded):
        ours, theirs = _flat(cfg), _flat(recorded)
        keys = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        problems.append(f"{json_path} was made with other settings ({', '.join(keys)})")
    settings = check_settings(cfg.get("fedd") or {})
    if args.ts:
        ts = [int(t) for t in args.ts]
    elif settings["model"] == "tiny":
        ts = grid(args, 1000)
    else:
        raise ConfigError(
            "fedd ablate --check: give --ts (the command at the top of the table names them); without it "
            "the t grid depends on the backbone's schedule, which --check does not load"
        )
    blocks = list(args.blocks) if args.blocks else sorted({int(r["block"]) for r in rows})
    if [(int(r["block"]), int(r["t"])) for r in rows] != [(b, t) for t in ts for b in blocks]:
        problems.append(
            f"{json_path} holds other (block, t) pairs than --ts {' '.join(map(str, ts))}"
            + (f" --blocks {' '.join(map(str, blocks))}" if args.blocks else "")
        )
    expected_test = chosen_test_set(args, cfg, DatasetPool(cfg, ())).name
    if test_name != expected_test:
        problems.append(f"{json_path} scored test set {test_name!r}, the command scores {expected_test!r}")
    expected = markdown(
        rows,
        title=ablation_title(cfg),
        source=source,
        test_name=test_name,
        groups=tone_groups(rows),
        command=ablation_command(args, ts),
    )
    committed = md_path.read_text(encoding="utf-8")
    if committed != expected:
        sys.stdout.write(_diff(md_path, committed, expected))
        problems.append(f"{md_path} differs from the table its JSON gives")
    if problems:
        print(f"{md_path}: STALE: " + "; ".join(problems) + ". Regenerate it with the command it names.")
        return 1
    print(f"{md_path}: current (table and JSON agree with the command; the probes are not rerun)")
    return 0


def curve_rows(roots: list[Path]) -> list[dict[str, Any]]:
    """One row per finished FEDD run on the data-efficiency protocol and test set: dataset, fraction,
    seed, test set, AUC and accuracy overall and per tone3 group."""
    rows = []
    for run_dir in scan_runs(roots).finished:
        record = read_record(run_dir / METRICS_FILE)
        fraction = ((record.methods or {}).get("fedd") or {}).get("fedd_fraction")
        if record.method != "fedd" or fraction is None:
            continue
        for test_set, ev in record.eval.items():
            row = {
                "dataset": record.dataset,
                "fraction": int(fraction),
                "seed": record.seed,
                "test_set": test_set,
                "auc": ev.overall.get("auc"),
                "acc": ev.overall.get("acc"),
            }
            for group, metrics in ev.groups.get("tone3", {}).items():
                row[f"auc {group}"] = metrics.get("auc")
            rows.append(row)
    return rows


def curve_tables(frame, runs: list[str], out_arg: str) -> list[tuple[Path, str, Any, list[str], str, str]]:
    """Per (dataset, test set): the markdown file, its text, the per-fraction stats, the columns, the
    dataset and the test set."""
    out = Path(out_arg)
    tables = []
    for (dataset, test_set), sub in frame.groupby(["dataset", "test_set"], sort=True):
        columns = [c for c in ("auc", "auc A", "auc B", "auc C", "acc") if c in sub]
        stats = sub.groupby("fraction")[columns].agg(["mean", "std", "count"])
        lines = [
            f"# FEDD data-efficiency curve: `{dataset}`, test set `{test_set}`",
            "",
            f"Mean ± sd over seeds of finished `fedd` runs with `fedd_fraction` under {', '.join(runs)} "
            "(ROC-AUC; accuracy at the validation threshold). Regenerate with "
            f"`dermbench fedd curve --runs {' '.join(runs)} --out {out_arg}`.",
            "",
            "| fraction (%) | seeds | " + " | ".join(columns) + " |",
            "|" + "---|" * (len(columns) + 2),
        ]
        for fraction, row in stats.iterrows():
            cells = []
            for c in columns:
                mean, sd = row[(c, "mean")], row[(c, "std")]
                cells.append("–" if mean != mean else (f"{mean:.3f}" + ("" if sd != sd else f" ± {sd:.3f}")))
            lines.append(f"| {fraction} | {int(row[(columns[0], 'count')])} | " + " | ".join(cells) + " |")
        if dataset == "ddi" and test_set == "ddi":
            lines += [
                "",
                "FEDD's reported ROC-AUC (supplementary Fig. 2, as read from the author's thesis chapter; "
                "the main text gives no number): "
                + ", ".join(f"{f} %: {v}" for f, v in PAPER_AUC.items())
                + "; 81 % accuracy at 10 % (abstract).",
            ]
        path = (out / f"fedd-curve-{dataset}-{test_set}").with_suffix(".md")
        tables.append((path, "\n".join(lines) + "\n", stats, columns, dataset, test_set))
    return tables


def cmd_curve(args: argparse.Namespace) -> int:
    """AUC against the training fraction (FEDD's data-efficiency curve) from finished run records;
    with --check, compare the committed tables with the records instead (the plots are not compared)."""
    rows = curve_rows([Path(r) for r in args.runs])
    if not rows:
        raise ConfigError(
            f"no finished fedd run with data.options.fedd_fraction under {', '.join(args.runs)}"
        )
    tables = curve_tables(pd.DataFrame(rows), list(args.runs), args.out)
    if args.check:
        return check_curve(
            tables, Path(args.out), f"dermbench fedd curve --runs {' '.join(args.runs)} --out {args.out}"
        )
    import matplotlib  # noqa: PLC0415 (plotting only here)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    Path(args.out).mkdir(parents=True, exist_ok=True)
    written = []
    for path, text, stats, columns, dataset, test_set in tables:
        path.write_text(text, encoding="utf-8")
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for c in [c for c in columns if c.startswith("auc")]:
            ax.errorbar(
                stats.index,
                stats[(c, "mean")],
                yerr=stats[(c, "std")].fillna(0),
                marker="o",
                capsize=3,
                label=c.replace("auc", "AUC").replace("AUC ", "AUC tone "),
            )
        if dataset == "ddi" and test_set == "ddi":
            ax.plot(
                list(PAPER_AUC),
                list(PAPER_AUC.values()),
                "k--",
                marker="s",
                label="FEDD paper (supp. Fig. 2)",
            )
        ax.set_xlabel("training fraction (%)")
        ax.set_ylabel("ROC-AUC")
        ax.set_title(f"{dataset}: {test_set}")
        ax.set_xticks(sorted(stats.index))
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path.with_suffix(".png"), dpi=120)
        plt.close(fig)
        written += [path, path.with_suffix(".png")]
    Console().print("wrote " + ", ".join(map(str, written)))
    return 0


def check_curve(tables: list, out: Path, command: str) -> int:
    """Each curve table current with the records, and no committed curve table without records."""
    stale = []
    for path, text, *_ in tables:
        committed = path.read_text(encoding="utf-8") if path.is_file() else None
        if committed is None:
            stale.append(f"{path} is missing")
        elif committed != text:
            sys.stdout.write(_diff(path, committed, text))
            stale.append(f"{path} differs from its records")
    made = {path for path, *_ in tables}
    stale += [
        f"{path} has no records any more" for path in sorted(out.glob("fedd-curve-*.md")) if path not in made
    ]
    if stale:
        print("fedd curve is STALE: " + "; ".join(stale) + f". Regenerate with `{command}`.")
        return 1
    print(f"fedd curve is current ({len(tables)} table(s) compared with the records; plots not compared)")
    return 0


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None


def _mults(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    return tuple(int(v) if v == int(v) else v for v in values)


def cmd_convert_adm(args: argparse.Namespace) -> int:
    """Convert an ADM checkpoint; the architecture from the flags (defaults: the 256 px
    unconditional model) with the widths read from the tensors."""
    given = {
        key: value
        for key, value in {
            "image_size": args.image_size,
            "num_channels": args.num_channels,
            "num_res_blocks": args.num_res_blocks,
            "attention_resolutions": args.attention_resolutions,
            "channel_mult": args.channel_mult,
            "num_heads": args.num_heads,
            "num_head_channels": args.num_head_channels,
            "use_scale_shift_norm": args.use_scale_shift_norm,
            "resblock_updown": args.resblock_updown,
            "learn_sigma": args.learn_sigma,
            "use_new_attention_order": args.use_new_attention_order,
        }.items()
        if value is not None
    }
    out = Path(args.out) if args.out else adm.default_folder()
    adm.check_out(out)
    state = adm.read_checkpoint(Path(args.checkpoint))
    config = adm.infer_config(
        state, adm.ADMConfig(**{k: v for k, v in given.items() if k not in ("num_channels", "learn_sigma")})
    )
    config = replace(
        config, **{k: given[k] for k in ("num_channels", "learn_sigma", "use_scale_shift_norm") if k in given}
    )
    info = adm.convert_checkpoint(Path(args.checkpoint), out, config, state=state)
    print(
        f"converted {args.checkpoint} ({info['parameters'] / 1e6:.1f} M parameters, {info['tensors']} "
        "tensors, "
        f"{info['decoder_blocks']} decoder blocks) to {out}"
    )
    if out.resolve() == adm.default_folder().resolve():
        print("`dermbench run --method fedd --profile paper` uses it (fedd.model: adm-imagenet256-uncond)")
    else:
        print(f"use it with --set fedd.model={out}")
    return 0


def _bool(text: str) -> bool:
    if str(text).lower() in ("1", "true", "yes"):
        return True
    if str(text).lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("fedd", help="FEDD tools: the decoder block x t ablation")
    sub = parser.add_subparsers(dest="fedd_command", metavar="COMMAND")
    p = sub.add_parser(
        "ablate",
        help="probe every decoder block at every t; heat map and table",
        description="FEDD's block x t sweep (paper Fig. 6) on a run's train/val/test splits.",
    )
    p.add_argument("--dataset", help="training dataset (default synthderm)")
    p.add_argument("--profile", help="tiny or paper")
    p.add_argument("--config", type=Path, help="YAML file of settings")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a setting, as for dermbench run")
    p.add_argument("--seed", type=int, help="seed of the probes (and the run config)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--data-root", help="folder holding the datasets")
    p.add_argument("--blocks", type=int, nargs="+", metavar="N", help="decoder blocks (default: all)")
    p.add_argument(
        "--ts", type=int, nargs="+", metavar="T", help="diffusion steps (default: 0, --t-step, ...)"
    )
    p.add_argument("--t-step", type=int, default=50, help="step of the t grid (default 50)")
    p.add_argument("--t-max", type=int, help="largest t of the grid (default: the schedule's last step)")
    p.add_argument("--test-set", help="the test set to score (default: the protocol's first)")
    p.add_argument(
        "--out", default="leaderboards/fedd", metavar="DIR", help="where the table, JSON and PNG go"
    )
    p.add_argument("--name", help="file name without extension (default fedd-ablation-<dataset>)")
    p.add_argument(
        "--check",
        action="store_true",
        help="write and train nothing; exit 1 when the committed table differs from its JSON or the JSON was "
        "made with other settings, t grid, blocks or test set than this command's",
    )
    p.set_defaults(func=cmd_ablate)
    c = sub.add_parser(
        "curve",
        help="AUC against the training fraction from fedd runs on the data-efficiency protocol",
        description="Reads finished `fedd` run records with data.options.fedd_fraction and writes a "
        "markdown table and a plot per dataset and test set (with FEDD's published DDI "
        "numbers beside DDI's).",
    )
    c.add_argument("--runs", nargs="+", required=True, metavar="DIR", help="directories holding run records")
    c.add_argument("--out", default="leaderboards/fedd", metavar="DIR")
    c.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when a committed curve table differs from the records (plots not "
        "compared)",
    )
    c.set_defaults(func=cmd_curve)
    a = sub.add_parser(
        "convert-adm",
        help="a guided-diffusion ADM checkpoint to the folder fedd.model loads",
        description="Convert a guided-diffusion ADM checkpoint (default architecture: the ImageNet "
        "256x256 unconditional model, 256x256_diffusion_uncond.pt) to a diffusers "
        "UNet2DModel folder; every tensor is checked against the architecture. Fetch "
        f"the checkpoint with: curl -L -o {adm.CHECKPOINT} {adm.CHECKPOINT_URL}",
    )
    a.add_argument("checkpoint", metavar="CKPT", help="the .pt file")
    a.add_argument(
        "out",
        metavar="OUT",
        nargs="?",
        help="new folder to write (default: $DERMBENCH_CACHE/models/adm-imagenet256-uncond, where "
        "--profile paper looks)",
    )
    a.add_argument("--image-size", type=int, help="default 256")
    a.add_argument("--num-channels", type=int, help="default: read from the checkpoint")
    a.add_argument("--num-res-blocks", type=int, help="default 2")
    a.add_argument("--attention-resolutions", type=_ints, help="pixels, comma-separated (default 32,16,8)")
    a.add_argument(
        "--channel-mult", type=_mults, help="comma-separated (default: guided-diffusion's for the size)"
    )
    a.add_argument("--num-heads", type=int, help="used when --num-head-channels is -1 (default 4)")
    a.add_argument("--num-head-channels", type=int, help="default 64")
    a.add_argument("--use-scale-shift-norm", type=_bool, help="default: read from the checkpoint")
    a.add_argument("--resblock-updown", type=_bool, help="default true")
    a.add_argument("--learn-sigma", type=_bool, help="default: read from the checkpoint")
    a.add_argument("--use-new-attention-order", type=_bool, help="default false")
    a.set_defaults(func=cmd_convert_adm)
    parser.set_defaults(func=lambda _args: parser.print_help() or 2)
