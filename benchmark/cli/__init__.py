"""The `dermbench` command line: one module per command group, each adding itself through a
`register(subparsers)` function listed in COMMAND_MODULES.

The top layer: it may import anything in dermbench, and nothing imports it.
"""

from __future__ import annotations

import argparse
import importlib

from rich.console import Console

from dermbench import __version__
from dermbench.errors import DermbenchError

COMMAND_MODULES = (
    "dermbench.cli.run",
    "dermbench.cli.listing",
    "dermbench.cli.scaffold",
    "dermbench.cli.sweep",
    "dermbench.cli.leaderboard",
    "dermbench.cli.report",
    "dermbench.cli.data",
    "dermbench.cli.tone",
)

console = Console()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dermbench", description="Skin-tone fairness benchmark for skin-lesion classifiers."
    )

    parser.add_argument("--version", action="version", version=f"dermbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DermbenchError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: rerun the same command to resume from the last checkpoint")
        return 130

