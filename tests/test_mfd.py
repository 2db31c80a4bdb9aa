"""MFD (methods/mfd.py): the class x group MMD term against a brute-force computation, its
settings and profiles, and whole runs through the CLI: the teacher is the ERM model of the shared
cache (the very model the ERM baseline trains), the record, and a clear error on a NaN."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dermbench.cli import main
from dermbench.conformance import TINY_SETTINGS
from dermbench.errors import ConfigError
from dermbench.methods import mfd
from dermbench.runner import resolve_config

# a seed no other test trains, so the first MFD run here misses the session's ERM cache
TINY = [*TINY_SETTINGS, "seed=1105"]


def brute_force(teacher, student, labels, groups, sigma):
    """sum_c sum_g MMD^2(T_c, S_cg) by explicit loops over sample pairs (the module docstring's rule)."""
    t, s = teacher.double().tolist(), student.double().tolist()
    n = len(t)

    def sq(u, v):
        return sum((a - b) ** 2 for a, b in zip(u, v))

    sigma_bar = sum(sq(t[i], s[j]) for i in range(n) for j in range(n)) / (n * n)

    def mean_k(xs, ys):
        return sum(math.exp(-sq(u, v) / (2 * sigma * sigma_bar)) for u in xs for v in ys) / (
            len(xs) * len(ys)
        )

    total = 0.0
    for c in sorted(set(labels)):
        tc = [t[i] for i in range(n) if labels[i] == c]
        for g in sorted(set(groups) - {-1}):
            sc = [s[i] for i in range(n) if labels[i] == c and groups[i] == g]
            if sc:
                total += mean_k(tc, tc) + mean_k(sc, sc) - 2 * mean_k(tc, sc)
    return total


def mmd(teacher, student, labels, groups, *, num_classes, num_groups=2, sigma=0.5):
    return mfd.class_group_mmd(
        teacher,
        student,
        torch.tensor(labels),
        torch.tensor(groups),
        num_classes=num_classes,
        num_groups=num_groups,
        sigma=sigma,
    )


def test_mmd_matches_a_brute_force_double_loop():
    gen = torch.Generator().manual_seed(0)
    teacher, student = (
        torch.randn(6, 5, generator=gen, dtype=torch.float64),
        torch.randn(6, 5, generator=gen, dtype=torch.float64),
    )
    one = [0] * 6
    value = mmd(teacher, student, one, one, num_classes=1, num_groups=1, sigma=0.5)
    assert value.item() == pytest.approx(brute_force(teacher, student, one, one, 0.5), rel=1e-9, abs=1e-12)
    assert value.item() > 1e-3  # different feature sets: a real distance

    labels, groups = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 1], [0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0]
    teacher = torch.randn(12, 7, generator=gen, dtype=torch.float64)
    student = torch.randn(12, 7, generator=gen, dtype=torch.float64) * 1.5 + 0.3
    value = mmd(teacher, student, labels, groups, num_classes=3, sigma=1.3)
    assert value.item() == pytest.approx(brute_force(teacher, student, labels, groups, 1.3), rel=1e-9)
    # features given as maps (N, C, H, W) are flattened per sample
    maps = mmd(teacher.view(12, 7, 1, 1), student.view(12, 7, 1, 1), labels, groups, num_classes=3, sigma=1.3)
    assert torch.allclose(maps, value)


def test_mmd_is_zero_for_identical_feature_sets():
    features = torch.randn(16, 32, generator=torch.Generator().manual_seed(1))  # float32, as in training
    same = [0] * 16
    assert abs(mmd(features, features.clone(), same, same, num_classes=1, num_groups=1).item()) < 1e-6
    # one group per class: every S_(c,g) is all of T_c
    labels = [0, 1] * 8
    assert abs(mmd(features, features.clone(), labels, labels, num_classes=2).item()) < 1e-6
    # all features equal: no 0/0 from a zero bandwidth
    flat = torch.ones(4, 3)
    assert mmd(flat, flat, [0] * 4, [0] * 4, num_classes=1, num_groups=1).item() == 0.0


def test_absent_cells_are_skipped_and_unknown_groups_belong_to_no_slice():
    # cells: (0, light) = {0}, (0, dark) = {1}, (1, light) = {3, 4}; (1, dark) is absent; class 2 has
    # only a sample of unknown group, so it has no cell; samples 2, 5 and 6 are in no student slice
    labels, groups = [0, 0, 0, 1, 1, 1, 2], [0, 1, -1, 0, 0, -1, -1]
    gen = torch.Generator().manual_seed(2)
    teacher = torch.randn(7, 4, generator=gen, dtype=torch.float64)
    student = torch.randn(7, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
    value = mmd(teacher, student, labels, groups, num_classes=3, sigma=0.5)
    assert value.item() == pytest.approx(
        brute_force(teacher, student.detach(), labels, groups, 0.5), rel=1e-9
    )

    # by hand: the three present cells, T_c holding every class-c sample (the unknown-group ones too)
    t, s = teacher, student.detach()
    sigma_bar = torch.cdist(t, s).pow(2).mean()

    def k(a, b):
        return torch.exp(-torch.cdist(a, b).pow(2) / (2 * 0.5 * sigma_bar)).mean()

    t0, t1 = t[[0, 1, 2]], t[[3, 4, 5]]
    expected = sum(
        k(tc, tc) + k(sc, sc) - 2 * k(tc, sc) for tc, sc in ((t0, s[[0]]), (t0, s[[1]]), (t1, s[[3, 4]]))
    )
    assert value.item() == pytest.approx(float(expected), rel=1e-9)

    value.backward()  # the bandwidth is computed without gradient: unknown-group rows get none
    grad = student.grad.abs().sum(1)
    assert grad[[2, 5, 6]].tolist() == [0.0, 0.0, 0.0] and (grad[[0, 1, 3, 4]] > 0).all()
    # a scheme with more groups (fst) gives the same sum for the same cells
    more = mmd(teacher, student.detach(), labels, groups, num_classes=3, num_groups=6, sigma=0.5)
    assert more.item() == pytest.approx(value.item(), rel=1e-12)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lam": -1}, "mfd.lam must be >= 0"),
        ({"outer": float("nan")}, "mfd.outer must be a finite number"),
        ({"sigma": 0}, "mfd.sigma must be > 0"),
        ({"lam": True}, "mfd.lam must be a finite number"),
        ({"sigma": "0.5"}, "mfd.sigma must be a finite number"),
        ({"groups": "tone_3"}, "mfd.groups: unknown group scheme 'tone_3'. Did you mean 'tone3'?"),
        ({"lamb": 3}, "unknown setting mfd.lamb; did you mean mfd.lam?"),
    ],
)
def test_bad_settings_are_config_errors_naming_the_setting(settings, message):
    with pytest.raises(ConfigError) as err:
        mfd.check_settings({**mfd.DEFAULTS, **settings})
    assert message in str(err.value)


def test_defaults_tiny_and_paper():
    assert mfd.dermbench_method_defaults(profile="tiny", dataset="synthderm") == {
        "mfd": {"groups": "tone2", "lam": 5.0, "outer": 0.02, "sigma": 0.5, "student": {}}
    }
    fitz = resolve_config(flags={"method": "mfd", "profile": "paper", "dataset": "fitz17k"})
    assert {k: v for k, v in fitz["mfd"].items() if k not in ("student", "student_model")} == {
        "groups": "tone2",
        "lam": 5.0,
        "outer": 0.02,
        "sigma": 0.5,
    }
    assert fitz["mfd"]["student_model"] == {"backbone": "vgg11.tv_in1k", "pretrained": True}
    assert fitz["model"]["backbone"] == "vgg11_bn" and fitz["task"] == "condition"
    assert fitz["model"]["pretrained"] is False  # no ImageNet weights offline: the profile's setting stays
    # the ME student recipe is the student's alone: the teacher is the paper profile's ERM model
    assert fitz["mfd"]["student"] == {
        "optimizer": "sgd",
        "momentum": 0.9,
        "nesterov": True,
        "lr": 0.01,
        "weight_decay": 1e-5,
        "schedule": "step",
        "step_size": 100,
        "gamma": 0.1,
        "epochs": 200,
        "batch_size": 128,
        "sampler": "none",
    }
    erm = resolve_config(flags={"method": "erm", "profile": "paper", "dataset": "fitz17k"})
    assert fitz["train"] == erm["train"]
    isic = resolve_config(flags={"method": "mfd", "profile": "paper", "dataset": "isic2019"})
    assert isic["mfd"]["groups"] == "sex" and isic["model"]["backbone"] == "resnet18"


def command(out: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--method",
        "mfd",
        "--device",
        "cpu",
        "--out",
        str(out),
        *sum([["--set", s] for s in [*TINY, *extra]], []),
    ]


def run_metrics(out: Path) -> tuple[Path, dict]:
    (run_dir,) = [p for p in out.iterdir() if (p / "metrics.json").is_file()]
    return run_dir, json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_mfd_runs_with_the_cached_erm_teacher(tmp_path):
    assert main(command(tmp_path / "first")) == 0
    run_dir, metrics = run_metrics(tmp_path / "first")
    assert metrics["hooks"]["fit"] == "mfd" and metrics["hooks"]["fit_wrappers"] == []
    checkpoint = metrics["methods"]["erm"]["checkpoint"]
    assert checkpoint["hit"] is False  # a fresh seed: the teacher was trained here, then stored
    record = metrics["methods"]["mfd"]
    assert record["settings"] == {"groups": "tone2", "lam": 5.0, "outer": 0.02, "sigma": 0.5, "student": {}}
    assert record["scheme"] == "tone2" and record["weight"] == pytest.approx(0.05)
    assert record["features"] == {"module": "fc", "dim": 96}  # test_resnet's penultimate vector
    cells = record["train_cells"]
    assert set(cells) == {"benign", "malignant"}
    assert all(set(groups) == {"light", "dark"} for groups in cells.values())
    assert sum(sum(g.values()) for g in cells.values()) + record["unknown_group_excluded"] == 240
    assert "paper" not in record
    log = (run_dir / "log.txt").read_text()
    assert "training mfd: the group sampler" in log or record["unknown_group_excluded"] == 0

    # another run with the same settings takes the teacher from the cache and trains the same student
    assert main(command(tmp_path / "second")) == 0
    second_dir, second = run_metrics(tmp_path / "second")
    hit = second["methods"]["erm"]["checkpoint"]
    assert hit["hit"] is True and hit["key"] == checkpoint["key"] and hit["sha256"] == checkpoint["sha256"]
    assert json.dumps(second["eval"], sort_keys=True) == json.dumps(metrics["eval"], sort_keys=True)

    # the teacher is the ERM baseline's model (same initialisation, same trainer name), not the student
    teacher = load_file(str(Path(checkpoint["path"]) / "model.safetensors"))
    assert (
        main(
            [
                "run",
                "--method",
                "erm",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "erm"),
                *sum([["--set", s] for s in TINY], []),
            ]
        )
        == 0
    )
    erm_dir, _ = run_metrics(tmp_path / "erm")
    baseline = load_file(str(erm_dir / "model.safetensors"))
    assert teacher.keys() == baseline.keys() and all(torch.equal(teacher[k], baseline[k]) for k in teacher)
    student = load_file(str(run_dir / "model.safetensors"))
    assert not all(torch.equal(teacher[k], student[k]) for k in teacher)


@pytest.mark.slow
def test_a_nan_in_the_features_is_a_clear_error(tmp_path, monkeypatch, capsys):
    real = mfd.FeatureTap.take

    def poisoned(tap, n):  # the student's penultimate features hold a NaN
        features = real(tap, n)
        return (
            features.index_fill(0, torch.tensor([0], device=features.device), float("nan"))
            if tap.role == "student"
            else features
        )

    monkeypatch.setattr(mfd.FeatureTap, "take", poisoned)
    assert main(command(tmp_path)) == 2
    err = "".join("".join(capsys.readouterr()).split())  # without the console's line breaks
    assert "error:mfd:theMMDtermbecamenanatstudenttrainingstep1" in err
    assert "teacherfeatures:finite;studentfeatures:" in err and "non-finitevalue(s)" in err
    assert "Traceback" not in err
