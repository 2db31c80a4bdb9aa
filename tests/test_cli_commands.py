"""The command line imports only the command it runs (the others pull in torch, timm or
diffusers), and still lists every command in its help and for a typo; `--help`, `--version` and
`list methods` import no command module, no plugin and no torch; a method's commands come from its
plugin through the dermbench_add_commands hook."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from dermbench.cli import COMMANDS, main


def _imported_after(argv: list[str], *, run: bool = False, prefix: str = "dermbench.cli.") -> set[str]:
    """The modules named `prefix...` (and torch, if imported) after building the parser for `argv`,
    or with `run` after running the command."""
    call = "main(sys.argv[1:])" if run else "build_parser(sys.argv[1:])"
    code = (
        f"import sys; from dermbench.cli import build_parser, main; {call}; "
        f"print('\\n'.join(m for m in sys.modules if m.startswith({prefix!r}) or m == 'torch'), "
        "file=sys.stderr)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True
    ).stderr
    return set(out.split())


def _imported_after_parsing(argv: list[str]) -> set[str]:
    return _imported_after(argv) - {"torch"}


def test_a_command_imports_only_its_own_module():
    assert _imported_after_parsing(["--verbose", "cite", "--help-not-parsed-here"]) == {"dermbench.cli.cite"}
    assert _imported_after_parsing(["leaderboard", "--check"]) == {"dermbench.cli.leaderboard"}


def test_help_and_a_typo_list_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out
    assert all(command in listed for command in COMMANDS)
    with pytest.raises(SystemExit) as exc:
        main(["leaderbord"])
    assert exc.value.code == 2
    assert "invalid choice: 'leaderbord'" in capsys.readouterr().err


def test_help_version_and_list_methods_import_no_command_module_plugin_or_torch():
    assert _imported_after(["--help-is-not-parsed-here"], prefix="dermbench.") <= {
        "dermbench.cli",
        "dermbench.errors",
        "dermbench.hookspecs",
        "dermbench.plugins",
    }
    listed = _imported_after(["list", "methods"], run=True, prefix="dermbench.")
    assert "dermbench.cli.listing" in listed
    assert not {m for m in listed if m.startswith("dermbench.methods.") or m == "torch"}, listed


def test_the_help_table_says_what_each_commands_module_says():
    for name, (module, help_text) in COMMANDS.items():
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).register(sub)
        (action,) = [a for a in sub._choices_actions if a.dest == name]
        assert action.help == help_text, name


def test_fedds_commands_come_from_its_plugin_alone():
    imported = _imported_after(["fedd", "curve", "--runs", "x"], prefix="dermbench.methods.")
    assert "dermbench.methods.fedd.commands" in imported
    assert {m for m in imported if m != "torch"} <= {
        "dermbench.methods",
        *(m for m in imported if m.startswith("dermbench.methods.fedd")),
    }, imported


def test_list_methods_names_hooks_only_when_asked(capsys):
    assert main(["list", "methods"]) == 0
    plain = capsys.readouterr().out
    assert "fedd" in plain and "predict" not in plain
    assert main(["list", "methods", "--hooks"]) == 0
    assert "dermbench_add_commands" in capsys.readouterr().out.replace("\n", "")
