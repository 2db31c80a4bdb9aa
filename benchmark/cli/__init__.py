"""The `dermbench` command line: one module per command group, each adding itself through a
`register(subparsers)` function; COMMANDS names each command's module.

The top layer: it may import anything in dermbench, and nothing imports it.

Errors go to stderr (a command's results to stdout, so scripts can read them): a DermbenchError
as one line; a plugin's own exception (a PluginError's cause) with its traceback only under
`dermbench --verbose`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from rich.console import Console
from rich.markup import escape

from dermbench import __version__
from dermbench.errors import DermbenchError
from dermbench.plugins import PluginError

#: each command and the module that registers it, in the order `dermbench --help` lists them
COMMANDS = {
    "run": "dermbench.cli.run",
    "evaluate": "dermbench.cli.evaluate",
    "counterfactual": "dermbench.cli.counterfactual",
    "list": "dermbench.cli.listing",
    "cite": "dermbench.cli.cite",
    "new-method": "dermbench.cli.scaffold",
    "sweep": "dermbench.cli.sweep",
    "leaderboard": "dermbench.cli.leaderboard",
    "ablation": "dermbench.cli.ablation",
    "report": "dermbench.cli.report",
    "data": "dermbench.cli.data",
    "tone": "dermbench.cli.tone",
    "fedd": "dermbench.cli.fedd",
    "drift": "dermbench.cli.drift",
    "records": "dermbench.cli.records",
    "diffusion": "dermbench.cli.diffusion",
}

console = Console()
#: errors and interruptions: stderr, so stdout holds only what a command produces
err_console = Console(stderr=True)


def _command_of(argv: list[str] | None) -> str | None:
    """The command `argv` names (its first word that is not an option), when it is a known one."""
    words = [a for a in (argv or []) if not a.startswith("-")]
    return words[0] if words and words[0] in COMMANDS else None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv`: with a known command, only that command's module is imported (the
    others pull in torch, timm or diffusers, seconds each before any work starts); without one
    (help, a typo), every command, so help lists them all and a typo gets the list of choices."""
    parser = argparse.ArgumentParser(
        prog="dermbench", description="Skin-tone fairness benchmark for skin-lesion classifiers."
    )

    parser.add_argument("--version", action="version", version=f"dermbench {__version__}")
    parser.add_argument(
        "--verbose", action="store_true", help="on a plugin's failure, print its Python traceback too"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    command = _command_of(argv)
    for module in [COMMANDS[command]] if command else COMMANDS.values():
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DermbenchError as exc:
        report_error(exc, verbose=args.verbose)
        return 2
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]: rerun the same command to resume from the last checkpoint")
        return 130


def report_error(exc: DermbenchError, *, verbose: bool) -> None:
    """One line on stderr; for a plugin that raised, its traceback under --verbose (a harness
    error's message says all there is, a plugin's traceback is for its author)."""
    cause = exc.__cause__ if isinstance(exc, PluginError) else None
    if verbose and cause is not None:
        err_console.print("".join(traceback.format_exception(cause)), end="", markup=False, highlight=False)
    err_console.print(
        f"[bold red]error:[/] {escape(str(exc))}", highlight=False
    )  # a plugin's text is not markup
    if cause is not None and not verbose:
        err_console.print(
            "(run `dermbench --verbose ...` to see the plugin's traceback)", highlight=False, markup=False
        )
