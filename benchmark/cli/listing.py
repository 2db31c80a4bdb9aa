"""`dermbench list methods|datasets`: what can be selected and where it comes from.

`list methods` reads names, packages and versions from the built-in table and the entry points'
metadata, importing no plugin (it answers in well under a second); `--hooks` imports each one
to add the hooks it implements (seconds: the diffusion methods import torch and diffusers).
`list datasets` imports each dataset class for its tasks."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

from dermbench.errors import DermbenchError
from dermbench.plugins import dataset_refs, hooks_of, load_target, method_refs
from dermbench.results.citations import as_bibtex, dataset_references, method_references


def methods_table(local: tuple[str, ...] = (), *, hooks: bool = False) -> Table:
    """The methods; with `hooks`, each plugin imported for the hooks it implements."""
    table = Table(title="methods")
    for col in ("name", *(["hooks"] if hooks else []), "package", "version", "source"):
        table.add_column(col)
    for name, ref in sorted(method_refs(local).items()):
        table.add_row(name, *([_hooks(ref.target)] if hooks else []), ref.package, ref.version, ref.source)
    return table


def _hooks(target: str) -> str:
    try:
        return ", ".join(hooks_of(load_target(target))) or "(none)"
    except DermbenchError as exc:
        return f"[red]cannot load: {exc}[/]"


def datasets_table(local: tuple[str, ...] = ()) -> Table:
    table = Table(title="datasets")
    for col in ("name", "tasks", "needs files", "package", "version", "source"):
        table.add_column(col)
    for name, ref in sorted(dataset_refs(local).items()):
        try:
            cls = load_target(ref.target)
            tasks, needs = ", ".join(cls.tasks), "yes" if cls.requires_root else "no"
        except DermbenchError as exc:
            tasks, needs = f"[red]cannot load: {exc}[/]", "?"
        table.add_row(name, tasks, needs, ref.package, ref.version, ref.source)
    return table


def cmd_list(args: argparse.Namespace) -> int:
    local = tuple(args.plugin or ())
    if args.cite:  # the BibTeX of everything listed (`dermbench cite` narrows it to one run)
        refs = (
            method_references("+".join(sorted(method_refs(local))), local)
            if args.what == "methods"
            else dataset_references(sorted(dataset_refs(local)), local)
        )
        sys.stdout.write(as_bibtex(refs))
        return 0
    table = methods_table(local, hooks=args.hooks) if args.what == "methods" else datasets_table(local)
    Console(width=max(Console().width, 120)).print(table)
    return 0


def register(sub) -> None:
    p = sub.add_parser("list", help="list the methods or datasets that can be selected")
    p.add_argument("what", choices=("methods", "datasets"))
    p.add_argument("--plugin", action="append", metavar="MODULE:OBJECT", help="also load this plugin")
    p.add_argument(
        "--cite", action="store_true", help="print their references as BibTeX instead of the table"
    )
    p.add_argument(
        "--hooks",
        action="store_true",
        help="methods: import each plugin and list the hooks it implements (seconds)",
    )
    p.set_defaults(func=cmd_list)
