"""Backbones by timm name, and weights from a local file or a clear offline error."""

import pytest
import timm
import torch
from safetensors.torch import load_file

from dermbench.errors import ConfigError, DermbenchError, UnknownNameError
from dermbench.train.models import create_backbone
from dermbench.train.weights import save_weights

HEAVY = pytest.mark.slow  # ~100 M parameters each: seconds to build on two cores


@pytest.mark.parametrize(
    "name",
    [
        "resnet18",
        "vgg11_bn",
        pytest.param("resnext101_32x8d", marks=HEAVY),
        pytest.param("vit_base_patch16_224", marks=HEAVY),
    ],
)
def test_named_backbones_build_for_the_run_image_size(name):
    model = create_backbone(name, num_classes=3, image_size=64).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)


def test_weights_from_a_local_file_keep_the_backbone_and_reset_a_mismatched_head(tmp_path):
    from safetensors.torch import save_file

    source = timm.create_model("test_resnet", pretrained=False, num_classes=1000)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = create_backbone("test_resnet", num_classes=2, pretrained=str(path))
    src, got = source.state_dict(), model.state_dict()
    stem = next(k for k in src if k.endswith("weight") and src[k].ndim == 4)
    assert torch.equal(src[stem], got[stem])
    assert got["fc.weight"].shape == (2, src["fc.weight"].shape[1])
    torch.save({"state_dict": source.state_dict()}, tmp_path / "weights.pth")
    assert torch.equal(
        create_backbone("test_resnet", num_classes=2, pretrained=str(tmp_path / "weights.pth")).state_dict()[
            stem
        ],
        src[stem],
    )


def test_bad_weights_and_names_are_clear(tmp_path, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("the test tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    with pytest.raises(ConfigError, match="does not exist"):
        create_backbone("test_resnet", num_classes=2, pretrained=str(tmp_path / "nope.pth"))
    torch.save({"unrelated": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="holds no tensor matching"):
        create_backbone("test_resnet", num_classes=2, pretrained=str(tmp_path / "other.pth"))
    with pytest.raises(UnknownNameError, match="Did you mean 'resnet18'"):
        create_backbone("resnet181", num_classes=2)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch"))
    with pytest.raises(
        DermbenchError, match="not in the local timm/Hugging Face cache and the run is offline"
    ):
        create_backbone("resnet18", num_classes=2, pretrained=True)


class Tied(torch.nn.Module):
    """A model whose head shares its weight with the embedding (tied weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(4, 3, bias=False)
        self.head = torch.nn.Linear(4, 3, bias=False)
        self.head.weight = self.embed.weight


def test_save_weights_writes_a_loadable_file_with_tied_weights(tmp_path):
    model = Tied()
    path = tmp_path / "model.safetensors"
    save_weights(model, path)
    loaded = load_file(str(path))
    assert set(loaded) == {"embed.weight", "head.weight"}
    assert torch.equal(loaded["head.weight"], model.embed.weight.detach())
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temporary file left
    source = timm.create_model("test_resnet", pretrained=False, num_classes=2)
    save_weights(source, path)  # replaces the file; the result loads as pretrained weights
    model = create_backbone("test_resnet", num_classes=2, pretrained=str(path))
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), model.state_dict().values()))
