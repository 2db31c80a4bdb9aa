"""The exact skin-tone counterfactual test: SynthDerm's lesions re-rendered on FST I-VI with everything
but the tone held fixed, the flip rate and per-tone scores, `dermbench counterfactual` and
`dermbench evaluate --counterfactual`, and the leaderboard's flip-rate column."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dermbench.cli import main
from dermbench.datasets.synthderm import SynthDerm
from dermbench.datasets.synthderm_params import FST_TYPES, MASK_CLASSES
from dermbench.datasets.synthderm_render import render, retone, with_skin
from dermbench.evaluation.counterfactual import counterfactual_scores
from dermbench.results.counterfactual import read_counterfactual
from dermbench.results.leaderboard import collect
from dermbench.results.leaderboard_render import build_outputs
from dermbench.tone.ita import fst_from_ita

SIZES = {"n_train": 120, "n_val": 60, "n_test": 60, "n_test_ddi": 36, "n_test_dermoscopic": 30}
OPTIONS = "data.options={" + ", ".join(f"{k}: {v}" for k, v in SIZES.items()) + "}"
SMALL = [OPTIONS, "data.image_size=16", "eval.n_boot=20"]
SKIN = MASK_CLASSES.index("skin")


def renders(ds: SynthDerm, split: str = "test", size: int = 16):
    table = ds.load(task="malignant", split=split, image_size=size).table
    out = [ds.counterfactual(table, fst=f, size=size) for f in FST_TYPES]
    return (
        table,
        np.stack([i for i, _ in out], 1),
        np.stack([m for _, m in out], 1),
    )  # (n, 6, S, S, 3), (n, 6, S, S)


# --------------------------------------------------------------------------- the renderer


@pytest.mark.parametrize("split", ["test", "test_dermoscopic"])
def test_the_render_at_each_lesions_own_tone_is_its_image_byte_for_byte(split):
    ds = SynthDerm(**SIZES)
    original = ds.load(task="malignant", split=split, image_size=16)
    table, images, masks = renders(ds, split)
    fst = table["fst"].to_numpy()
    own = images[np.arange(len(fst)), fst - 1]
    assert own.dtype == np.uint8 and np.array_equal(own, np.asarray(original.images))
    # and the scene itself, given its own skin and seed, is the scene
    scenes = ds.scenes(split)
    same = with_skin(
        scenes,
        np.arange(len(scenes)),
        fst=scenes.table["fst"].to_numpy(),
        ita=scenes.table["ita"].to_numpy(),
        skin=scenes.table[["skin_l", "skin_a", "skin_b"]].to_numpy(),
        seed=scenes.seed,
    )
    assert np.array_equal(render(same, image_size=16)[0], np.asarray(original.images))
    # every tone is really rendered: the other five differ from the original
    other = images[np.arange(len(fst)), np.where(fst == 1, 5, 0)]
    assert (other != own).any(axis=(1, 2, 3)).all()


def test_the_lesion_mask_is_identical_across_the_six_renders():
    ds = SynthDerm(**SIZES)
    original = ds.load(task="malignant", split="test", image_size=16)
    _, _, masks = renders(ds)
    for k in range(len(FST_TYPES)):
        assert np.array_equal(masks[:, k], np.asarray(original.masks)), FST_TYPES[k]
    assert (masks == MASK_CLASSES.index("lesion")).any()


def test_only_the_skin_and_what_the_generator_ties_to_it_change():
    scenes = SynthDerm(**SIZES).scenes("test")
    light, dark = retone(scenes, 1), retone(scenes, 6)
    assert (fst_from_ita(light.table["ita"]) == 1).all() and (fst_from_ita(dark.table["ita"]) == 6).all()
    for column in (
        "label",
        "severity",
        "asymmetry",
        "border",
        "variegation",
        "diameter",
        "pigment",
        "lesion_x",
        "lesion_y",
        "has_hair",
        "has_marker",
        "has_ruler",
        "has_backdrop",
        "exposure",
    ):
        assert np.array_equal(light.table[column].to_numpy(), dark.table[column].to_numpy()), column
    for key in ("r_table", "centre", "edge", "hair", "ring", "ruler", "fields", "pores", "white_balance"):
        assert np.array_equal(light.arrays[key], dark.arrays[key]), key
    # by construction, lesion contrast falls on darker skin: part of the tone, not a leak
    assert (dark.table["contrast"].to_numpy() < light.table["contrast"].to_numpy()).all()


# --------------------------------------------------------------------------- the scores


def test_a_model_that_ignores_colour_has_flip_rate_zero():
    ds = SynthDerm(**SIZES)
    table, _, masks = renders(ds)
    area = (masks == MASK_CLASSES.index("lesion")).mean(axis=(2, 3))  # (n, 6): the lesion's geometry only
    p1 = 1 / (1 + np.exp(-(area - np.median(area)) * 40))
    result = counterfactual_scores(
        y_true=table["label"],
        prob=np.stack([1 - p1, p1], -1),
        threshold=0.5,
        original_fst=table["fst"],
        n_boot=50,
    )
    assert result["flip_rate"] == 0.0 and result["flips"] == 0 and result["flip_rate_ci"] == [0.0, 0.0]
    assert len({v["auc"] for v in result["per_tone"].values()}) == 1
    assert all(s["mean"] == 0 and s["mean_abs"] == 0 for s in result["shift_per_step"])


def lightness(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Mean RGB value of each image's skin pixels, (n, 6)."""
    skin = (masks == SKIN)[..., None]
    return (images * skin).sum(axis=(2, 3, 4)) / (3 * skin.sum(axis=(2, 3, 4)))


def test_a_model_that_thresholds_on_skin_lightness_has_the_flip_rate_counted_by_hand():
    ds = SynthDerm(**SIZES)
    table, images, masks = renders(ds)
    light = lightness(images.astype(np.float64), masks)
    assert (np.diff(light, axis=1) < 0).mean() > 0.95  # darker skin with each type, almost always
    # a cut between the lightest FST VI and the darkest FST I skin: every lesion flips
    cut = (light[:, 5].max() + light[:, 0].min()) / 2
    assert light[:, 5].max() < cut < light[:, 0].min()
    p1 = (light < cut).astype(float)
    result = counterfactual_scores(
        y_true=table["label"], prob=np.stack([1 - p1, p1], -1), threshold=0.5, n_boot=0
    )
    assert (
        result["flip_rate"] == 1.0
        and result["per_tone"]["I"]["tpr"] == 0.0
        and result["per_tone"]["VI"]["tpr"] == 1.0
    )
    assert result["shift_total"] == 1.0
    # a cut inside the FST I renders: a lesion flips when its six skins lie on both sides of it (those whose
    # FST I skin is already below the cut are dark at every tone and never flip)
    cut = float(np.median(light[:, 0]))
    p1 = (light < cut).astype(float)
    flipped = (light.min(axis=1) < cut) & (light.max(axis=1) >= cut)
    result = counterfactual_scores(
        y_true=table["label"], prob=np.stack([1 - p1, p1], -1), threshold=0.5, n_boot=0
    )
    assert 0 < flipped.mean() < 1 and result["flip_rate"] == pytest.approx(flipped.mean())
    assert result["flips"] == int(flipped.sum())
    steps = np.diff(p1, axis=1)
    assert [s["mean"] for s in result["shift_per_step"]] == pytest.approx(steps.mean(axis=0).tolist())


# --------------------------------------------------------------------------- the commands


class Lightness(nn.Module):
    """P(malignant) from the image's mean value: a model that thresholds on skin lightness."""

    def __init__(self, cut: float) -> None:
        super().__init__()
        self.cut = cut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = (self.cut - x.mean(dim=(1, 2, 3))) * 10.0
        return torch.stack([torch.zeros_like(logit), logit], dim=1)


def test_evaluate_counterfactual_scores_a_torchscript_lightness_model_as_counted_by_hand(tmp_path):
    ds = SynthDerm(**SIZES)
    table, images, _ = renders(ds)
    means = (
        images.reshape(len(table), 6, -1).astype(np.float64).mean(axis=2)
    )  # the model's own input statistic
    cut = float(np.median(means[:, 0]))  # inside the FST I renders: some lesions flip, some never do
    while np.abs(means - cut).min() < 0.05:
        cut += 0.1
    path = tmp_path / "light.pt"
    torch.jit.save(
        torch.jit.script(Lightness(cut)),
        str(path),
        _extra_files={
            "dermbench.json": json.dumps(
                {"input_size": 16, "mean": [0, 0, 0], "std": [1 / 255, 1 / 255, 1 / 255]}
            )
        },
    )
    out = tmp_path / "runs"
    code = main(
        [
            "evaluate",
            "--name",
            "lightness",
            "--model",
            str(path),
            "--test-set",
            "synthderm",
            "--counterfactual",
            "--out",
            str(out),
            "--device",
            "cpu",
            *sum([["--set", s] for s in SMALL], []),
        ]
    )
    assert code == 0
    (run,) = [p.parent for p in out.glob("lightness_*/metrics.json")]
    entry = read_counterfactual(run)["test_sets"]["synthderm"]
    pred = means < cut  # fixed threshold 0.5: P(malignant) >= 0.5 exactly when the mean is below the cut
    assert entry["threshold"] == 0.5 and 0 < entry["flip_rate"] < 1
    assert entry["flip_rate"] == pytest.approx((pred != pred[:, :1]).any(axis=1).mean())
    y = table["label"].to_numpy()
    for k, tone in enumerate(("I", "II", "III", "IV", "V", "VI")):
        assert entry["per_tone"][tone]["tpr"] == pytest.approx(pred[y == 1, k].mean())
    assert entry["check"]["identical_images"] is True and entry["check"]["max_abs_diff"] < 1e-5
    assert "Skin-tone counterfactual (SynthDerm)" in (run / "report.md").read_text()
    # `dermbench counterfactual` on the same run gives the same result
    (run / "counterfactual.json").unlink()
    assert main(["counterfactual", str(run), "--device", "cpu"]) == 0
    assert read_counterfactual(run)["test_sets"]["synthderm"]["flip_rate"] == entry["flip_rate"]


def test_counterfactual_of_a_run_writes_the_record_and_the_leaderboards_flip_rate_column(tmp_path, capsys):
    out = tmp_path / "runs"
    sets = sum(
        [
            ["--set", s]
            for s in (*SMALL, "model.backbone=test_resnet", "train.epochs=1", "train.batch_size=32")
        ],
        [],
    )
    assert main(["run", "--out", str(out), "--device", "cpu", *sets]) == 0
    (erm,) = [p.parent for p in out.glob("erm_*/metrics.json")]
    # a predictions-file row beside it, without the test
    prediction = pd.read_csv(erm / "predictions" / "synthderm.csv", dtype={"sample_id": str})
    prediction[["sample_id", "prob_0", "prob_1"]].to_csv(tmp_path / "p.csv", index=False)
    assert (
        main(
            [
                "evaluate",
                "--name",
                "theirs",
                "--predictions",
                str(tmp_path / "p.csv"),
                "--test-set",
                "synthderm",
                "--out",
                str(out),
                *sum([["--set", s] for s in SMALL], []),
            ]
        )
        == 0
    )
    assert main(["counterfactual", str(erm), "--device", "cpu"]) == 0
    data = read_counterfactual(erm)
    assert set(data["test_sets"]) == {"synthderm", "synthderm-ddi", "synthderm-dermoscopic"}
    for entry in data["test_sets"].values():
        assert 0 <= entry["flip_rate"] <= 1 and entry["check"]["max_abs_diff"] <= 1e-4
        assert (
            set(entry["per_tone"]) == {"I", "II", "III", "IV", "V", "VI"}
            and len(entry["shift_per_step"]) == 5
        )
    assert "Skin-tone counterfactual (SynthDerm)" in (erm / "report.md").read_text()

    details = build_outputs(collect([out]), [str(out)], str(tmp_path / "board"), n_boot=20)[0].details
    section = details.split("## Test set `synthderm`")[1].split("###")[1]
    header = next(line for line in section.splitlines() if line.startswith("| method"))
    assert header.rstrip(" |").endswith("flip rate")
    rows = {
        line.split("|")[1].strip(): line.rstrip(" |").rsplit("|", 1)[1].strip()
        for line in section.splitlines()
        if line.startswith("| erm") or line.startswith("| theirs")
    }
    assert rows["erm"].strip("*") == f"{data['test_sets']['synthderm']['flip_rate']:.3f}"
    assert rows["theirs (external)"] == "–"

    _counterfactual_json_is_sealed(out, erm, tmp_path, capsys)

    # a predictions-file run cannot be re-rendered; a model that is not the run's is refused
    capsys.readouterr()
    (theirs,) = [p.parent for p in out.glob("theirs_*/metrics.json")]
    assert main(["counterfactual", str(theirs)]) == 2
    assert "needs the model" in capsys.readouterr().err
    weights = load_file(str(erm / "model.safetensors"))
    save_file(
        {k: v + 0.05 if v.is_floating_point() else v for k, v in weights.items()},
        str(erm / "model.safetensors"),
    )
    assert main(["counterfactual", str(erm), "--device", "cpu"]) == 2
    assert "does not reproduce the run's recorded predictions" in " ".join(capsys.readouterr().err.split())


def _err(capsys) -> str:
    """stderr without whitespace: the console wraps long lines anywhere, inside paths too."""
    return "".join(capsys.readouterr().err.split())


def _bare(text: str) -> str:
    return "".join(text.split())


def _counterfactual_json_is_sealed(out: Path, run: Path, tmp_path: Path, capsys) -> None:
    """counterfactual.json is covered by the run's seal (issue 28): `dermbench counterfactual` sealed the
    finished run again, every reader refuses a hand edit naming the file, and one written by a
    dermbench that did not seal it is refused until `dermbench records seal` checks and adds it."""
    from dermbench.results.records import read_seal, write_done

    path = run / "counterfactual.json"
    seal = read_seal(run)
    assert "counterfactual.json" in seal["files"]
    assert main(["records", "check", str(out)]) == 0
    genuine = path.read_bytes()
    edited = json.loads(genuine)
    edited["test_sets"]["synthderm"]["flip_rate"] = 0.0
    path.write_text(json.dumps(edited))
    capsys.readouterr()
    for command in (
        ["records", "check", str(out)],
        ["report", str(run)],
        ["leaderboard", "--runs", str(out), "--out", str(tmp_path / "board2")],
    ):
        assert main(command) == 2, command
        assert _bare(f"{path}: changed after the run finished") in _err(capsys), command
    # an older dermbench wrote it without sealing it: refused naming the seal command, which adds it
    path.unlink()
    write_done(run, finished=seal["finished"])
    path.write_text(
        json.dumps(
            {**edited, "test_sets": {"synthderm": {**edited["test_sets"]["synthderm"], "flip_rate": 5.0}}}
        )
    )
    assert main(["records", "check", str(out)]) == 2
    err = _err(capsys)
    assert (
        _bare(f"{path}: not covered by the run's `done` marker") in err
        and _bare(f"dermbench records seal {run}") in err
    )
    assert main(["records", "seal", str(run)]) == 2  # an impossible one is not sealed
    assert _bare("flip_rate: expected a share in [0, 1]") in _err(capsys)
    path.write_bytes(genuine)
    assert main(["records", "seal", str(run)]) == 0
    assert "sealed counterfactual.json" in " ".join(capsys.readouterr().out.split())
    assert main(["records", "check", str(out)]) == 0
    assert read_seal(run)["finished"] == seal["finished"] and read_seal(run)["files"] == seal["files"]


def test_a_run_without_weights_names_the_command_that_makes_them(tmp_path, capsys):
    out = tmp_path / "runs"
    sets = sum(
        [
            ["--set", s]
            for s in (*SMALL, "model.backbone=test_resnet", "train.epochs=1", "train.batch_size=32")
        ],
        [],
    )
    assert main(["run", "--out", str(out), "--device", "cpu", *sets]) == 0
    (erm,) = [p.parent for p in out.glob("erm_*/metrics.json")]
    (erm / "model.safetensors").unlink()
    assert main(["counterfactual", str(erm)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "has no model.safetensors" in err and "dermbench run --config" in err
    assert not Path(erm / "counterfactual.json").exists()


# --------------------------------------------------------------------------- dermbench run --counterfactual


def _bare_err(capsys) -> str:
    return "".join(capsys.readouterr().err.split())


def test_run_counterfactual_scores_the_methods_own_predict_and_leaves_the_run_id_alone(tmp_path, capsys):
    sets = sum(
        [
            ["--set", s]
            for s in (*SMALL, "model.backbone=test_resnet", "train.epochs=1", "train.batch_size=32")
        ],
        [],
    )
    assert main(["run", "--out", str(tmp_path / "plain"), "--device", "cpu", *sets]) == 0
    assert main(["run", "--out", str(tmp_path / "with"), "--device", "cpu", *sets, "--counterfactual"]) == 0
    (plain,) = [p.parent for p in (tmp_path / "plain").glob("erm_*/metrics.json")]
    (run,) = [p.parent for p in (tmp_path / "with").glob("erm_*/metrics.json")]
    assert run.name == plain.name  # not a setting: the same run id
    assert (
        json.loads((run / "metrics.json").read_text())["eval"]
        == json.loads((plain / "metrics.json").read_text())["eval"]
    )
    data = read_counterfactual(run)  # verified against the run's seal
    assert "counterfactual.json" in json.loads((run / "done").read_text())["files"]
    assert set(data["test_sets"]) == {"synthderm", "synthderm-ddi", "synthderm-dermoscopic"}
    assert data["model"]["predict"] == "erm"
    for entry in data["test_sets"].values():
        assert entry["check"]["identical_images"] is True and entry["check"]["max_abs_diff"] < 1e-5
    assert "Skin-tone counterfactual (SynthDerm)" in (run / "report.md").read_text()
    # `dermbench counterfactual` from the saved backbone gives the same numbers
    assert main(["counterfactual", str(plain), "--device", "cpu"]) == 0
    assert read_counterfactual(plain)["test_sets"] == data["test_sets"]
    # a finished run reused with --counterfactual gains the test from its backbone
    assert main(["run", "--out", str(tmp_path / "plain"), "--device", "cpu", *sets, "--counterfactual"]) == 0


LIGHTCUT = '''
"""A method with a model of its own, not a torch module: P(malignant) from the image's mean value."""
import numpy as np

from dermbench.hookspecs import hookimpl

name = "lightcut"


class LightCut:
    def __init__(self, cut):
        self.cut = cut

    def proba(self, images):
        means = np.asarray(images, dtype=np.float64).reshape(len(images), -1).mean(axis=1)
        p1 = 1.0 / (1.0 + np.exp(-(self.cut - means) / 4.0))
        return np.column_stack([1.0 - p1, p1])


@hookimpl
def fit(ctx, model, train, val):
    cut = float(np.median(np.asarray(train.images, dtype=np.float64).reshape(len(train), -1).mean(axis=1)))
    ctx.record("lightcut", {"cut": cut})
    return LightCut(cut)


@hookimpl
def predict(ctx, model, split):
    return model.proba(split.images) if isinstance(model, LightCut) else ctx.predict_proba(model, split)
'''


def test_run_counterfactual_covers_a_method_whose_model_is_not_the_backbone(tmp_path, monkeypatch, capsys):
    import sys

    (tmp_path / "lightcut.py").write_text(LIGHTCUT)
    monkeypatch.delitem(sys.modules, "lightcut", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    out = tmp_path / "runs"
    base = [
        "run",
        "--plugin",
        str(tmp_path / "lightcut.py"),
        "--method",
        "lightcut",
        "--out",
        str(out),
        "--device",
        "cpu",
        *sum([["--set", s] for s in (*SMALL, "model.backbone=test_resnet")], []),
    ]
    assert main(base) == 0
    (run,) = [p.parent for p in out.glob("lightcut_*/metrics.json")]
    assert not (run / "model.safetensors").exists()
    # `dermbench counterfactual` cannot rebuild its model: it names the run --counterfactual command
    capsys.readouterr()
    assert main(["counterfactual", str(run), "--device", "cpu"]) == 2
    err = _bare_err(capsys)
    assert _bare(f"dermbench run --config {run / 'config.yaml'} --out DIR --counterfactual") in err
    # reusing the finished run cannot train its model again: --force can
    assert main([*base, "--counterfactual"]) == 2
    assert "--force" in _bare_err(capsys)
    assert main([*base, "--counterfactual", "--force"]) == 0
    (again,) = [p.parent for p in out.glob("lightcut_*/metrics.json")]
    assert again == run
    record = json.loads((run / "metrics.json").read_text())
    entry = read_counterfactual(run)["test_sets"]["synthderm"]
    assert (
        entry["check"]["max_abs_diff"] == 0.0 and read_counterfactual(run)["model"]["predict"] == "lightcut"
    )
    # counted by hand from the renders, with the model's own rule and the run's threshold
    table, images, _ = renders(SynthDerm(**SIZES))
    cut = record["methods"]["lightcut"]["cut"]
    means = images.reshape(len(table), 6, -1).astype(np.float64).mean(axis=2)
    pred = 1.0 / (1.0 + np.exp(-(cut - means) / 4.0)) >= entry["threshold"]
    assert 0 < entry["flip_rate"] < 1
    assert entry["flip_rate"] == pytest.approx((pred != pred[:, :1]).any(axis=1).mean())
    y = table["label"].to_numpy()
    for k, tone in enumerate(("I", "II", "III", "IV", "V", "VI")):
        assert entry["per_tone"][tone]["tpr"] == pytest.approx(pred[y == 1, k].mean())
