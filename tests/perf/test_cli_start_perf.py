"""How fast the CLI answers `--version`, `--help` and `list methods` (issue 29: under a second on an
idle 2-core machine, down from about 7 s), against what every start cost before: importing every
command's module (and FEDD's commands), as the parser that listed the commands did. Both are
measured here, as fresh processes in the same session on the same machine, so a loaded machine
slows both alike; the assertion is on the ratio, never on seconds.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from dermbench.cli import COMMANDS

#: what building the parser imported before: every command module, FEDD's `dermbench fedd` included
BEFORE = [module for module, _ in COMMANDS.values()] + ["dermbench.methods.fedd.commands"]
#: a start may cost at most this share of the old import time (measured: about 1 %, 0.08 s against 7.3 s)
MAX_RATIO = 1 / 5
ROUNDS = 3
_seconds: dict[str, float] = {}


def _start(benchmark, name: str, argv: list[str]) -> None:
    if benchmark.disabled:
        pytest.skip("benchmarks disabled: no timings to compare")
    benchmark.pedantic(
        lambda: subprocess.run(argv, check=True, capture_output=True), rounds=ROUNDS, iterations=1
    )
    _seconds[name] = benchmark.stats.stats.min
    benchmark.extra_info["seconds"] = _seconds[name]


@pytest.mark.benchmark(group="cli-start")
def test_import_of_every_command_module_baseline(benchmark) -> None:
    _start(benchmark, "before", [sys.executable, "-c", "; ".join(f"import {m}" for m in BEFORE)])


@pytest.mark.benchmark(group="cli-start")
@pytest.mark.parametrize(
    "argv", [["--version"], ["--help"], ["list", "methods"]], ids=["version", "help", "list-methods"]
)
def test_cli_start_is_a_fraction_of_the_old_import(benchmark, argv) -> None:
    _start(benchmark, " ".join(argv), [sys.executable, "-m", "dermbench.cli", *argv])
    if "before" not in _seconds:
        pytest.skip("the baseline did not run in this session")
    ratio = _seconds[" ".join(argv)] / _seconds["before"]
    benchmark.extra_info["ratio_to_before"] = ratio
    assert ratio <= MAX_RATIO, (
        f"dermbench {' '.join(argv)} took {_seconds[' '.join(argv)]:.2f}s, {ratio:.2f} of the old "
        f"import ({_seconds['before']:.2f}s)"
    )
