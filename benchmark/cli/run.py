"""`dermbench run`: one method on one dataset, then a table per test set."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from dermbench import config as configuration
from dermbench.audit import counterfactual_for_run, counterfactual_of_method
from dermbench.config.catalog import experiment_names, experiment_path
from dermbench.errors import ConfigError, DermbenchError
from dermbench.results.counterfactual import read_counterfactual
from dermbench.results.formatting import fmt
from dermbench.results.record_schema import Record, as_json_values
from dermbench.results.records import METRICS_FILE, read_record
from dermbench.runner import RunResult, dry_run, prepare_run, run_experiment


def summary_table(record: Record, *, scheme: str = "tone3") -> list[Table]:
    """One rich table per test set: overall and per-group metrics, then the gaps."""
    tables = []
    for name, ev in record.eval.items():
        threshold = "argmax" if ev.threshold is None else fmt(ev.threshold)
        t = Table(
            title=f"{name} (n={ev.n}, threshold {threshold}, tones: "
            f"{', '.join(f'{k} {v}' for k, v in ev.tone_source.items())})"
        )
        for col in ("group", "n", "acc", "bacc", "tpr", "tnr", "f1", "auc"):
            t.add_column(col, justify="right" if col != "group" else "left")
        rows = [("overall", ev.overall)] + list(ev.groups.get(scheme, {}).items())
        for label, m in rows:
            t.add_row(str(label), *[fmt(m.get(k)) for k in ("n", "acc", "bacc", "tpr", "tnr", "f1", "auc")])
        fair = ev.fairness.get(scheme)
        if fair is not None:
            t.caption = (
                f"{scheme} gaps: EOpp0 {fmt(fair.eopp0)}  EOpp1 {fmt(fair.eopp1)}  "
                f"EOdd {fmt(fair.eodd)}  AUC gap {fmt(fair.gap_auc)}"
            )
        tables.append(t)
    return tables


def print_record(record: Record, console: Console) -> None:
    """A finished record in the terminal: its per-tone tables, skipped test sets and exclusions
    (what `dermbench run` and `dermbench evaluate` both show)."""
    for table in summary_table(record):
        console.print(table)
    for name, why in record.skipped_test_sets.items():
        console.print(f"[yellow]skipped[/] {name}: {why}")
    for line in exclusion_lines(record):
        console.print(Text.assemble(("excluded ", "yellow"), line))


def exclusion_lines(record: Record) -> list[str]:
    """Every count of samples left out, training and validation first, then per test set, so a
    summary never hides dropped data (e.g. unreadable images under data.on_error=skip)."""
    run_level = record.excluded or {}
    lines = []
    for key, reasons in run_level.items():
        where = key if key in ("train", "val") else f"{record.dataset}, {key}"
        lines += [f"from {where}: {count} sample(s), {reason}" for reason, count in reasons.items() if count]
    for name, ev in record.eval.items():
        for key, reasons in ev.excluded.items():
            if run_level.get(key) == reasons:
                continue  # the training dataset's own pre-split count, said above
            where = name if key == "images" else f"{name}, {key}"
            lines += [
                f"from {where}: {count} sample(s), {reason}" for reason, count in reasons.items() if count
            ]
    return lines


def json_summary(result: RunResult, record: Record) -> dict:
    """What `dermbench run --json` prints: the run's identity, where its record is, whether it was
    reused, which plugin answered each hook, and the eval block of metrics.json as written."""
    values = as_json_values(record)
    keys = (
        "run_id",
        "method",
        "dataset",
        "task",
        "seed",
        "profile",
        "device",
        "hooks",
        "skipped_test_sets",
        "eval",
    )
    return {
        "path": str(result.run_dir.path),
        "metrics_file": str(result.run_dir.path / METRICS_FILE),
        "reused": result.reused,
        **{k: values.get(k) for k in keys},
    }


def config_file(args: argparse.Namespace) -> Path | None:
    """The settings file of the run: --config, or the packaged file of --experiment (one of them,
    since a config file is one layer; copy the experiment's file to change it as a whole)."""
    if args.protocol is not None:
        raise ConfigError(
            f"--protocol {args.protocol}: the packaged configs are experiments since 2026-12; "
            f"use --experiment {args.protocol}"
        )
    if args.experiment is None:
        return args.config
    path = experiment_path(args.experiment)
    if args.config is not None:
        raise ConfigError(
            f"--experiment {args.experiment} and --config {args.config} cannot be combined: change single "
            f"settings with --set, or copy {path} and pass the copy to --config"
        )
    return path


def _count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def print_dry_run(plan: dict, *, console: Console, as_json: bool) -> int:
    """`dermbench run --dry-run`: the resolved run, what it would load and build, the data sizes known
    up front; nothing read, trained or written."""
    if as_json:
        sys.stdout.write(json.dumps(plan, indent=2, default=str) + "\n")
        return 0
    console.print(
        f"[bold]dry run[/]: method {plan['method']}, dataset {plan['dataset']}, task {plan['task']}, "
        f"profile {plan['profile']}, seed {plan['seed']}, device {plan['device']}"
    )
    console.print("every setting checked; no data read, nothing trained or written")
    if plan["prerequisites"]:
        t = Table(title="weights and models it loads")
        for col in ("setting", "source", "status"):
            t.add_column(col, overflow="fold")
        for p in plan["prerequisites"]:
            t.add_row(str(p["setting"]), str(p["source"]), str(p["status"]))
        console.print(t)
    t = Table(title="models (built on the meta device)")
    for col in ("role", "architecture", "weights", "parameters", "trainable", "note"):
        t.add_column(col, justify="right" if col in ("parameters", "trainable") else "left", overflow="fold")
    for m in plan["models"]:
        t.add_row(
            m["role"], m["architecture"], m["weights"], _count(m["params"]), _count(m["trainable"]), m["note"]
        )
    console.print(t)
    t = Table(title="data (rows per split, as known before reading)")
    t.add_column("dataset")
    t.add_column("splits", overflow="fold")
    for name, sizes in plan["data"].items():
        shown = (
            ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in sizes.items())
            if isinstance(sizes, dict)
            else sizes
        )
        t.add_row(name, shown)
    console.print(t)
    missing = [p for p in plan["prerequisites"] if p.get("missing")]
    if missing:
        console.print(
            f"[yellow]{len(missing)} prerequisite(s) missing[/] "
            f"({', '.join(p['setting'] for p in missing)}): the run would "
            "stop before any data until they are fetched (commands above)"
        )
    settings = Text(configuration.dump(plan["config"]))
    console.print("[bold]resolved settings[/]")
    console.print(settings)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    console = Console(stderr=True) if args.json else Console()  # --json: stdout holds the JSON alone
    local = tuple(args.plugin or ())
    flags = {
        "method": args.method,
        "dataset": args.dataset,
        "seed": args.seed,
        "profile": args.profile,
        "device": args.device,
        "out": args.out,
        "task": args.task,
    }
    if args.data_root:
        args.set = [
            *(args.set or []),
            f"data.root={json.dumps(args.data_root)}",
        ]  # JSON is YAML: quoted as is
    cfg, plugins = prepare_run(file=config_file(args), sets=args.set or (), flags=flags, local=local)
    if args.dry_run:
        return print_dry_run(dry_run(cfg, plugins[0], local), console=console, as_json=args.json)
    result = run_experiment(
        cfg,
        plugins=plugins,
        local=local,
        force=args.force,
        console=console,
        before_done=counterfactual_of_method if args.counterfactual else None,
    )
    if args.counterfactual and result.reused and read_counterfactual(result.run_dir.path) is None:
        _counterfactual_of_reused(result, console)
    record = read_record(result.run_dir.path / METRICS_FILE)
    print_record(record, console)
    console.print(
        f"{'reused' if result.reused else 'ran'} {result.run_dir.path} "
        f"— run time {record.timing.total_s:.1f} s"
    )
    if args.json:
        sys.stdout.write(json.dumps(json_summary(result, record), indent=2) + "\n")
    return 0


def _counterfactual_of_reused(result: RunResult, console: Console) -> None:
    """--counterfactual on a finished run that has no test yet: from its saved backbone, as `dermbench
    counterfactual` does; a method with a model of its own needs the run trained again (--force)."""
    try:
        counterfactual_for_run(result.run_dir.path, console=console)
    except DermbenchError as exc:
        raise DermbenchError(
            f"{exc}. This finished run was reused, so its model was not trained here: add --force to "
            "train it again with the counterfactual test at its end"
        ) from None


def register(sub) -> None:
    p = sub.add_parser("run", help="train and evaluate one method on one dataset (default: erm on synthderm)")
    p.add_argument("--method", help="method name, or several joined by + (e.g. dermdiff+fairquantize)")
    p.add_argument("--dataset", help="training dataset (it names the test sets)")
    p.add_argument("--task", help="task of the dataset (default malignant)")
    p.add_argument("--config", type=Path, help="YAML file of settings")
    p.add_argument(
        "--experiment",
        metavar="NAME",
        help="a packaged experiment config (a paper's dataset, task, data options and test sets; "
        "docs/experiments.md), combinable with --set, --seed, --method: " + ", ".join(experiment_names()),
    )
    p.add_argument("--protocol", help=argparse.SUPPRESS)  # the old name of --experiment: an error saying so
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a setting, e.g. train.lr=0.01"
    )
    p.add_argument("--seed", type=int)
    p.add_argument("--profile", help="tiny (CPU, minutes) or paper (the method paper's settings)")
    p.add_argument("--device", help="auto, cpu, cuda or mps")
    p.add_argument("--out", help="directory for run records (default runs/)")
    p.add_argument("--data-root", help="folder holding one sub-folder per dataset (default $DERMBENCH_DATA)")
    p.add_argument(
        "--plugin", action="append", metavar="MODULE:OBJECT", help="load a method plugin from a module"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="redo a run even if a finished record exists (also the way past a damaged "
        "metrics.json): the run folder is emptied first",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check every setting and prerequisite, print the resolved settings, the models with their "
        "parameter counts and weight sources, and the data sizes; read no data, train nothing",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the run's summary as JSON on stdout (progress and tables go to stderr)",
    )
    p.add_argument(
        "--counterfactual",
        action="store_true",
        help="at the end of the run, re-render its SynthDerm test lesions on FST I-VI and score them with "
        "the method's own predict into counterfactual.json (docs/counterfactual.md); not a setting, so "
        "the run id is unchanged",
    )
    p.set_defaults(func=cmd_run)
