"""Every paper profile builds exactly its paper's models (issue 26), proven without a GPU: the
models are built on torch's meta device (shapes only: no memory, no download, no init cost), their
parameter counts equal the published figures, and one forward step of each with the method's
paper-profile input shapes gives the expected output shapes.

Every count below was computed (sum of `numel` over the parameters) and matches its source:
- torchvision's model docs ("Params" of each ImageNet weights entry): VGG-16 138,357,544;
  VGG-11 132,863,336; VGG-11-BN 132,868,840; ResNet-18 11,689,512; ResNet-101 44,549,160;
  ResNeXt-101 32x8d 88,791,336 (timm's `*.tv_in1k` models are torchvision's architectures).
- Stable Diffusion (the diffusers checkpoints' model cards / `from_pretrained(...).num_parameters()`):
  SD 1.x UNet 859,520,964 (the "860M UNet" of the SD 1 model card); SD 2.x UNet 865,910,724;
  the KL-f8 VAE 83,653,863 (the "84M" autoencoder); CLIP ViT-L/14 text tower 123,060,480
  ("123M text encoder"); OpenCLIP ViT-H/14 text tower as SD 2 uses it (23 layers) 340,387,840.
- DiT (Peebles & Xie, ICCV 2023, Table 4: DiT-L 458M, DiT-XL/2 675M; DiT's train.py logs
  "DiT Parameters: 675,129,632" for XL/2): the ImageNet class-conditional model with learned sigma
  (8 output channels) and 1000 classes. diffusers' DiTTransformer2DModel keeps a copy of the
  timestep and class embedder in every block and holds the fixed sin-cos position table as a
  buffer, where DiT has one embedder and the table as a (frozen) parameter; the counts are
  compared after that bookkeeping (`dit_paper_count`).
- ADM (guided-diffusion, `256x256_diffusion_uncond.pt`, README's MODEL_FLAGS for the ImageNet
  256x256 unconditional model): 552,814,086 values, the 2.21 GB of its fp32 state dict / 4 bytes;
  the converter (dermbench.methods.fedd.adm, tests/test_adm.py) maps every key and shape one to one,
  so the diffusers UNet2DModel has exactly the checkpoint's count.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DiTTransformer2DModel

from dermbench.diffusion import architectures as arch
from dermbench.methods.classndiff.dit import DIT_SIZES
from dermbench.methods.fedd.model import adm_unet
from dermbench.runner import prepare_run
from dermbench.train import meta_models
from dermbench.train.models import FROZEN_VGG16

META = torch.device("meta")

TORCHVISION = {  # torchvision model docs, "Params"
    "vgg16.tv_in1k": 138_357_544,
    "vgg11.tv_in1k": 132_863_336,
    "vgg11_bn.tv_in1k": 132_868_840,
    "resnet18.tv_in1k": 11_689_512,
    "resnet101.tv_in1k": 44_549_160,
    "resnext101_32x8d.tv_in1k": 88_791_336,
}
SD14_UNET, SD21_UNET, SD_VAE = 859_520_964, 865_910_724, 83_653_863
CLIP_L_TEXT, OPENCLIP_H_TEXT = 123_060_480, 340_387_840
ADM_256_UNCOND = 552_814_086
DIT_XL_2, DIT_L_4 = 675_129_632, 458_053_760  # DiT Table 4: 675M, 458M


def count(module) -> int:
    return meta_models.counts(module)[0]


def models_of(method: str, dataset: str = "fitz17k") -> dict[str, meta_models.BuiltModel]:
    cfg, (pm, _) = prepare_run(flags={"method": method, "profile": "paper", "dataset": dataset})
    return {m.role: m for m in meta_models.run_models(cfg, pm)}


def meta(*shape: int, dtype=torch.float32) -> torch.Tensor:
    return torch.empty(*shape, device=META, dtype=dtype)


# ----- published counts -------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "published"), TORCHVISION.items())
def test_imagenet_classifiers_have_torchvisions_counts(name, published):
    assert count(meta_models.on_meta(lambda: meta_models.classifier(name, 1000))) == published


def test_stable_diffusion_parts_have_the_published_counts():
    assert count(meta_models.on_meta(lambda: arch.sd_unet(arch.SD14_UNET))) == SD14_UNET
    assert count(meta_models.on_meta(lambda: arch.sd_unet(arch.SD21_UNET))) == SD21_UNET
    assert count(meta_models.on_meta(arch.sd_vae)) == SD_VAE
    assert count(meta_models.on_meta(lambda: arch.text_encoder(arch.SD14_TEXT))) == CLIP_L_TEXT
    assert count(meta_models.on_meta(lambda: arch.text_encoder(arch.SD21_TEXT))) == OPENCLIP_H_TEXT


def dit_paper_count(spec: dict, patch: int) -> int:
    """DiT's own parameter count of the ImageNet model of `spec`/`patch` (see the module doc)."""
    model = meta_models.on_meta(
        lambda: DiTTransformer2DModel(
            num_attention_heads=spec["heads"],
            attention_head_dim=spec["hidden"] // spec["heads"],
            in_channels=4,
            out_channels=8,
            num_layers=spec["layers"],
            sample_size=32,
            patch_size=patch,
            num_embeds_ada_norm=1000,
        )
    )
    embedder = count(model.transformer_blocks[0].norm1.emb)
    positions = (32 // patch) ** 2 * spec["hidden"]
    return count(model) - (spec["layers"] - 1) * embedder + positions


def test_dit_sizes_have_the_dit_papers_counts():
    assert (
        dit_paper_count({"layers": 28, "hidden": 1152, "heads": 16}, 2) == DIT_XL_2
    )  # the bookkeeping, checked
    assert dit_paper_count(DIT_SIZES["L"], 4) == DIT_L_4  # Class-N-Diff's paper DiT


def test_adm_has_the_checkpoints_count():
    assert count(meta_models.on_meta(adm_unet)) == ADM_256_UNCOND


# ----- each paper profile builds exactly its paper's models --------------------------------------


def test_every_paper_profile_builds_its_papers_models():
    dermdiff = models_of("dermdiff")
    assert {r: m.params for r, m in dermdiff.items()} == {
        "classifier": count(meta_models.on_meta(lambda: meta_models.classifier("resnext101_32x8d", 2))),
        "dermdiff: UNet": SD14_UNET,
        "dermdiff: VAE": SD_VAE,
        "dermdiff: text encoder": CLIP_L_TEXT,
    }
    assert "resnext101_32x8d.tv_in1k" in dermdiff["classifier"].weights

    m2m = models_of("majority2minority")
    assert {r: m.params for r, m in m2m.items() if r != "classifier"} == {
        "majority2minority: UNet": SD21_UNET,
        "majority2minority: VAE": SD_VAE,
        "majority2minority: text encoder": OPENCLIP_H_TEXT,
    }
    head = 4096 * 256 + 256 + 256 * 2 + 2
    assert m2m["classifier"].architecture.startswith(f"timm {FROZEN_VGG16}")
    assert (m2m["classifier"].params, m2m["classifier"].trainable) == (
        TORCHVISION["vgg16.tv_in1k"] - 4096 * 1000 - 1000 + head,
        head,
    )

    cnd = models_of("classndiff")
    assert cnd["classndiff: VAE"].params == SD_VAE
    assert cnd["classndiff: DiT"].architecture == "DiT-L/4 on 32x32x4 latents"
    backbone = TORCHVISION["resnet101.tv_in1k"] - (2048 * 1000 + 1000)
    assert cnd["classndiff: latent classifier"].params == backbone + (4 * 3 * 2 * 2 + 3) + (
        2048 * 64 + 64
    ) + (64 + 1)

    fedd = models_of("fedd")
    assert fedd["fedd: backbone"].params == ADM_256_UNCOND
    assert fedd["fedd: probe"].params == (512 * 64 + 64 + 2 * 64) + (64 * 32 + 32 + 2 * 32) + (32 + 1)
    assert "classifier" not in fedd  # FEDD's classifier is its probe

    mfd = models_of("mfd")
    assert mfd["mfd: student"].params == TORCHVISION["vgg11.tv_in1k"] - 4096 * 1000 - 1000 + 4096 * 114 + 114
    assert models_of("mfd", "isic2019")["mfd: student"].architecture == "timm resnet18.tv_in1k"

    for method in ("fairprune", "fairquantize"):  # the VGG-11-BN of their Fitzpatrick17k tables
        [(role, model)] = models_of(method).items()
        assert model.params == TORCHVISION["vgg11_bn.tv_in1k"] - 4096 * 1000 - 1000 + 4096 * 114 + 114


# ----- one forward step of each, on meta tensors ---------------------------------------------------


def test_forward_steps_on_meta_tensors_have_the_expected_shapes():
    dermdiff = models_of("dermdiff")
    out = (
        dermdiff["dermdiff: UNet"]
        .module(meta(2, 4, 32, 32), meta(2, dtype=torch.long), encoder_hidden_states=meta(2, 77, 768))
        .sample
    )
    assert out.shape == (2, 4, 32, 32)  # 256 px through the VAE's /8
    text = dermdiff["dermdiff: text encoder"].module(meta(2, 77, dtype=torch.long)).last_hidden_state
    assert text.shape == (2, 77, 768)
    vae = dermdiff["dermdiff: VAE"].module
    latents = vae.encode(meta(2, 3, 256, 256)).latent_dist.mean
    assert latents.shape == (2, 4, 32, 32)
    assert vae.decode(latents).sample.shape == (2, 3, 256, 256)
    assert dermdiff["classifier"].module(meta(2, 3, 224, 224)).shape == (2, 2)

    m2m = models_of("majority2minority")
    assert m2m["majority2minority: UNet"].module(
        meta(1, 4, 64, 64), meta(1, dtype=torch.long), encoder_hidden_states=meta(1, 77, 1024)
    ).sample.shape == (1, 4, 64, 64)
    assert m2m["majority2minority: text encoder"].module(
        meta(1, 77, dtype=torch.long)
    ).last_hidden_state.shape == (1, 77, 1024)
    assert m2m["classifier"].module(meta(2, 3, 224, 224)).shape == (2, 2)

    cnd = models_of("classndiff")
    dit = cnd["classndiff: DiT"].module
    eps = dit(
        meta(2, 4, 32, 32), timestep=meta(2, dtype=torch.long), class_labels=meta(2, dtype=torch.long)
    ).sample
    assert eps.shape == (2, 4, 32, 32)
    assert cnd["classndiff: latent classifier"].module(meta(2, 4, 32, 32)).shape == (
        2,
        1,
    )  # one logit (binary)
    assert torch.nn.functional.mse_loss(eps, meta(2, 4, 32, 32)).shape == ()

    fedd = models_of("fedd")
    assert fedd["fedd: backbone"].module(meta(1, 3, 256, 256), meta(1, dtype=torch.long)).sample.shape == (
        1,
        6,
        256,
        256,
    )
    assert fedd["fedd: probe"].module.eval()(meta(4, 512)).shape == (4,)  # Probe: a logit per image

    student = models_of("mfd")["mfd: student"].module
    assert student(meta(2, 3, 112, 112)).shape == (2, 114)  # Fitzpatrick17k's 114 conditions
