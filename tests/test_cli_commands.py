"""The command line imports only the command it runs (the others pull in torch, timm or
diffusers), and still lists every command in its help and for a typo."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dermbench.cli import COMMANDS, main


def _imported_after_parsing(argv: list[str]) -> set[str]:
    code = (
        "import sys; from dermbench.cli import build_parser; build_parser(sys.argv[1:]); "
        "print('\\n'.join(m for m in sys.modules if m.startswith('dermbench.cli.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True
    ).stdout
    return set(out.split())


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
