"""`dermbench tone compare` (DermDiff's Table 3): per-tone accuracies of ITA and trained
detectors, checked on cases computed by hand, on SynthDerm with stub estimators, and end to end."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dermbench.cli import main
from dermbench.data.generated import MANIFEST_COLUMNS
from dermbench.data.model import Split
from dermbench.data.pool import DatasetPool
from dermbench.datasets.synthderm_params import BALANCED_TONE_MIX
from dermbench.datasets.synthderm_render import generate
from dermbench.errors import ConfigError
from dermbench.runner import resolve_config
from dermbench.tone.compare import (
    Estimator,
    check_held_out,
    compare,
    default_evals,
    describe_detector,
    display_rows,
    ita_estimator,
    markdown,
    parse_detectors,
    parse_eval,
    score,
    score_split,
)
from dermbench.tone.detector import ToneDetector, tone_split

OPTIONS = {"n_train": 120, "n_val": 45, "n_test": 20, "n_test_ddi": 45, "n_test_dermoscopic": 20}
OPTIONS_SET = "data.options={" + ", ".join(f"{k}: {v}" for k, v in OPTIONS.items()) + "}"
# flat skin colours and the FST their ITA falls in (checked in test_flat_colours_fall_where_expected)
LIGHT, MEDIUM, TAN, BROWN, DARK = (
    (236, 200, 180),
    (224, 172, 140),
    (198, 134, 96),
    (150, 96, 62),
    (96, 60, 42),
)


# ---------------------------------------------------------------------------------------
# Scores computed by hand
# ---------------------------------------------------------------------------------------
def test_score_by_hand():
    truth = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    pred = np.array([0, 0, 1, -1, 1, 0, 2, 2, 0, -1])  # -1: no estimate, counted as wrong
    row = score(truth, pred)
    assert (row["acc_A"], row["acc_B"], row["acc_C"]) == (2 / 4, 1 / 2, 2 / 4)
    assert row["accuracy"] == 5 / 10 and row["balanced_accuracy"] == pytest.approx(0.5)
    # A: 2 right of 4 predicted A (rows 0, 1, 5, 8); B: 1 of 2 (rows 2, 4); C: 2 of 2 (rows 6, 7)
    assert row["f1_A"] == pytest.approx(0.5) and row["f1_B"] == pytest.approx(0.5)
    assert row["f1_C"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert (row["n"], row["n_A"], row["n_B"], row["n_C"], row["no_estimate"]) == (10, 4, 2, 4, 2)


def test_a_tone_absent_from_the_truth_has_no_score_and_is_left_out_of_balanced_accuracy():
    row = score(np.array([0, 0, 2, 2]), np.array([0, 1, 2, 2]))
    assert np.isnan(row["acc_B"]) and np.isnan(row["f1_B"]) and row["n_B"] == 0
    assert row["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)


def flat_split(colours, fst) -> Split:
    """One flat-colour 16 px image per row, its annotated FST given."""
    images = np.stack([np.broadcast_to(np.array(c, dtype=np.uint8), (16, 16, 3)) for c in colours])
    table = pd.DataFrame(
        {"sample_id": [f"s{i}" for i in range(len(fst))], "label": 0, "fst": fst, "tone_source": "annotated"}
    )
    split, _ = tone_split(Split(name="flat", table=table, images=images, classes=("benign", "malignant")))
    return split


def test_flat_colours_fall_where_expected():
    split = flat_split([LIGHT, MEDIUM, TAN, BROWN, DARK], [1, 2, 4, 5, 6])
    assert ita_estimator().predict(split).tolist() == [0, 0, 1, 2, 2]


def test_ita_and_a_stub_on_flat_colours():
    # truth A A | B B | C C C; ITA reads A A | B A | C C and nothing on the black image
    split = flat_split([LIGHT, MEDIUM, TAN, MEDIUM, BROWN, DARK, (0, 0, 0)], [1, 2, 3, 4, 5, 6, 6])
    always_c = Estimator("always C", lambda s: np.full(len(s), 2), "stub")
    frame = score_split(split, [ita_estimator(), always_c], eval_name="flat")
    assert frame["estimator"].tolist() == ["ITA", "always C"] and (frame["eval"] == "flat").all()
    ita, stub = frame.iloc[0], frame.iloc[1]
    assert (ita["acc_A"], ita["acc_B"], ita["acc_C"]) == (1.0, 0.5, pytest.approx(2 / 3))
    assert ita["accuracy"] == pytest.approx(5 / 7) and ita["no_estimate"] == 1
    assert ita["balanced_accuracy"] == pytest.approx((1 + 0.5 + 2 / 3) / 3)
    assert (stub["acc_A"], stub["acc_B"], stub["acc_C"], stub["accuracy"]) == (
        0.0,
        0.0,
        1.0,
        pytest.approx(3 / 7),
    )
    assert stub["balanced_accuracy"] == pytest.approx(1 / 3) and stub["no_estimate"] == 0


# ---------------------------------------------------------------------------------------
# Evaluation sets and estimators at their own image sizes
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pool():
    cfg = resolve_config(
        sets=[OPTIONS_SET, "data.image_size=16"], flags={"dataset": "synthderm", "device": "cpu"}
    )
    return DatasetPool(cfg, ())


def sized_stub(name: str, size: int, predict, seen: list) -> Estimator:
    def run(split):
        seen.append((name, split.images.shape[1]))
        return predict(split)

    return Estimator(name, run, "stub", image_size=size)


def test_compare_reads_each_set_at_each_estimators_size(pool):
    seen: list = []
    oracle = sized_stub("oracle", 24, lambda s: s.labels, seen)
    always_a = sized_stub("always A", 16, lambda s: np.zeros(len(s), dtype=int), seen)
    frame = compare(
        pool, [oracle, ita_estimator(), always_a], [("synthderm", "test_ddi"), ("synthderm", "test")]
    )
    assert frame["eval"].tolist() == ["synthderm:test_ddi"] * 3 + ["synthderm:test"] * 3
    assert frame["estimator"].tolist() == ["oracle", "ITA", "always A"] * 2
    assert sorted(seen) == sorted([("oracle", 24), ("always A", 16)] * 2)
    for split in ("test_ddi", "test"):
        truth = pool.load("synthderm", split).table["tone3"].value_counts()
        rows = frame[frame["eval"] == f"synthderm:{split}"].set_index("estimator")
        assert [rows.loc["oracle", f"n_{t}"] for t in "ABC"] == [truth.get(t, 0) for t in "ABC"]
        assert (
            rows.loc["oracle", ["accuracy", "balanced_accuracy", "acc_A", "acc_B", "acc_C"]].tolist()
            == [1.0] * 5
        )
        assert rows.loc["always A", "accuracy"] == pytest.approx(truth["A"] / truth.sum())
        assert rows.loc["always A", ["acc_A", "acc_B", "acc_C"]].tolist() == [1.0, 0.0, 0.0]


def test_estimator_names_must_be_distinct(pool):
    with pytest.raises(ConfigError, match="distinct names"):
        compare(pool, [ita_estimator(), ita_estimator()], [("synthderm", "test_ddi")])


# ---------------------------------------------------------------------------------------
# Arguments and defaults
# ---------------------------------------------------------------------------------------
def test_parse_detectors_and_evals():
    assert parse_detectors(["real=detectors/a", "real+syn=detectors/b"]) == {
        "real": Path("detectors/a"),
        "real+syn": Path("detectors/b"),
    }
    for bad, message in [
        ("detectors/a", "expected NAME=DIR"),
        ("=x", "expected NAME=DIR"),
        ("ita=x", "ITA row"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_detectors([bad])
    with pytest.raises(ConfigError, match="given twice"):
        parse_detectors(["a=x", "a=y"])
    assert parse_eval("ddi") == ("ddi", "test") and parse_eval("synthderm:test_ddi") == (
        "synthderm",
        "test_ddi",
    )
    with pytest.raises(ConfigError, match="DATASET:SPLIT"):
        parse_eval(":test")


def test_default_eval_is_synthderms_ddi_like_set_only_for_synthderm():
    assert default_evals({"synthderm"}) == [("synthderm", "test_ddi")]
    assert default_evals({"fitz17k"}) == [("ddi", "test")]
    assert default_evals({"synthderm", "fitz17k"}) == [("ddi", "test")]


def fake_detector(**info) -> ToneDetector:
    base = {
        "backbone": "test_resnet",
        "image_size": 16,
        "trained_on": "synthderm",
        "data": {"train": {"split": "synthderm:train"}, "val": {"split": "synthderm:train (15 % held out)"}},
    }
    return ToneDetector(path=Path("detectors/x"), info={**base, **info}, model=None)


def test_a_detector_is_not_scored_on_what_it_trained_or_chose_its_epoch_on():
    check_held_out({"real": fake_detector()}, [("synthderm", "test_ddi"), ("ddi", "train")])
    for split in ("train", "val"):
        detector = fake_detector(
            data={"train": {"split": "synthderm:train"}, "val": {"split": "synthderm:val"}}
        )
        with pytest.raises(ConfigError, match=f"'real' .* on synthderm:{split}"):
            check_held_out({"real": detector}, [("synthderm", split)])


def test_description_tells_real_from_real_plus_synthetic():
    assert (
        describe_detector(fake_detector())
        == "detectors/x (test_resnet, 16 px, default recipe; trained on synthderm)"
    )
    mixed = fake_detector(
        synthetic=[{"path": "/cache/generated/abc", "n": 60}], training={"recipe": "dermdiff"}
    )
    assert (
        describe_detector(mixed)
        == "detectors/x (test_resnet, 16 px, dermdiff recipe; trained on synthderm + synthetic abc (n=60))"
    )


# ---------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------
def test_markdown_has_one_table_per_set_and_names_the_estimators():
    split = flat_split([LIGHT, TAN, BROWN], [1, 3, 5])
    frame = pd.concat(
        [
            score_split(split, [ita_estimator()], eval_name="flat"),
            score_split(flat_split([LIGHT, BROWN], [1, 5]), [ita_estimator()], eval_name="no-b"),
        ]
    )
    text = markdown(frame)
    assert "## flat: n = 3 (A 1, B 1, C 1)" in text and "## no-b: n = 2 (A 1, B 0, C 1)" in text
    assert "| estimator   |   acc A |   acc B |   acc C |   F1 A |" in text
    no_b = text.split("## no-b")[1].splitlines()[4]
    assert no_b.split("|")[3].strip() == "-"  # acc B of a set without B: no value, not 0
    assert text.count("- **ITA**: median ITA") == 1
    assert list(display_rows(frame, f1=False).columns) == [
        "estimator",
        "acc A",
        "acc B",
        "acc C",
        "accuracy",
        "bal. acc",
        "n",
        "no estimate",
    ]


# ---------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------
def write_generated(folder: Path, n: int) -> Path:
    """A generated set of n tone-balanced SynthDerm images at 24 px, their true tone requested."""
    batch = generate(n, seed=7, image_size=24, tone_mix=BALANCED_TONE_MIX)
    labels = batch.table["label"].to_numpy()
    manifest = pd.DataFrame(
        {
            "sample_id": [f"g{i}" for i in range(n)],
            "label": labels,
            "class_name": np.array(["benign", "malignant"])[labels],
            "fst": batch.table["fst"],
            "tone3": "",
            "prompt": "",
            "seed": np.arange(n),
            "source_id": "",
            "domain": "clinical",
        },
        columns=list(MANIFEST_COLUMNS),
    )
    folder.mkdir(parents=True)
    np.save(folder / "images.npy", batch.images)
    manifest.to_csv(folder / "manifest.csv", index=False)
    return folder


def markdown_rows(text: str) -> dict[str, list[str]]:
    """{estimator: its cells} of the first table in a compare page."""
    lines = [line for line in text.splitlines() if line.startswith("| ")][1:]
    return {
        cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)
    }


@pytest.mark.slow
def test_cli_compares_ita_and_real_vs_real_plus_synthetic_detectors(tmp_path, capsys):
    """Two one-epoch detectors of a tiny backbone (a few seconds), then the comparison: its detector
    rows reproduce the scores each detector recorded on the same set when it was trained."""
    base = [
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
        "1",
        "--image-size",
        "16",
        "--device",
        "cpu",
        "--set",
        OPTIONS_SET,
        "--set",
        "train.batch_size=32",
    ]
    assert main([*base, "--out", str(tmp_path / "real")]) == 0
    gen = write_generated(tmp_path / "gen", 30)
    assert main([*base, "--synthetic", str(gen), "--out", str(tmp_path / "mixed")]) == 0
    capsys.readouterr()

    out = tmp_path / "cmp.md"
    args = [
        "tone",
        "compare",
        "--detector",
        f"real={tmp_path / 'real'}",
        "--detector",
        f"real+syn={tmp_path / 'mixed'}",
        "--device",
        "cpu",
        "--set",
        OPTIONS_SET,
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert "synthderm:test_ddi: n = 45" in capsys.readouterr().out
    text = out.read_text()
    assert "## synthderm:test_ddi: n = 45 (A " in text  # the default: SynthDerm's DDI-like set
    rows = markdown_rows(text)
    assert list(rows) == ["ITA", "real", "real+syn"]
    for name, folder in (("real", "real"), ("real+syn", "mixed")):
        info = json.loads((tmp_path / folder / "detector.json").read_text())
        accuracy, balanced = float(rows[name][6]), float(rows[name][7])
        assert accuracy == pytest.approx(info["accuracy"], abs=5e-4)
        assert balanced == pytest.approx(info["balanced_accuracy"], abs=5e-4)
        assert [float(rows[name][3 + k]) for k in range(3)] == pytest.approx(
            [info["per_tone_f1"][t] for t in "ABC"], abs=5e-4
        )
    assert "synthetic gen (n=30)" in text.split("- **real+syn**")[1]

    assert main([*args, "--eval", "synthderm:val"]) == 2
    assert "trained or validated on" in " ".join(capsys.readouterr().err.split())  # rich may wrap the line
