"""The tiny diffusion bases shipped in the package (`dermbench.diffusion.pretraining`, `.shipped`):
pretrained outside every protocol split, captioned without diagnosis words, verified before use,
rebuilt deterministically by `dermbench diffusion pretrain-base`."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from dermbench.cli import main
from dermbench.datasets.synthderm import SPLITS, SynthDerm
from dermbench.diffusion import pretraining
from dermbench.diffusion.base import tiny_base
from dermbench.diffusion.components import components_from_folder
from dermbench.diffusion.pixel import pixel_model
from dermbench.diffusion.shipped import CHECKSUMS, LATENT, SHIPPED, verify
from dermbench.errors import DermbenchError
from dermbench.seeds import split_seed

#: a recipe small enough for a test: a few dozen images and steps
REDUCED = [
    "images=48",
    "render_batch=20",
    "latent_size=16",
    "pixel_size=16",
    "vae_steps=3",
    "unet_steps=3",
    "pixel_steps=3",
    "batch_size=4",
]


def _protocol_seeds(data_seeds) -> set[int]:
    return {split_seed(d, s) for d in data_seeds for s in SPLITS}


def test_pretraining_seeds_are_none_of_any_protocol_split_seed():
    seeds = pretraining.pretraining_seeds(50)
    assert len(set(seeds)) == 50 and all(0 <= s < 2**32 for s in seeds)
    assert not set(seeds) & _protocol_seeds(range(pretraining.CHECKED_DATA_SEEDS))
    # the dataset's own generations (what every protocol split is drawn from) use exactly these split seeds
    ds = SynthDerm(n_train=8, n_val=8, n_test=8, n_test_ddi=8, n_test_dermoscopic=8)
    assert {int(ds.scenes(s).seed) for s in SPLITS} == _protocol_seeds([0])


def test_the_shipped_bases_were_rendered_outside_the_protocol_by_the_default_recipe():
    manifest = json.loads((SHIPPED / pretraining.MANIFEST).read_text())
    assert manifest["settings"] == pretraining.SETTINGS
    assert manifest["render_seeds"] == sorted(pretraining.pretraining_seeds(len(manifest["render_seeds"])))
    assert not set(manifest["render_seeds"]) & _protocol_seeds(range(pretraining.CHECKED_DATA_SEEDS))
    assert sum(manifest["images_per_fst"].values()) == pretraining.SETTINGS["images"]
    assert len(manifest["images_per_fst"]) == 6 and min(manifest["images_per_fst"].values()) > 0


def test_captions_name_the_tone_and_the_look_and_never_a_diagnosis():
    _, table = pretraining.pretraining_data({**pretraining.SETTINGS, "images": 600, "render_batch": 200})
    captions = table["caption"]
    assert (
        captions.str.len().max() <= pretraining.MAX_CAPTION
    )  # the character tokenizer would cut a longer one
    words = "|".join(pretraining.DIAGNOSIS_WORDS)
    assert not captions.str.lower().str.contains(words).any()
    assert "label" not in table.columns  # the diagnosis never reaches the captioning
    assert captions.str.contains(r"\bspot\b").all()
    assert captions.str.contains(
        "skin"
    ).all()  # every caption names the skin's tone in one of its vocabularies
    dark = captions[table["fst"] == 6]
    assert dark.str.contains(r"very dark|darker|VI\b|very dark-skinned").all()
    full = ~captions.str.contains(
        "individual"
    )  # the person template's look is shorter: shape and colour only
    assert captions[full & (table["diameter"] > 0.38)].str.contains("large").all()
    assert captions[full & (table["domain"] == "dermoscopic")].str.lower().str.contains("dermoscopy").all()
    assert captions[(table["variegation"] > 0.45)].str.contains("mottled").all()
    assert captions.nunique() > 100


def test_the_shipped_bases_load_offline_with_their_checksums_verified(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    listed = json.loads((SHIPPED / CHECKSUMS).read_text())
    assert sum((SHIPPED / f).stat().st_size for f in listed) <= 20 * 2**20
    assert any(f.endswith(".safetensors") for f in listed) and not any(f.endswith(".bin") for f in listed)
    c = tiny_base()
    assert c.source["identity"] == f"tiny-base:{verify()}"
    assert not any(p.requires_grad for p in c.unet.parameters())
    pixel = pixel_model("tiny", revision=None)
    assert pixel.source["identity"] == f"tiny-pixel:{verify()}" and pixel.unet.config.in_channels == 3


@pytest.fixture
def copy_of_shipped(tmp_path):
    folder = tmp_path / "bases"
    shutil.copytree(SHIPPED, folder)
    return folder


def test_a_damaged_weight_file_is_refused_naming_it(copy_of_shipped):
    weights = copy_of_shipped / LATENT / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(
        DermbenchError, match=r"unet/diffusion_pytorch_model.safetensors fails its checksum.*reinstall"
    ):
        verify(copy_of_shipped)


def test_a_missing_or_unlisted_file_or_listing_is_refused(copy_of_shipped):
    (copy_of_shipped / "extra.bin").write_bytes(b"x")
    with pytest.raises(DermbenchError, match=r"unlisted files \['extra.bin'\]"):
        verify(copy_of_shipped)
    (copy_of_shipped / "extra.bin").unlink()
    (copy_of_shipped / LATENT / "vae" / "config.json").unlink()
    with pytest.raises(DermbenchError, match=r"lack \['latent/vae/config.json'\]"):
        verify(copy_of_shipped)
    (copy_of_shipped / CHECKSUMS).unlink()
    with pytest.raises(DermbenchError, match="have no checksums.json"):
        verify(copy_of_shipped)


def test_pretrain_base_on_a_reduced_recipe_runs_end_to_end_and_rebuilds_the_same_bytes(tmp_path, capsys):
    args = ["diffusion", "pretrain-base", *sum([["--set", s] for s in REDUCED], [])]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert "wrote the tiny bases" in capsys.readouterr().out
    first, second = (json.loads((tmp_path / x / CHECKSUMS).read_text()) for x in "ab")
    assert first == second and len(first) >= 12  # deterministic on CPU
    identity = verify(tmp_path / "a")
    c = components_from_folder(tmp_path / "a" / LATENT, {"identity": identity})
    assert c.vae.config.sample_size == 16 and np.isfinite(c.vae.config.scaling_factor)
    manifest = json.loads((tmp_path / "a" / pretraining.MANIFEST).read_text())
    assert manifest["settings"]["images"] == 48 and sum(manifest["images_per_fst"].values()) == 48
    # compared with the shipped bases (another recipe): exit 1 naming the differing files
    assert main([*args, "--out", str(tmp_path / "c"), "--compare"]) == 1
    assert re.search(r"differs from the shipped bases in \d+ file", capsys.readouterr().out)


def test_pretrain_base_refuses_a_bad_recipe_or_a_used_folder(tmp_path, capsys):
    def error(*extra: str) -> str:
        assert main(["diffusion", "pretrain-base", *extra]) == 2
        return " ".join(capsys.readouterr().err.split())

    assert "unknown pretraining setting(s) ['image']" in error(
        "--out", str(tmp_path / "x"), "--set", "image=3"
    )
    assert "images must be positive" in error("--out", str(tmp_path / "x"), "--set", "images=0")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("keep me")
    assert "is not empty" in error("--out", str(tmp_path / "used"), *sum([["--set", s] for s in REDUCED], []))
    assert (tmp_path / "used" / "file").read_text() == "keep me"
