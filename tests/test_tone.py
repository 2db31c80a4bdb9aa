"""Skin-tone estimation: ITA against hand computations and SynthDerm's true FST, the tone
detector's train/annotate round trip with honest scores, and fill_missing_tones."""

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import f1_score

from dermbench.cli import main
from dermbench.datasets.synthderm import SynthDerm
from dermbench.datasets.synthderm_params import BALANCED_TONE_MIX, MASK_CLASSES
from dermbench.datasets.synthderm_render import generate
from dermbench.errors import ConfigError, DataError, DermbenchError
from dermbench.tone import fill_missing_tones
from dermbench.tone.detector import load_detector, tone_split
from dermbench.tone.ita import ITA_THRESHOLDS, fst_from_ita, ita_from_lab, ita_of_images

SKIN = MASK_CLASSES.index("skin")
OPTIONS = {"n_train": 240, "n_val": 60, "n_test": 20, "n_test_ddi": 90, "n_test_dermoscopic": 20}
OPTIONS_SET = "data.options={" + ", ".join(f"{k}: {v}" for k, v in OPTIONS.items()) + "}"


# ---------------------------------------------------------------------------------------
# ITA
# ---------------------------------------------------------------------------------------
def hand_lab(rgb8):
    """sRGB (0-255) to CIELAB (D65, 2 degree observer) written out from the standard formulas."""
    c = np.asarray(rgb8, dtype=float) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array(
        [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
    )
    xyz = m @ lin / np.array([0.95047, 1.0, 1.08883])
    d = 6 / 29
    f = np.where(xyz > d**3, np.cbrt(xyz), xyz / (3 * d * d) + 4 / 29)
    return 116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])


def flat(rgb8, size=16):
    return np.broadcast_to(np.array(rgb8, dtype=np.uint8), (size, size, 3)).copy()


@pytest.mark.parametrize(
    "rgb8", [(236, 200, 180), (224, 172, 140), (198, 134, 96), (150, 96, 62), (96, 60, 42), (62, 44, 38)]
)
def test_ita_of_a_flat_colour_matches_the_hand_computed_formula(rgb8):
    L, _, b = hand_lab(rgb8)
    hand = math.atan((L - 50) / b) * 180 / math.pi
    got = ita_of_images(flat(rgb8)[None])
    assert got.shape == (1,)
    assert got[0] == pytest.approx(hand, abs=0.05)


def test_ita_is_vectorised_over_images():
    colours = [(236, 200, 180), (150, 96, 62), (96, 60, 42)]
    together = ita_of_images(np.stack([flat(c) for c in colours]))
    one_by_one = [ita_of_images(flat(c)[None])[0] for c in colours]
    np.testing.assert_allclose(together, one_by_one)
    assert together[0] > together[1] > together[2]


def test_ita_formula_handles_b_star_zero_without_dividing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = ita_from_lab(np.array([70.0, 30.0, 50.0, 70.0]), np.array([0.0, 0.0, 0.0, 1e-12]))
    np.testing.assert_allclose(got, [90.0, -90.0, 0.0, 90.0])
    assert ita_from_lab(60.0, 10.0) == pytest.approx(45.0)


@pytest.mark.parametrize(
    "ita, fst",
    [
        (90, 1),
        (55.01, 1),
        (55, 2),
        (41.01, 2),
        (41, 3),
        (28.01, 3),
        (28, 4),
        (10.01, 4),
        (10, 5),
        (-29.99, 5),
        (-30, 6),
        (-90, 6),
    ],
)
def test_fst_thresholds_at_the_boundaries(ita, fst):
    assert fst_from_ita(np.array([ita]))[0] == fst


def test_fst_of_nan_ita_is_unknown_and_thresholds_are_ordered():
    assert fst_from_ita(np.array([np.nan]))[0] == -1
    assert list(ITA_THRESHOLDS) == sorted(ITA_THRESHOLDS)
    assert fst_from_ita(np.array([60.0, 50.0, 30.0, 20.0, 0.0, -40.0])).tolist() == [1, 2, 3, 4, 5, 6]


@pytest.fixture(scope="module")
def synth_batch():
    return generate(180, seed=3, image_size=24, tone_mix=BALANCED_TONE_MIX)


@pytest.mark.parametrize("use_masks", [True, False])
def test_ita_follows_synthderm_true_fst(synth_batch, use_masks):
    masks = synth_batch.masks if use_masks else None
    ita = ita_of_images(synth_batch.images, masks, SKIN if use_masks else None)
    fst = synth_batch.table["fst"].to_numpy()
    assert np.isfinite(ita).all()
    assert spearmanr(fst_from_ita(ita), fst)[0] > 0.8
    medians = [np.median(ita[fst == k]) for k in range(1, 7)]
    assert all(a > b for a, b in zip(medians, medians[1:])), medians


def test_ita_without_masks_survives_the_black_dermoscopic_surround():
    batch = generate(120, seed=4, image_size=24, tone_mix=BALANCED_TONE_MIX, dermoscopic=True)
    ita = ita_of_images(batch.images)
    fst = batch.table["fst"].to_numpy()
    assert np.isfinite(ita).all()
    assert spearmanr(fst_from_ita(ita), fst)[0] > 0.8


def skin_with_lesion(lesion_rgb, box):
    img = flat((224, 172, 140), size=32)
    r0, r1, c0, c1 = box
    img[r0:r1, c0:c1] = lesion_rgb
    return img


def test_a_dark_lesion_in_the_centre_does_not_pull_the_estimate():
    skin = ita_of_images(flat((224, 172, 140), size=32)[None])[0]
    centre = (8, 24, 8, 24)  # a quarter of the image, inside the border frame
    dark_brown, black_blue = (90, 55, 35), (40, 40, 70)
    got = ita_of_images(
        np.stack([skin_with_lesion(dark_brown, centre), skin_with_lesion(black_blue, centre)])
    )
    assert got[0] == pytest.approx(skin, abs=1e-9)
    assert got[1] == pytest.approx(skin, abs=1e-9)
    lesion_ita = ita_of_images(flat(dark_brown)[None])[0]
    assert lesion_ita < skin - 40  # the lesion colour is far from the skin's, so ignoring it matters


def test_a_lesion_mask_keeps_lesion_pixels_out_even_on_the_border():
    left = (0, 32, 0, 20)  # a big off-centre lesion covering most of the border frame
    img = skin_with_lesion((90, 55, 35), left)[None]
    lesion = np.zeros((1, 32, 32), dtype=np.uint8)
    lesion[0, :, :20] = 1
    skin = ita_of_images(flat((224, 172, 140), size=32)[None])[0]
    assert ita_of_images(img, lesion)[0] == pytest.approx(skin, abs=1e-9)  # nonzero = lesion
    assert ita_of_images(img, 1 - lesion, skin_class=1)[0] == pytest.approx(skin, abs=1e-9)  # skin class
    assert ita_of_images(img)[0] < skin - 5  # without the mask the border frame sees the lesion


def test_images_without_usable_skin_give_nan():
    black = np.zeros((1, 16, 16, 3), dtype=np.uint8)
    ink = flat((60, 60, 200))[None]  # blue: b* < 0 is never skin
    assert np.isnan(ita_of_images(np.concatenate([black, ink]))).all()


def test_bad_inputs_are_refused():
    with pytest.raises(DataError, match="uint8"):
        ita_of_images(np.zeros((2, 8, 8, 3), dtype=np.float32))
    with pytest.raises(DataError, match="masks"):
        ita_of_images(np.zeros((2, 8, 8, 3), dtype=np.uint8), np.zeros((2, 4, 4), dtype=np.uint8), 1)


# ---------------------------------------------------------------------------------------
# Splits with missing tones
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ddi_like():
    return SynthDerm(**OPTIONS).load(task="malignant", split="test_ddi", image_size=16)


def blank_tones(split, rows):
    table = split.table.copy()
    table.loc[rows, "fst"] = -1
    table.loc[rows, "tone3"] = None
    table.loc[rows, "tone2"] = None
    split.table = table
    return split


def test_tone_split_keeps_annotated_tones_and_counts_the_rest(ddi_like):
    from dataclasses import replace

    split = blank_tones(replace(ddi_like), [0, 1, 2])
    table = split.table.copy()
    table.loc[[3, 4], "tone_source"] = "ita"
    split.table = table
    out, excluded = tone_split(split)
    assert len(out) == len(ddi_like) - 5
    assert excluded == {"unknown tone": 3, "tone not annotated (estimated)": 2}
    assert out.classes == ("A", "B", "C")
    assert out.labels.tolist() == out.table["tone3"].map({"A": 0, "B": 1, "C": 2}).tolist()


def test_fill_by_ita_estimates_only_the_missing_rows(ddi_like):
    from dataclasses import replace

    truth = ddi_like.table.copy()
    blank = np.arange(0, len(truth), 2)
    split = blank_tones(replace(ddi_like), blank)
    filled = fill_missing_tones(split, source="ita")
    t = filled.table
    kept = np.setdiff1d(np.arange(len(t)), blank)
    for col in ("fst", "tone3", "tone2", "tone_source"):
        assert t[col].iloc[kept].tolist() == truth[col].iloc[kept].tolist(), col
    est = t.iloc[blank]
    assert (est["tone_source"] == "ita").all()
    assert est["fst"].isin([1, 2, 3, 4, 5, 6]).all()
    expected3 = est["fst"].map({1: "A", 2: "A", 3: "B", 4: "B", 5: "C", 6: "C"})
    assert est["tone3"].tolist() == expected3.tolist()
    assert np.isfinite(est["ita_estimate"]).all() and t["ita_estimate"].iloc[kept].isna().all()
    assert t["ita"].tolist() == truth["ita"].tolist()  # SynthDerm's own (true) ITA column is left alone
    assert np.corrcoef(est["ita_estimate"], est["ita"])[0, 1] > 0.9
    off = np.abs(est["fst"].to_numpy() - truth["fst"].iloc[blank].to_numpy())
    assert (off <= 1).mean() > 0.9
    meta = filled.meta["tone_estimation"]
    assert meta["source"] == "ita" and meta["n_estimated"] == len(blank) == meta["n_missing"]
    assert meta["method"] == "mask skin class"
    check = meta["agreement_on_annotated"]
    assert check["n"] == len(kept) and 0.5 < check["fst_within_one"] <= 1.0
    assert split.table["tone_source"].iloc[blank].eq("annotated").all()  # the input is not modified


def test_fill_by_ita_on_a_plain_split_uses_the_border_and_keeps_tone3_only_rows():
    from dermbench.data.model import Split

    colours = [(236, 200, 180), (198, 134, 96), (96, 60, 42), (224, 172, 140), (150, 96, 62)]
    images = np.stack([skin_with_lesion((40, 30, 30), (8, 24, 8, 24)) for _ in colours])
    for img, c in zip(images, colours):
        img[:8], img[24:], img[:, :8], img[:, 24:] = c, c, c, c
    table = pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(5)],
            "label": [0, 1, 0, 1, 0],
            "fst": [np.nan, np.nan, np.nan, 2.0, np.nan],
            "tone3": [None, None, None, None, "B"],  # s4: a DDI-style tone3 label without an FST
            "tone_source": pd.array(["annotated"] * 5, dtype="str"),
        }
    )
    split = Split(name="plain", table=table, images=images, classes=("benign", "malignant"))
    filled = fill_missing_tones(split, source="ita")
    t = filled.table
    expected = fst_from_ita(ita_of_images(np.stack([flat(c) for c in colours[:3]]))).tolist()
    assert t["fst"].iloc[:3].tolist() == expected and expected[0] < expected[1] < expected[2]
    assert t["tone_source"].tolist() == ["ita", "ita", "ita", "annotated", "annotated"]
    assert t["fst"].iloc[3] == 2 and pd.isna(t["fst"].iloc[4]) and t["tone3"].iloc[4] == "B"
    assert t["tone2"].iloc[4] is None  # B has no tone2: still missing, never guessed
    meta = filled.meta["tone_estimation"]
    assert meta["n_estimated"] == 3 and meta["method"].startswith("border frame")
    assert meta["agreement_on_annotated"]["n"] == 2


def test_fill_annotated_changes_nothing_but_reports_the_gap(ddi_like):
    from dataclasses import replace

    split = blank_tones(replace(ddi_like), [0, 5])
    filled = fill_missing_tones(split, source="annotated")
    pd.testing.assert_frame_equal(filled.table, split.table)
    assert filled.meta["tone_estimation"] == {"source": "annotated", "n_missing": 2, "n_estimated": 0}


# ---------------------------------------------------------------------------------------
# The tone detector
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("detector") / "tone3"
    args = [
        "tone",
        "train",
        "--dataset",
        "synthderm",
        "--eval-dataset",
        "synthderm",
        "--eval-split",
        "test_ddi",
        "--backbone",
        "test_resnet",
        "--epochs",
        "2",
        "--image-size",
        "16",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--set",
        OPTIONS_SET,
        "--set",
        "train.batch_size=32",
    ]
    assert main(args) == 0
    return out


@pytest.fixture(scope="module")
def annotation(detector_dir, tmp_path_factory):
    csv = tmp_path_factory.mktemp("annotate") / "tones.csv"
    args = [
        "tone",
        "annotate",
        "--detector",
        str(detector_dir),
        "--dataset",
        "synthderm",
        "--split",
        "test_ddi",
        "--device",
        "cpu",
        "--out",
        str(csv),
        "--set",
        OPTIONS_SET,
    ]
    assert main(args) == 0
    return pd.read_csv(csv, keep_default_na=False, na_values=[""])


def test_detector_record_holds_honest_scores_of_its_evaluation_set(detector_dir, annotation, ddi_like):
    info = json.loads((detector_dir / "detector.json").read_text())
    assert (detector_dir / "model.safetensors").is_file() and not (detector_dir / "work").exists()
    for key in (
        "backbone",
        "image_size",
        "trained_on",
        "evaluated_on",
        "accuracy",
        "per_tone_f1",
        "n",
        "created",
    ):
        assert key in info
    assert info["backbone"] == "test_resnet" and info["image_size"] == 16
    assert info["trained_on"] == "synthderm" and info["evaluated_on"] == "synthderm:test_ddi"
    assert info["training"]["loss"] == "focal" and info["training"]["focal_alpha"] == [0.3, 0.4, 0.9]
    assert info["training"]["focal_gamma"] == 2.0
    # recompute the scores from the annotate output and the dataset's true tones
    truth = ddi_like.table.set_index("sample_id")["tone3"]
    pred = annotation.set_index("sample_id")["tone3"]
    assert info["n"] == len(truth) == len(pred)
    y, p = truth.loc[pred.index].to_numpy(dtype=object), pred.to_numpy(dtype=object)
    assert info["accuracy"] == pytest.approx(float((y == p).mean()))
    f1 = f1_score(y, p, labels=["A", "B", "C"], average=None, zero_division=0)
    assert [info["per_tone_f1"][t] for t in "ABC"] == pytest.approx(f1.tolist())
    assert sum(info["per_tone_n"].values()) == info["n"]


def test_annotate_writes_detector_tones_and_ita(annotation):
    cols = [
        "sample_id",
        "split",
        "tone3",
        "p_A",
        "p_B",
        "p_C",
        "tone_source",
        "ita",
        "fst_ita",
        "tone3_ita",
        "tone3_annotated",
    ]
    assert list(annotation.columns) == cols
    assert (annotation["tone_source"] == "detector").all()
    assert annotation["tone3"].isin(["A", "B", "C"]).all()
    np.testing.assert_allclose(annotation[["p_A", "p_B", "p_C"]].sum(axis=1), 1.0, atol=1e-4)
    assert np.isfinite(annotation["ita"]).all() and annotation["fst_ita"].between(1, 6).all()
    assert (annotation["tone3_ita"] == annotation["tone3_annotated"]).mean() > 0.7


def test_fill_by_detector_sets_tone3_source_and_trust(detector_dir, annotation, ddi_like):
    from dataclasses import replace

    blank = np.arange(1, len(ddi_like), 3)
    split = blank_tones(replace(ddi_like), blank)
    filled = fill_missing_tones(split, source="detector", detector=detector_dir, device="cpu")
    t = filled.table
    est = t.iloc[blank]
    assert (est["tone_source"] == "detector").all()
    assert (pd.to_numeric(est["fst"]) == -1).all()  # the detector gives tone3 only
    expected = annotation.set_index("sample_id").loc[est["sample_id"], "tone3"].tolist()
    assert est["tone3"].tolist() == expected
    assert est["tone2"].tolist() == [{"A": "light", "C": "dark"}.get(v) for v in expected]
    assert est["tone_confidence"].between(1 / 3, 1).all()
    kept = np.setdiff1d(np.arange(len(t)), blank)
    assert t["tone3"].iloc[kept].tolist() == ddi_like.table["tone3"].iloc[kept].tolist()
    meta = filled.meta["tone_estimation"]
    info = json.loads((detector_dir / "detector.json").read_text())
    assert meta["source"] == "detector" and meta["n_estimated"] == len(blank)
    assert meta["detector"]["accuracy"] == info["accuracy"]
    assert meta["detector"]["per_tone_f1"] == info["per_tone_f1"]
    assert meta["agreement_on_annotated"]["n"] == len(kept)


def test_detector_resizes_images_of_another_size(detector_dir):
    det = load_detector(detector_dir)
    batch = generate(6, seed=9, image_size=24)
    prob = det.predict_proba(batch.images, device="cpu")
    assert prob.shape == (6, 3)
    np.testing.assert_allclose(prob.sum(1), 1.0, atol=1e-5)


def test_missing_or_bad_detector_is_a_clear_error(tmp_path, ddi_like, detector_dir):
    with pytest.raises(DermbenchError, match="needs a trained tone detector"):
        fill_missing_tones(ddi_like, source="detector")
    with pytest.raises(DermbenchError, match="does not exist"):
        fill_missing_tones(ddi_like, source="detector", detector=tmp_path / "nowhere")
    with pytest.raises(DermbenchError, match="detector.json is missing"):
        fill_missing_tones(ddi_like, source="detector", detector=tmp_path)
    (tmp_path / "detector.json").write_text("{not json")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(DermbenchError, match="cannot read"):
        fill_missing_tones(ddi_like, source="detector", detector=tmp_path)
    (tmp_path / "detector.json").write_text(json.dumps({"backbone": "test_resnet"}))
    with pytest.raises(DermbenchError, match="lacks"):
        fill_missing_tones(ddi_like, source="detector", detector=tmp_path)
    info = json.loads((detector_dir / "detector.json").read_text())
    (tmp_path / "detector.json").write_text(json.dumps({**info, "backbone": "resnet18"}))
    (tmp_path / "model.safetensors").write_bytes((detector_dir / "model.safetensors").read_bytes())
    with pytest.raises(DermbenchError, match="do not fit backbone"):
        load_detector(tmp_path)
    with pytest.raises(ConfigError, match="data.tone"):
        fill_missing_tones(ddi_like, source="guess")


def test_cli_refuses_to_score_on_training_data_or_to_overwrite(detector_dir, capsys):
    base = [
        "tone",
        "train",
        "--dataset",
        "synthderm",
        "--backbone",
        "test_resnet",
        "--device",
        "cpu",
        "--set",
        OPTIONS_SET,
    ]
    assert (
        main([*base, "--eval-dataset", "synthderm", "--eval-split", "train", "--out", str(detector_dir)]) == 2
    )
    assert "cannot be scored" in capsys.readouterr().err
    assert (
        main([*base, "--eval-dataset", "synthderm", "--eval-split", "test", "--out", str(detector_dir)]) == 2
    )
    assert "--force" in capsys.readouterr().err


def test_an_interrupted_training_with_other_settings_is_not_resumed(tmp_path, capsys):
    out = tmp_path / "det"
    (out / "work").mkdir(parents=True)
    (out / "work" / "settings.json").write_text(json.dumps({"config": {"seed": 99}}))
    args = [
        "tone",
        "train",
        "--dataset",
        "synthderm",
        "--eval-dataset",
        "synthderm",
        "--eval-split",
        "test_ddi",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--set",
        OPTIONS_SET,
    ]
    assert main(args) == 2
    assert "interrupted detector training with other settings" in capsys.readouterr().err
