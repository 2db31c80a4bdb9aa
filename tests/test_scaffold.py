"""`dermbench new-method` makes a package that installs, is discovered, and passes its own test."""

import os
import subprocess
import sys

import pytest

from dermbench.cli import main
from dermbench.cli.scaffold import scaffold
from dermbench.errors import DermbenchError


@pytest.mark.slow  # starts subprocesses
def test_scaffolded_plugin_installs_and_passes_its_conformance_test(tmp_path, capsys):
    assert main(["new-method", "toneaware", "--dir", str(tmp_path)]) == 0
    root = tmp_path / "dermbench-toneaware"
    assert "pip install -e" in capsys.readouterr().out
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(root),
        ],
        check=True,
        capture_output=True,
    )
    assert list(site.glob("dermbench_toneaware-0.1.0.dist-info/entry_points.txt"))
    env = {**os.environ, "PYTHONPATH": str(site), "DERMBENCH_DISABLE_PLUGIN_AUTOLOAD": ""}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_scaffold_refuses_bad_names_and_existing_folders(tmp_path):
    with pytest.raises(DermbenchError, match="lower-case"):
        scaffold("My-Method", tmp_path)
    scaffold("fine", tmp_path)
    with pytest.raises(DermbenchError, match="already exists"):
        scaffold("fine", tmp_path)
