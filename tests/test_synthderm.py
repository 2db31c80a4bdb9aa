"""SynthDerm: determinism, composition, masks, tone-dependent contrast, the spurious cue,
the held-out domains and the Dataset API. Small batches at 16-32 px keep this fast."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from dermbench.data.model import REQUIRED_COLUMNS, Split
from dermbench.datasets import synthderm as sd
from dermbench.datasets import synthderm_params as params
from dermbench.datasets import synthderm_render as renderer
from dermbench.errors import ConfigError, DataError
from dermbench.seeds import split_seed
from dermbench.tone.ita import fst_from_ita

SMALL = dict(n_train=200, n_val=60, n_test=80, n_test_ddi=60, n_test_dermoscopic=60)


@pytest.fixture(scope="module")
def batch() -> renderer.SynthBatch:
    return renderer.generate(240, seed=11, image_size=32)


@pytest.fixture(scope="module")
def small() -> sd.SynthDerm:
    return sd.SynthDerm(data_seed=0, **SMALL)


# ----- determinism ---------------------------------------------------------------------


def test_same_seed_gives_identical_bytes(batch):
    again = renderer.generate(240, seed=11, image_size=32)
    assert again.images.tobytes() == batch.images.tobytes()
    assert again.masks.tobytes() == batch.masks.tobytes()
    pd.testing.assert_frame_equal(again.table, batch.table)


def test_different_seed_differs(batch):
    other = renderer.generate(240, seed=12, image_size=32)
    assert not np.array_equal(other.images, batch.images)
    assert not other.table["ita"].equals(batch.table["ita"])


def test_shapes_and_dtypes(batch):
    assert batch.images.shape == (240, 32, 32, 3) and batch.images.dtype == np.uint8
    assert batch.masks.shape == (240, 32, 32) and batch.masks.dtype == np.uint8
    assert len(batch.table) == 240
    for col in ("fst", "label", "ita", "asymmetry", "border", "variegation", "diameter", "contrast"):
        assert col in batch.table
    for col in ("has_ruler", "has_marker", "has_hair"):
        assert batch.table[col].dtype == bool


def test_scene_parameters_do_not_depend_on_image_size():
    a = renderer.generate(40, seed=3, image_size=16)
    b = renderer.generate(40, seed=3, image_size=32)
    pd.testing.assert_frame_equal(a.table, b.table)
    # the same lesion at both sizes: the 32 px mask pooled 2x2 agrees with the 16 px one almost everywhere
    pooled = (b.masks == params.LESION).reshape(40, 16, 2, 16, 2).mean(axis=(2, 4)) >= 0.5
    assert np.mean(pooled == (a.masks == params.LESION)) > 0.97


# ----- composition ---------------------------------------------------------------------


def test_train_tone_mix_and_malignant_rate():
    big = renderer.generate(5000, seed=0, image_size=16)
    fst = big.table["fst"].to_numpy()
    share = np.bincount(fst, minlength=7)[1:] / len(fst)
    assert np.allclose(share, params.FITZ17K_TONE_MIX, atol=0.02)
    assert set(np.unique(fst)) == {1, 2, 3, 4, 5, 6}
    label = big.table["label"].to_numpy()
    assert abs(label.mean() - 0.15) < 0.01
    for t in range(1, 7):  # the malignant rate holds within every tone, so tone and label are independent
        assert abs(label[fst == t].mean() - 0.15) < 0.03


def test_skin_colour_follows_the_ita_thresholds(batch):
    table = batch.table
    ita = np.degrees(np.arctan2(table["skin_l"] - 50, table["skin_b"]))
    assert np.allclose(ita, table["ita"])
    assert np.array_equal(fst_from_ita(table["ita"]), table["fst"].to_numpy())
    assert list(fst_from_ita([60, 50, 30, 20, 0, -40])) == [1, 2, 3, 4, 5, 6]


def test_lesion_features_differ_by_label_but_overlap():
    table = renderer.sample_scenes(3000, seed=5).table
    benign, malignant = table[table.label == 0], table[table.label == 1]
    for col in ("severity", "asymmetry", "border", "variegation", "diameter"):
        assert malignant[col].mean() > benign[col].mean()
        # overlapping: no single feature separates the classes (AUC well below 1)
        auc = roc_auc_score(table.label, table[col])
        assert 0.65 < auc < 0.96, (col, auc)
        assert (benign[col] > malignant[col].quantile(0.25)).mean() > 0.05


# ----- masks ---------------------------------------------------------------------------


def test_masks_hold_documented_classes(batch):
    masks, table = batch.masks, batch.table
    assert set(np.unique(masks)) <= set(range(len(params.MASK_CLASSES)))
    assert params.MASK_CLASSES == ("background", "skin", "lesion", "marker", "ruler")
    assert (masks == params.LESION).any(axis=(1, 2)).all()
    assert (masks == params.SKIN).any(axis=(1, 2)).all()
    has = {c: (masks == getattr(params, c.upper())).any(axis=(1, 2)) for c in ("marker", "ruler")}
    ruler = table["has_ruler"].to_numpy()
    marker = table["has_marker"].to_numpy()
    assert ruler.any() and marker.any()
    assert np.array_equal(has["ruler"], ruler)
    assert not has["marker"][~marker].any() and has["marker"][marker].mean() > 0.9
    backdrop = table["has_backdrop"].to_numpy()
    assert not (masks[~backdrop] == params.BACKGROUND).any()


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    out[:, :, 1:] |= mask[:, :, :-1]
    out[:, :, :-1] |= mask[:, :, 1:]
    return out


def test_lesion_mask_is_where_the_lesion_changes_the_pixels():
    scenes = renderer.sample_scenes(150, seed=4)
    with_lesion, masks = renderer.render(scenes, image_size=32, artifacts=False)
    skin_only, skin_masks = renderer.render(scenes, image_size=32, lesion=False, artifacts=False)
    assert set(np.unique(skin_masks)) == {params.SKIN}
    lesion = masks == params.LESION
    diff = np.abs(with_lesion.astype(int) - skin_only.astype(int)).max(axis=-1)
    assert (diff[lesion] >= 1).mean() > 0.99  # every lesion pixel is changed, also on dark skin
    assert _dilate(lesion)[diff >= 3].mean() > 0.999  # visible changes are in the lesion (or its soft edge)


def test_hair_keeps_the_class_underneath():
    scenes = renderer.sample_scenes(150, seed=8)
    _, plain = renderer.render(scenes, image_size=32, artifacts=False)
    images, full = renderer.render(scenes, image_size=32)
    changed = plain != full
    assert set(np.unique(full[changed])) <= {params.MARKER, params.RULER, params.BACKGROUND}
    hairy = (
        scenes.table["has_hair"].to_numpy()
        & ~scenes.table[["has_marker", "has_ruler", "has_backdrop"]].any(axis=1).to_numpy()
    )
    assert hairy.any()
    assert np.array_equal(full[hairy], plain[hairy])  # hair drawn, mask unchanged


def test_lesion_contrast_is_lower_on_dark_skin():
    b = renderer.generate(600, seed=21, image_size=32, tone_mix=params.BALANCED_TONE_MIX)
    fst = b.table["fst"].to_numpy()
    diffs = np.full(len(fst), np.nan)
    for i in range(len(fst)):
        lesion, skin = b.masks[i] == params.LESION, b.masks[i] == params.SKIN
        if lesion.sum() >= 4 and skin.sum() >= 4:
            img = b.images[i].astype(float)
            diffs[i] = np.linalg.norm(img[lesion].mean(0) - img[skin].mean(0))
    light, dark = np.nanmean(diffs[fst <= 2]), np.nanmean(diffs[fst >= 5])
    assert dark < 0.6 * light
    means = b.table.groupby("fst")["contrast"].mean()
    assert means[1] > means[3] > means[5] > means[6]


# ----- spurious cue --------------------------------------------------------------------


def _corr(a: pd.Series, b: pd.Series) -> float:
    return float(np.corrcoef(a.astype(float), b.astype(float))[0, 1])


def test_spurious_cue_only_on_light_skin():
    table = renderer.sample_scenes(6000, seed=9, spurious=0.8).table
    light, dark = table[table.fst <= 3], table[table.fst >= 4]
    assert _corr(light.has_marker, light.label) > 0.5
    assert abs(_corr(dark.has_marker, dark.label)) < 0.1
    assert light[light.label == 1].has_marker.mean() > 0.7


def test_no_spurious_cue_by_default():
    table = renderer.sample_scenes(6000, seed=9).table
    light = table[table.fst <= 3]
    assert abs(_corr(light.has_marker, light.label)) < 0.1
    assert 0.05 < table.has_marker.mean() < 0.15


def test_spurious_option_affects_train_and_val_only():
    ds = sd.SynthDerm(spurious=0.9, n_train=3000, n_val=50, n_test=3000, n_test_ddi=20, n_test_dermoscopic=20)
    table = ds.table("malignant")
    train = table[(table.split == "train") & (table.fst <= 3)]
    test = table[(table.split == "test") & (table.fst <= 3)]
    assert _corr(train.has_marker, train.label) > 0.5
    assert abs(_corr(test.has_marker, test.label)) < 0.1


# ----- held-out domains ----------------------------------------------------------------


def test_ddi_split_is_tone_balanced(small):
    table = small.table("malignant")
    ddi = table[table.split == "test_ddi"]
    counts = np.bincount(ddi.fst, minlength=7)[1:]
    assert counts.max() - counts.min() <= 1
    assert abs(ddi.label.mean() - params.DDI_MALIGNANT_RATE) < 0.05


def test_dermoscopic_images_have_a_black_surround():
    b = renderer.generate(40, seed=2, image_size=32, dermoscopic=True)
    corners = b.masks[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners == params.BACKGROUND).all()
    assert b.images[:, [0, 0, -1, -1], [0, -1, 0, -1]].max() < 12
    centre = b.masks[:, 16, 16]
    assert (centre != params.BACKGROUND).all()
    clinical = renderer.generate(40, seed=2, image_size=32)
    assert (b.table["diameter"] > clinical.table["diameter"]).mean() > 0.9  # zoomed in
    assert set(b.table["domain"]) == {"dermoscopic"} and set(clinical.table["domain"]) == {"clinical"}


# ----- Dataset API ---------------------------------------------------------------------


def test_dataset_load_gives_a_split_with_masks(small):
    split = small.load(task="malignant", split="train", image_size=32)
    assert isinstance(split, Split)
    assert split.images.shape == (200, 32, 32, 3) and split.masks.shape == (200, 32, 32)
    assert split.classes == ("benign", "malignant")
    assert split.meta["mask_classes"] == params.MASK_CLASSES
    assert split.table["sample_id"].iloc[12] == "train-000012"
    assert split.table["image"].iloc[12] == "synthderm://train/12"
    direct = renderer.generate(200, seed=split_seed(0, "train"), image_size=32)
    assert np.array_equal(split.images, direct.images) and np.array_equal(split.masks, direct.masks)
    assert np.array_equal(split.labels, direct.table["label"].to_numpy())


def test_dataset_table_columns_and_splits(small):
    table = small.table("malignant")
    for col in (
        *REQUIRED_COLUMNS,
        "ita",
        "asymmetry",
        "border",
        "variegation",
        "diameter",
        "contrast",
        "has_hair",
    ):
        assert col in table
    assert table["sample_id"].is_unique
    assert dict(table["split"].value_counts()) == {
        "train": 200,
        "val": 60,
        "test": 80,
        "test_ddi": 60,
        "test_dermoscopic": 60,
    }
    assert set(table["tone_source"]) == {"annotated"}
    assert set(table.loc[table.split == "test_dermoscopic", "domain"]) == {"dermoscopic"}
    assert set(table.loc[table.split != "test_dermoscopic", "domain"]) == {"clinical"}
    assert small.classes("malignant") == ("benign", "malignant")
    assert [t.split for t in small.test_sets] == ["test", "test_ddi", "test_dermoscopic"]
    assert sd.SynthDerm.requires_root is False and sd.SynthDerm.name == "synthderm"


def test_images_for_any_row_subset(small):
    table = small.table("malignant")
    rows = table.iloc[[5, 300, 2, 401]]  # mixed splits, any order
    images, failures = small.images(rows, size=16)
    assert failures == {} and images.shape == (4, 16, 16, 3)
    train = small.images(table[table.split == "train"], size=16)[0]
    assert np.array_equal(images[0], train[5]) and np.array_equal(images[2], train[2])


def test_splits_do_not_depend_on_other_split_sizes():
    a = sd.SynthDerm(n_train=50, n_test=30, n_val=10, n_test_ddi=10, n_test_dermoscopic=10)
    b = sd.SynthDerm(n_train=80, n_test=30, n_val=20, n_test_ddi=10, n_test_dermoscopic=10)
    ta, tb = a.table("malignant"), b.table("malignant")
    pd.testing.assert_frame_equal(
        ta[ta.split == "test"].reset_index(drop=True), tb[tb.split == "test"].reset_index(drop=True)
    )
    assert np.array_equal(
        a.load(task="malignant", split="test", image_size=16).images,
        b.load(task="malignant", split="test", image_size=16).images,
    )
    c = sd.SynthDerm(data_seed=1, n_train=50, n_test=30, n_val=10, n_test_ddi=10, n_test_dermoscopic=10)
    assert not c.table("malignant")["ita"].equals(ta["ita"])


def test_registered_under_its_name():
    from dermbench.plugins import make_dataset

    ds = make_dataset(
        "synthderm", root=None, options={"n_train": 20, "on_error": "stop", "split_rule": "standard"}
    )
    assert isinstance(ds, sd.SynthDerm) and ds.options["n_train"] == 20


# ----- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, match",
    [
        ({"n_train": -1}, "n_train"),
        ({"n_test": 0}, "n_test"),
        ({"n_val": 2.5}, "n_val"),
        ({"n_train": True}, "n_train"),
        ({"data_seed": -3}, "data_seed"),
        ({"spurious": 1.5}, "spurious"),
    ],
)
def test_bad_option_values(options, match):
    with pytest.raises(DataError, match=match):
        sd.SynthDerm(**options)


def test_unknown_option_names_the_closest():
    with pytest.raises(ConfigError, match="n_train"):
        sd.SynthDerm(n_trian=10)
    with pytest.raises(ConfigError, match="on_error"):
        sd.SynthDerm(on_error="ignore")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n": -5}, "n must be"),
        ({"tone_mix": (0.5, 0.5, 0.5, 0, 0, 0)}, "sum to 1"),
        ({"tone_mix": (0.5, 0.5)}, "6 non-negative"),
        ({"tone_mix": (1.2, -0.2, 0, 0, 0, 0)}, "6 non-negative"),
        ({"malignant_rate": 1.5}, "malignant_rate"),
        ({"spurious": -0.1}, "spurious"),
        ({"image_size": 4}, "image_size"),
    ],
)
def test_bad_generate_arguments(kwargs, match):
    args = {"n": 4, "seed": 0, "image_size": 16, **kwargs}
    with pytest.raises(DataError, match=match):
        renderer.generate(args.pop("n"), **args)


def test_bad_image_reference(small):
    with pytest.raises(DataError, match="not a synthderm image"):
        small.images(pd.DataFrame({"image": ["train/3.png"]}), size=16)
    with pytest.raises(DataError, match="out of range"):
        small.images(pd.DataFrame({"image": ["synthderm://train/999"]}), size=16)
    with pytest.raises(DataError, match="no split"):
        small.scenes("holdout")


def test_zero_images():
    b = renderer.generate(0, seed=0, image_size=16)
    assert b.images.shape == (0, 16, 16, 3) and len(b.table) == 0
