"""The `dermbench` command line: one module per command group, each adding itself through a
`register(subparsers)` function; COMMANDS names each command's module and its help. A method
plugin adds commands of its own through the `dermbench_add_commands` hook (FEDD's `dermbench
fedd`); the CLI reaches plugins only through dermbench.plugins.

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
from dermbench.plugins import PluginError, add_plugin_commands

#: each built-in command, its module (which adds the command through `register(subparsers)`) and
#: its one-line help (the same words as the module's; tests/test_cli_commands.py compares them),
#: in the order `dermbench --help` lists them: help lists commands without importing a module
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("dermbench.cli.run", "train and evaluate one method on one dataset (default: erm on synthderm)"),
    "evaluate": (
        "dermbench.cli.evaluate",
        "score your own predictions file or model on a dataset's test sets (per-tone metrics, intervals, "
        "report), as an external row of the leaderboard",
    ),
    "counterfactual": (
        "dermbench.cli.counterfactual",
        "flip rate and per-tone scores of a run's model on its SynthDerm test lesions "
        "re-rendered on FST I-VI",
    ),
    "list": ("dermbench.cli.listing", "list the methods or datasets that can be selected"),
    "cite": ("dermbench.cli.cite", "BibTeX for what a run used (methods, datasets, backbone, dermbench)"),
    "new-method": ("dermbench.cli.scaffold", "scaffold an installable method plugin package"),
    "sweep": (
        "dermbench.cli.sweep",
        "run methods x datasets x seeds (idempotent; exit status 1 if any run failed)",
    ),
    "leaderboard": (
        "dermbench.cli.leaderboard",
        "aggregate run records into leaderboards (markdown, CSV, plot)",
    ),
    "ablation": ("dermbench.cli.ablation", "table and plot of test metrics against settings that runs vary"),
    "report": ("dermbench.cli.report", "per-tone report of one run (terminal and RUN_DIR/report.md)"),
    "data": ("dermbench.cli.data", "check, summarise, fetch and split datasets"),
    "tone": (
        "dermbench.cli.tone",
        "estimate skin tone for datasets without tone labels (ITA, tone detector)",
    ),
    "drift": (
        "dermbench.cli.drift",
        "compare recomputed run records with the committed ones (exit 1 when a value drifted)",
    ),
    "records": ("dermbench.cli.records", "check and seal finished run records"),
    "diffusion": ("dermbench.cli.diffusion", "the tiny diffusion bases shipped with dermbench"),
}
PLUGIN_COMMANDS_HELP = (
    "A method plugin may add commands of its own (hook dermbench_add_commands; `dermbench list methods "
    "--hooks` shows which do), e.g. `dermbench fedd --help`."
)

console = Console()
#: errors and interruptions: stderr, so stdout holds only what a command produces
err_console = Console(stderr=True)


def _command_of(argv: list[str]) -> str | None:
    """The command `argv` names: its first word that is not an option."""
    words = [a for a in argv if not a.startswith("-")]
    return words[0] if words else None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv`, importing only what it needs: a built-in command's module (the others
    pull in torch, timm or diffusers, seconds each before any work starts); without a command
    (`--help`, `--version`), no module: every command is listed from COMMANDS; another word, the
    method plugins' commands (`plugins.add_plugin_commands`), so a typo gets the list of choices."""
    parser = argparse.ArgumentParser(
        prog="dermbench",
        description="Skin-tone fairness benchmark for skin-lesion classifiers.",
        epilog=PLUGIN_COMMANDS_HELP,
    )

    parser.add_argument("--version", action="version", version=f"dermbench {__version__}")
    parser.add_argument(
        "--verbose", action="store_true", help="on a plugin's failure, print its Python traceback too"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    command = _command_of(argv or [])
    if command in COMMANDS:
        importlib.import_module(COMMANDS[command][0]).register(sub)
        return parser
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text)
    if command is not None:
        add_plugin_commands(sub, command)
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
