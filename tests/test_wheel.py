"""The distribution works when installed: sdist and wheel build (the wheel from the sdist, so the
sdist is complete), `twine check` passes on both, and the wheel installed into a fresh virtual
environment runs the default job and lists the methods, with its package data (profiles, split
files, the dataset README) and its console script.

Nothing is downloaded: the build uses this environment's setuptools (--no-isolation) and the
wheel is installed with --no-deps --no-index. Third-party packages (torch, ...) come from this
environment through a .pth file naming its site-packages folder: a .pth line is added to
sys.path, but .pth files inside that folder (the editable install's finder) are not processed,
so the source tree stays invisible; the test proves it through `dermbench.__file__`.
"""

from __future__ import annotations

import json
import os
import re
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from dermbench.plugins import BUILTIN_METHODS

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

#: the default job, small enough for a packaging check (the harness itself is tested elsewhere)
QUICK = [
    "--set",
    "train.epochs=1",
    "--set",
    "data.image_size=16",
    "--set",
    "model.backbone=test_resnet",
    "--set",
    "data.options={n_train: 160, n_val: 80, n_test: 80, n_test_ddi: 60, n_test_dermoscopic: 60}",
    "--set",
    "eval.n_boot=0",
]


def sh(*cmd: str | Path, cwd: Path, env: dict | None = None, timeout: int = 300) -> str:
    result = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def project_version() -> str:
    return re.search(r'^version = "(.*)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)


def test_the_wheel_installs_into_a_fresh_environment_and_runs(tmp_path):
    dist = tmp_path / "dist"
    sh(sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, ROOT, cwd=tmp_path)
    version = project_version()
    (sdist,) = dist.glob(f"dermbench-{version}.tar.gz")
    (wheel,) = dist.glob(f"dermbench-{version}-py3-none-any.whl")
    sh(sys.executable, "-m", "twine", "check", "--strict", sdist, wheel, cwd=tmp_path)

    venv = tmp_path / "venv"
    sh(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    sh(
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "--no-deps",
        "--no-index",
        wheel,
        cwd=tmp_path,
    )
    fresh_site = Path(
        sh(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).strip()
    )
    parents = [p for p in {sysconfig.get_paths()["purelib"], *site.getsitepackages()} if Path(p).is_dir()]
    (fresh_site / "_dermbench_test_parent_env.pth").write_text("".join(f"{p}\n" for p in parents))

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(
        DERMBENCH_CACHE=str(tmp_path / "cache"),
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        OMP_NUM_THREADS="1",
    )
    where = json.loads(
        sh(
            python,
            "-c",
            (
                "import json, dermbench, dermbench.methods, dermbench.datasets, dermbench.cli; "
                "from importlib.resources import files; d = files('dermbench.datasets'); "
                "print(json.dumps({'pkg': dermbench.__file__, 'methods': dermbench.methods.__file__, "
                "'datasets': dermbench.datasets.__file__, 'version': dermbench.__version__, "
                "'readme': d.joinpath('README.md').is_file(), "
                "'splits': sorted(p.name for p in d.joinpath('splits').iterdir()), "
                "'profiles': sorted("
                "p.name for p in files('dermbench.config').joinpath('profiles').iterdir()), "
                "'tiny_base': __import__('dermbench.diffusion.shipped', fromlist=['verify']).verify()}))"
            ),
            cwd=tmp_path,
            env=env,
        )
    )
    for module in ("pkg", "methods", "datasets"):  # the wheel's copy, not the source tree
        assert Path(where[module]).is_relative_to(fresh_site), where[module]
        assert not Path(where[module]).is_relative_to(ROOT), where[module]
    assert where["version"] == version and where["readme"]
    assert {"fitz17k-standard.csv", "fitz17k-standard.json"} <= set(where["splits"])
    assert {"base.yaml", "tiny.yaml", "paper.yaml"} <= set(where["profiles"])
    assert (
        len(where["tiny_base"]) == 20
    )  # the shipped diffusion bases are in the wheel, every checksum verified

    dermbench = venv / "bin" / "dermbench"  # the console script the wheel installed
    assert sh(dermbench, "--version", cwd=tmp_path, env=env).strip() == f"dermbench {version}"
    listed = sh(dermbench, "list", "methods", cwd=tmp_path, env={**env, "COLUMNS": "200"})
    assert all(re.search(rf"\b{name}\b", listed) for name in BUILTIN_METHODS), listed
    sh(dermbench, "run", "--out", tmp_path / "runs", "--device", "cpu", *QUICK, cwd=tmp_path, env=env)
    (record,) = (tmp_path / "runs").glob("erm_synthderm_s0_*/metrics.json")
    metrics = json.loads(record.read_text())
    assert metrics["config"]["train"]["epochs"] == 1 and metrics["plugins"]["erm"] == version
    assert set(metrics["references"]) == {
        "dermbench",
        "method erm",
        "dataset synthderm",
        "backbone test_resnet",
    }
    assert (record.parent / "done").is_file()
