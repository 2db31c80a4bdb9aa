"""The GroupDRO worked example (docs/examples/groupdro.py), run as an outside plugin through the
CLI: its settings, its group weights, and an exact resume after an interruption."""

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from dermbench.cli import main
from dermbench.conformance import TINY_SETTINGS
from dermbench.train import trainer

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
TINY = [
    *TINY_SETTINGS,  # later settings win
    "eval.n_boot=20",
    "train.epochs=3",
    "groupdro.eta=0.5",  # large enough that the weights move visibly in three tiny epochs
]


@pytest.fixture
def groupdro(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    sys.modules.pop("groupdro", None)
    import groupdro

    yield groupdro
    sys.modules.pop("groupdro", None)


def command(out: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--plugin",
        "groupdro",
        "--method",
        "groupdro",
        "--device",
        "cpu",
        "--out",
        str(out),
        *sum([["--set", s] for s in [*TINY, *extra]], []),
    ]


def group_weights(run_dir: Path) -> dict[str, float]:
    (line,) = [ln for ln in (run_dir / "log.txt").read_text().splitlines() if "final group weights" in ln]
    return {g: float(q) for g, q in re.findall(r"(\w+)=([0-9.e-]+)", line)}


def test_group_weighted_loss_matches_a_hand_computation(groupdro):
    weights = groupdro.GroupWeights(2, eta=0.5)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 3.0]])
    batch = trainer.Batch(
        x=torch.zeros(4),
        y=torch.tensor([0, 0, 1, 1]),
        index=torch.arange(4),
        group=torch.tensor([0, 1, 1, -1]),
        scheme="tone2",
    )
    per_sample = torch.nn.functional.cross_entropy(logits, batch.y, reduction="none")
    light, dark = per_sample[0], (per_sample[1] + per_sample[2]) / 2  # the unknown sample is left out
    q = torch.tensor([0.5, 0.5]) * torch.exp(0.5 * torch.stack([light, dark]))
    q = q / q.sum()
    assert torch.allclose(weights.loss(logits, batch), q[0] * light + q[1] * dark)
    assert torch.allclose(weights.q, q) and weights.q[1] > weights.q[0]  # dark does worse: more weight


def test_groupdro_runs_through_the_cli_and_resumes_exactly(tmp_path, groupdro, monkeypatch):
    assert main(command(tmp_path / "ref")) == 0
    (ref_dir,) = (tmp_path / "ref").iterdir()
    reference = json.loads((ref_dir / "metrics.json").read_text())
    assert reference["config"]["groupdro"] == {"eta": 0.5, "groups": "tone2"}
    ref_weights = group_weights(ref_dir)
    assert set(ref_weights) == {"light", "dark"} and ref_weights["light"] != ref_weights["dark"]

    real_score, calls = trainer.validation_score, []

    def killed_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # epoch 2 has trained (and moved the weights) but is not checkpointed
            raise KeyboardInterrupt
        return real_score(*args, **kwargs)

    monkeypatch.setattr(trainer, "validation_score", killed_in_epoch_two)
    assert main(command(tmp_path / "run")) == 130
    monkeypatch.setattr(trainer, "validation_score", real_score)
    (run_dir,) = (tmp_path / "run").iterdir()
    saved = torch.load(run_dir / "work" / "checkpoints" / "groupdro.pt", weights_only=True)
    assert saved["state"]["epoch"] == 1 and saved["method_state"]["q"].shape == (2,)

    assert main(command(tmp_path / "run")) == 0
    assert "resuming groupdro from its checkpoint after epoch 1" in (run_dir / "log.txt").read_text()
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert json.dumps(resumed["eval"], sort_keys=True) == json.dumps(reference["eval"], sort_keys=True)
    assert group_weights(run_dir) == ref_weights


def test_the_group_scheme_is_a_setting(tmp_path, groupdro, capsys):
    assert main(command(tmp_path, "groupdro.groups=tone_3")) == 2
    out = "".join("".join(capsys.readouterr()).split())  # without the console's line breaks
    assert "unknowngroupscheme'tone_3'.Didyoumean'tone3'?" in out
