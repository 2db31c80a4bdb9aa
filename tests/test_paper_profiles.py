"""The paper profiles follow their papers (issue 26): each method's paper-profile model, sampler and
data, and ImageNet initialisation from the local cache (never the network; a local weights file or
a temporary hub cache here, models built on the meta device or with tiny timm architectures)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import constants
from safetensors.torch import save_file

from dermbench.errors import DermbenchError
from dermbench.runner import resolve_config
from dermbench.train import models
from dermbench.train.models import FROZEN_VGG16, check_pretrained_weights, create_backbone, fetch_command


def paper(method: str, dataset: str = "synthderm") -> dict:
    return resolve_config(flags={"method": method, "profile": "paper", "dataset": dataset})


def fake_hub_cache(root: Path, weights: str, model: torch.nn.Module) -> Path:
    """A Hugging Face hub cache holding `model`'s state dict as timm's `timm/<weights>` repo."""
    repo = root / f"models--timm--{weights}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snapshot / "model.safetensors"))
    return snapshot / "model.safetensors"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    root = tmp_path / "hub"
    root.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return root


# ----- ImageNet initialisation: one mechanism -----------------------------------------------------


def test_missing_weights_stop_with_the_command_that_fetches_them(hub_cache):
    with pytest.raises(DermbenchError) as err:
        check_pretrained_weights({"model": {"backbone": "vgg16", "pretrained": True}})
    message = str(err.value)
    assert "model.pretrained: vgg16" in message
    assert "python -c \"import timm; timm.create_model('vgg16.tv_in1k', pretrained=True)\"" in message
    assert "huggingface-cli download timm/vgg16.tv_in1k" in message
    assert fetch_command(FROZEN_VGG16).startswith(
        "python -c \"import timm; timm.create_model('vgg16.tv_in1k'"
    )
    assert check_pretrained_weights({"model": {"backbone": "vgg16", "pretrained": False}}) == []


def test_cached_weights_are_found_and_loaded(hub_cache):
    reference = timm.create_model("test_resnet", pretrained=False)
    file = fake_hub_cache(hub_cache, "test_resnet.r160_in1k", reference)
    found = check_pretrained_weights(
        {
            "model": {"backbone": "test_resnet", "pretrained": True},
            "m": {"latent_classifier": {"backbone": "test_resnet", "pretrained": True}},
        }
    )
    assert [f["setting"] for f in found] == ["model.pretrained", "m.latent_classifier.pretrained"]
    assert {f["file"] for f in found} == {str(file)}
    model = create_backbone("test_resnet", num_classes=3, pretrained=True)
    assert torch.equal(model.state_dict()["conv1.0.weight"], reference.state_dict()["conv1.0.weight"])


def test_torch_hub_cache_counts(hub_cache, tmp_path):
    url = timm.models.get_pretrained_cfg("resnet18.tv_in1k").url
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / url.rsplit("/", 1)[1]).write_bytes(b"x")
    assert models.pretrained_cached("resnet18.tv_in1k") == str(checkpoints / url.rsplit("/", 1)[1])


# ----- 1. majority-to-minority: frozen ImageNet VGG-16 under the authors' head --------------------


def test_majority2minority_paper_classifier_trains_only_the_new_head():
    cfg = paper("majority2minority")
    m = cfg["model"]
    assert m["backbone"] == FROZEN_VGG16 and m["pretrained"] is True and m["drop_rate"] == 0.5
    with torch.device("meta"):  # full VGG-16, no memory; pretrained=False as tests never download
        model = create_backbone(
            m["backbone"],
            num_classes=7,
            pretrained=False,
            drop_rate=m["drop_rate"],
            image_size=cfg["data"]["image_size"],
        )
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["head.fc.0.weight", "head.fc.0.bias", "head.fc.3.weight", "head.fc.3.bias"]
    head = model.get_classifier()
    assert [type(x).__name__ for x in head] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert (head[0].in_features, head[0].out_features, head[2].p, head[3].out_features) == (4096, 256, 0.4, 7)
    # frozen: the VGG-16 features and both 4096-d layers (torchvision's 138,357,544 minus its 1000-way layer)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert frozen == 138_357_544 - (4096 * 1000 + 1000)
    assert model(torch.empty(2, 3, 224, 224, device="meta")).shape == (2, 7)


def test_majority2minority_head_from_a_local_weights_file(tmp_path):
    """A weights file of plain VGG-16 loads into the frozen model (the head is new)."""
    torch.manual_seed(0)
    plain = timm.create_model("vgg11", pretrained=False, num_classes=1000)  # vgg11's layout, small enough
    frozen = models.frozen_with_head(
        timm.create_model("vgg11", pretrained=False, num_classes=5), num_classes=5, hidden=256, dropout=0.4
    )
    path = tmp_path / "vgg11.safetensors"
    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(path))
    models.load_weights(frozen, path)
    assert torch.equal(frozen.state_dict()["features.0.weight"], plain.state_dict()["features.0.weight"])
    assert all(not p.requires_grad for n, p in frozen.named_parameters() if not n.startswith("head.fc."))


def test_tiny_majority2minority_is_unchanged():
    cfg = resolve_config(flags={"method": "majority2minority"})
    assert cfg["model"]["backbone"] == "resnet18" and cfg["model"]["pretrained"] is False


# ----- 2. MFD: plain loader, ImageNet VGG-11 student (the ME repository's derm baseline) ----------


def test_mfd_paper_student_uses_the_plain_sampler_and_an_imagenet_vgg11():
    from dermbench.methods import mfd

    cfg = paper("mfd", "fitz17k")
    settings = mfd.check_settings(cfg["mfd"])
    assert mfd.student_train_settings(settings)["sampler"] == "none"
    assert settings["student_model"] == {"backbone": "vgg11.tv_in1k", "pretrained": True}
    assert (
        cfg["model"]["backbone"] == "vgg11_bn" and cfg["model"]["pretrained"] is False
    )  # the vanilla teacher
    assert ("mfd.student_model.pretrained", "vgg11.tv_in1k") in models.pretrained_requests(cfg)
    isic = mfd.check_settings(paper("mfd", "isic2019")["mfd"])
    assert isic["student_model"]["backbone"] == "resnet18.tv_in1k"
    with torch.device("meta"):  # the student has VGG-11's 4096-d penultimate features, without BN
        student = create_backbone("vgg11.tv_in1k", num_classes=114, pretrained=False)
    assert student.get_classifier().in_features == 4096
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in student.modules())


def test_mfd_tiny_student_keeps_the_group_sampler():
    from dermbench.methods import mfd

    settings = mfd.check_settings(resolve_config(flags={"method": "mfd"})["mfd"])
    assert mfd.student_train_settings(settings)["sampler"] == "group" and "student_model" not in settings


# ----- 3. Class-N-Diff: the latent classifier's ResNet-101 starts from ImageNet (the authors' code) --


def test_classndiff_paper_latent_classifier_is_imagenet_resnet101():
    cfg = paper("classndiff")
    lc = cfg["classndiff"]["latent_classifier"]
    assert lc["backbone"] == "resnet101.tv_in1k" and lc["pretrained"] is True
    assert ("classndiff.latent_classifier.pretrained", "resnet101.tv_in1k") in models.pretrained_requests(cfg)
    tiny = resolve_config(flags={"method": "classndiff"})["classndiff"]["latent_classifier"]
    assert tiny["backbone"] == "test_resnet" and tiny["pretrained"] is False


# ----- 4. DermDiff: the ResNeXt-101 classifier starts from ImageNet weights -----------------------


def test_dermdiff_paper_classifier_is_imagenet_resnext101():
    cfg = paper("dermdiff")
    assert cfg["model"]["backbone"] == "resnext101_32x8d" and cfg["model"]["pretrained"] is True
    assert ("model.pretrained", "resnext101_32x8d") in models.pretrained_requests(cfg)
    assert (
        models.weights_id("resnext101_32x8d") == "resnext101_32x8d.tv_in1k"
    )  # torchvision's ImageNet weights
    assert resolve_config(flags={"method": "dermdiff"})["model"]["pretrained"] is False


# ----- 2. DermDiff on Fitzpatrick17k: the paper's neoplastic images only -----------------------


def test_dermdiff_paper_fitz17k_keeps_only_the_neoplastic_rows(make_fitz17k, tmp_path):
    """On a generated tree in the published CSV format: the paper profile's malignant task has the
    benign and malignant rows of three_partition_label only (the paper's Tab. 1 data), the
    non-neoplastic ones counted; each kept row has the split it has without the option."""
    from dermbench.data.pool import DatasetPool  # noqa: PLC0415
    from dermbench.datasets.fitz17k import NON_NEOPLASTIC  # noqa: PLC0415

    tree = make_fitz17k(n=108, n_unknown=3)
    cfg = resolve_config(
        flags={"method": "dermdiff", "profile": "paper", "dataset": "fitz17k"}, sets=[f"data.root={tmp_path}"]
    )
    assert cfg["data"]["options"] == {"fitz17k": {"neoplastic_only": True}}
    assert paper("dermdiff")["data"]["options"] == {}  # SynthDerm has no such partition
    table = DatasetPool(cfg, ()).get("fitz17k").table("malignant")
    partition = tree.meta.set_index("md5hash")["three_partition_label"]
    kept = partition.loc[table["sample_id"]]
    assert set(kept) == {"benign", "malignant"}
    assert len(table) == int((partition != "non-neoplastic").sum())
    assert table.attrs["excluded"][NON_NEOPLASTIC] == int((partition == "non-neoplastic").sum())
    assert (table["label"].to_numpy() == (kept == "malignant").to_numpy()).all()
    from dermbench.datasets.fitz17k import Fitz17k  # noqa: PLC0415

    full = Fitz17k(tree.root).table("malignant").set_index("sample_id")["split"]
    assert (full.loc[table["sample_id"]].to_numpy() == table["split"].to_numpy()).all()  # the same split
    tiny = resolve_config(flags={"method": "dermdiff", "profile": "tiny", "dataset": "fitz17k"})
    assert tiny["data"]["options"] == {}


def test_neoplastic_only_must_be_a_switch(make_fitz17k):
    from dermbench.datasets.fitz17k import Fitz17k  # noqa: PLC0415

    tree = make_fitz17k()
    with pytest.raises(DermbenchError, match="option neoplastic_only must be true or false, got 'yes'"):
        Fitz17k(tree.root, neoplastic_only="yes")
