"""The ADM converter (dermbench.methods.fedd.adm, `dermbench fedd convert-adm`) on synthetic checkpoints.

The checkpoints are built here by an independent reference of guided-diffusion's UNetModel
(written from its architecture description: input_blocks / middle_block / output_blocks of
ResBlocks with in_layers, emb_layers, out_layers and skip_connection, AttentionBlocks with norm,
one qkv conv and proj_out), with a forward pass in explicit tensor ops; the converted diffusers
UNet2DModel must give the same outputs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dermbench.methods.fedd import adm

SMALL = dict(
    image_size=32,
    num_channels=32,
    num_res_blocks=1,
    attention_resolutions=(16,),
    channel_mult=(1, 2),
    num_head_channels=8,
)


# --------------------------------------------------------------------------- the reference ADM
class Ref:
    """A random ADM state dict (guided-diffusion's key layout) and its forward pass."""

    def __init__(
        self,
        *,
        image_size,
        num_channels,
        num_res_blocks,
        attention_resolutions,
        channel_mult,
        num_head_channels,
        scale_shift=True,
        updown=True,
        learn_sigma=True,
        legacy=True,
        seed=0,
    ):
        self.g = torch.Generator().manual_seed(seed)
        self.nc, self.scale_shift, self.updown, self.legacy = num_channels, scale_shift, updown, legacy
        self.head = num_head_channels
        self.state: dict[str, torch.Tensor] = {}
        self.attn_ds = {image_size // r for r in attention_resolutions}
        emb = 4 * num_channels
        self.lin("time_embed.0", num_channels, emb)
        self.lin("time_embed.2", emb, emb)
        ch = num_channels * channel_mult[0]
        self.conv("input_blocks.0.0", 3, ch)
        self.inputs: list[list[tuple]] = [[("conv", "input_blocks.0.0")]]
        chans, ds = [ch], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                name = f"input_blocks.{len(self.inputs)}"
                layers = [("res", f"{name}.0", None)]
                self.res(f"{name}.0", ch, mult * num_channels)
                ch = mult * num_channels
                if ds in self.attn_ds:
                    self.attn(f"{name}.1", ch)
                    layers.append(("attn", f"{name}.1"))
                self.inputs.append(layers)
                chans.append(ch)
            if level != len(channel_mult) - 1:
                name = f"input_blocks.{len(self.inputs)}"
                if updown:
                    self.res(f"{name}.0", ch, ch)
                    self.inputs.append([("res", f"{name}.0", "down")])
                else:
                    self.conv(f"{name}.0.op", ch, ch)
                    self.inputs.append([("down", f"{name}.0.op")])
                chans.append(ch)
                ds *= 2
        self.res("middle_block.0", ch, ch)
        self.attn("middle_block.1", ch)
        self.res("middle_block.2", ch, ch)
        self.outputs: list[list[tuple]] = []
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                name = f"output_blocks.{len(self.outputs)}"
                self.res(f"{name}.0", ch + chans.pop(), mult * num_channels)
                ch = mult * num_channels
                layers = [("res", f"{name}.0", None)]
                if ds in self.attn_ds:
                    self.attn(f"{name}.1", ch)
                    layers.append(("attn", f"{name}.1"))
                if level and i == num_res_blocks:
                    if updown:
                        self.res(f"{name}.{len(layers)}", ch, ch)
                        layers.append(("res", f"{name}.{len(layers)}", "up"))
                    else:
                        self.conv(f"{name}.{len(layers)}.conv", ch, ch)
                        layers.append(("up", f"{name}.{len(layers)}.conv"))
                    ds //= 2
                self.outputs.append(layers)
        self.norm("out.0", ch)
        self.conv("out.2", ch, 6 if learn_sigma else 3)

    # parameters (non-zero everywhere, so a mapping error shows in the outputs)
    def rand(self, key, *shape, scale=None):
        scale = scale if scale is not None else 1.0 / math.sqrt(max(1, math.prod(shape[1:])))
        self.state[key] = torch.randn(shape, generator=self.g) * scale

    def lin(self, key, cin, cout):
        self.rand(f"{key}.weight", cout, cin)
        self.rand(f"{key}.bias", cout, scale=0.1)

    def conv(self, key, cin, cout, k=3):
        self.rand(f"{key}.weight", cout, cin, k, k)
        self.rand(f"{key}.bias", cout, scale=0.1)

    def norm(self, key, ch):
        self.state[f"{key}.weight"] = 1 + 0.1 * torch.randn(ch, generator=self.g)
        self.rand(f"{key}.bias", ch, scale=0.1)

    def res(self, key, cin, cout):
        self.norm(f"{key}.in_layers.0", cin)
        self.conv(f"{key}.in_layers.2", cin, cout)
        self.lin(f"{key}.emb_layers.1", 4 * self.nc, 2 * cout if self.scale_shift else cout)
        self.norm(f"{key}.out_layers.0", cout)
        self.conv(f"{key}.out_layers.3", cout, cout)
        if cin != cout:
            self.conv(f"{key}.skip_connection", cin, cout, k=1)

    def attn(self, key, ch):
        self.norm(f"{key}.norm", ch)
        self.rand(f"{key}.qkv.weight", 3 * ch, ch, 1)
        self.rand(f"{key}.qkv.bias", 3 * ch, scale=0.1)
        self.rand(f"{key}.proj_out.weight", ch, ch, 1)
        self.rand(f"{key}.proj_out.bias", ch, scale=0.1)

    # the forward pass, in explicit ops
    def p(self, key):
        return self.state[key]

    def gn(self, key, x):
        return F.group_norm(x.float(), 32, self.p(f"{key}.weight"), self.p(f"{key}.bias"), eps=1e-5)

    def c(self, key, x, **kw):
        return F.conv2d(x, self.p(f"{key}.weight"), self.p(f"{key}.bias"), **kw)

    def f_res(self, key, x, emb, mode):
        h = F.silu(self.gn(f"{key}.in_layers.0", x))
        if mode == "up":
            h, x = (
                F.interpolate(h, scale_factor=2, mode="nearest"),
                F.interpolate(x, scale_factor=2, mode="nearest"),
            )
        elif mode == "down":
            h, x = F.avg_pool2d(h, 2, 2), F.avg_pool2d(x, 2, 2)
        h = self.c(f"{key}.in_layers.2", h, padding=1)
        e = F.linear(F.silu(emb), self.p(f"{key}.emb_layers.1.weight"), self.p(f"{key}.emb_layers.1.bias"))[
            ..., None, None
        ]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.gn(f"{key}.out_layers.0", h) * (1 + scale) + shift
        else:
            h = self.gn(f"{key}.out_layers.0", h + e)
        h = self.c(f"{key}.out_layers.3", F.silu(h), padding=1)
        skip = self.c(f"{key}.skip_connection", x) if f"{key}.skip_connection.weight" in self.state else x
        return skip + h

    def f_attn(self, key, x):
        b, ch, hh, ww = x.shape
        flat = x.reshape(b, ch, -1)
        qkv = F.conv1d(self.gn(f"{key}.norm", flat), self.p(f"{key}.qkv.weight"), self.p(f"{key}.qkv.bias"))
        heads, d = ch // self.head, self.head
        if self.legacy:
            q, k, v = qkv.reshape(b * heads, 3 * d, -1).split(d, dim=1)
        else:
            q, k, v = (part.reshape(b * heads, d, -1) for part in qkv.chunk(3, dim=1))
        weight = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(d), dim=-1)
        a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, ch, -1)
        out = F.conv1d(a, self.p(f"{key}.proj_out.weight"), self.p(f"{key}.proj_out.bias"))
        return (flat + out).reshape(b, ch, hh, ww)

    def f_block(self, layers, h, emb):
        for layer in layers:
            kind, key = layer[0], layer[1]
            if kind == "conv":
                h = self.c(key, h, padding=1)
            elif kind == "res":
                h = self.f_res(key, h, emb, layer[2])
            elif kind == "attn":
                h = self.f_attn(key, h)
            elif kind == "down":
                h = self.c(key, h, stride=2, padding=1)
            elif kind == "up":
                h = self.c(key, F.interpolate(h, scale_factor=2, mode="nearest"), padding=1)
        return h

    @torch.no_grad()
    def forward(self, x, t):
        half = self.nc // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]
        temb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        emb = F.linear(
            F.silu(F.linear(temb, self.p("time_embed.0.weight"), self.p("time_embed.0.bias"))),
            self.p("time_embed.2.weight"),
            self.p("time_embed.2.bias"),
        )
        hs, h, decoder = [], x, []
        for layers in self.inputs:
            h = self.f_block(layers, h, emb)
            hs.append(h)
        h = self.f_res("middle_block.0", h, emb, None)
        h = self.f_attn("middle_block.1", h)
        h = self.f_res("middle_block.2", h, emb, None)
        for layers in self.outputs:
            h = self.f_block(layers, torch.cat([h, hs.pop()], dim=1), emb)
            decoder.append(h)
        return self.c("out.2", F.silu(self.gn("out.0", h)), padding=1), decoder


def small_config(**changes) -> adm.ADMConfig:
    return adm.ADMConfig(**{**SMALL, **changes})


def inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 32, 32, generator=g), torch.tensor([3, 917])


def decoder_of(unet, x, t):
    from dermbench.methods.fedd.features import DecoderTaps

    taps = DecoderTaps(
        unet, list(range(len(unet.up_blocks) * (unet.config.layers_per_block + 1))), lambda y: y
    )
    try:
        with torch.no_grad():
            out = unet(x, t).sample
    finally:
        taps.close()
    return out, [taps.outputs[b] for b in sorted(taps.outputs)]


@pytest.mark.parametrize(
    "variant",
    [
        {},  # the paper's layout: scale-shift norm, up/down ResBlocks, legacy attention order
        {"scale_shift": False, "updown": False, "legacy": False, "learn_sigma": False, "num_res_blocks": 2},
    ],
)
def test_converted_unet_equals_the_reference_forward(variant):
    ref_kw = {**SMALL, **{k: v for k, v in variant.items() if k == "num_res_blocks"}}
    ref = Ref(
        **ref_kw,
        scale_shift=variant.get("scale_shift", True),
        updown=variant.get("updown", True),
        learn_sigma=variant.get("learn_sigma", True),
        legacy=variant.get("legacy", True),
    )
    config = small_config(
        num_res_blocks=ref_kw["num_res_blocks"],
        use_scale_shift_norm=variant.get("scale_shift", True),
        resblock_updown=variant.get("updown", True),
        learn_sigma=variant.get("learn_sigma", True),
        use_new_attention_order=not variant.get("legacy", True),
    )
    # every key is mapped, every mapped key exists: no missing or unexpected keys
    assert set(adm.key_map(config)) == set(ref.state)
    unet = adm.to_unet(ref.state, config)
    x, t = inputs()
    want, want_decoder = ref.forward(x, t)
    got, got_decoder = decoder_of(unet, x, t)
    assert got.shape == want.shape == (2, config.out_channels, 32, 32)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # FEDD's decoder block k is ADM's output_blocks[k]
    assert len(got_decoder) == len(want_decoder) == len(ref.outputs)
    for a, b in zip(got_decoder, want_decoder):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_the_paper_layout_is_the_published_model():
    """The 256 px unconditional model: 18 decoder blocks, 6 output channels, the README's flags;
    552.8 M parameters (guided-diffusion's 256x256_diffusion_uncond.pt; counted on the meta device)."""
    config = adm.PAPER_ADM
    mapping = adm.key_map(config)
    assert (
        sum(1 for k in mapping if k.startswith("output_blocks.") and k.endswith(".0.in_layers.0.weight"))
        == 18
    )
    assert mapping["out.2.weight"].shape == (6, 256, 3, 3)
    assert mapping["input_blocks.4.0.in_layers.0.weight"].shape == (256,)  # a down ResBlock
    assert "output_blocks.17.0.skip_connection.weight" in mapping
    n = sum(math.prod(t.shape) for t in mapping.values())
    assert 550e6 < n < 556e6
    cfg = adm.diffusers_config(config)
    assert cfg["down_block_types"][3:] == ["AttnDownBlock2D"] * 3 and cfg["attention_head_dim"] == 64


def write(state, path: Path) -> Path:
    torch.save(state, path)
    return path


def test_convert_command_writes_a_folder_that_loads_back(tmp_path, capsys):
    from dermbench.cli import main
    from dermbench.diffusion.pixel import load_pixel_model

    ref = Ref(**SMALL)
    ckpt = write(ref.state, tmp_path / "small.pt")
    out = tmp_path / "adm-small"
    args = [
        "fedd",
        "convert-adm",
        str(ckpt),
        str(out),
        "--image-size",
        "32",
        "--channel-mult",
        "1,2",
        "--num-res-blocks",
        "1",
        "--attention-resolutions",
        "16",
        "--num-head-channels",
        "8",
    ]
    assert main(args) == 0
    assert "decoder blocks" in capsys.readouterr().out
    assert (out / "unet" / "config.json").is_file() and (
        out / "unet" / "diffusion_pytorch_model.safetensors"
    ).is_file()
    model = load_pixel_model(str(out))
    x, t = inputs()
    got, _ = decoder_of(model.unet, x, t)
    torch.testing.assert_close(got, ref.forward(x, t)[0], rtol=1e-4, atol=1e-4)
    assert int(model.scheduler.config.num_train_timesteps) == 1000
    assert model.scheduler.config.beta_schedule == "linear"


def test_a_truncated_or_missing_checkpoint_is_refused(tmp_path):
    from dermbench.errors import DermbenchError

    ckpt = write(Ref(**SMALL).state, tmp_path / "full.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(DermbenchError, match="cut.pt"):
        adm.read_checkpoint(cut)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DermbenchError, match="junk.pt"):
        adm.read_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(DermbenchError, match="(?s)absent.pt.*curl"):
        adm.read_checkpoint(tmp_path / "absent.pt")


def test_unknown_missing_and_misshapen_keys_are_named(tmp_path, capsys):
    from dermbench.cli import main
    from dermbench.errors import DermbenchError

    config = small_config()
    state = dict(Ref(**SMALL).state)
    with pytest.raises(DermbenchError, match=r"label_emb\.weight"):
        adm.convert_state({**state, "label_emb.weight": torch.zeros(1000, 128)}, config, source="x.pt")
    partial = {k: v for k, v in state.items() if k != "middle_block.1.qkv.bias"}
    with pytest.raises(DermbenchError, match=r"middle_block\.1\.qkv\.bias.*missing"):
        adm.convert_state(partial, config, source="x.pt")
    bad = {**state, "out.0.bias": torch.zeros(5)}
    with pytest.raises(DermbenchError, match=r"out\.0\.bias.*shape"):
        adm.convert_state(bad, config, source="x.pt")
    # through the command: exit 2, the file and the key named, no traceback
    ckpt = write({**state, "label_emb.weight": torch.zeros(10, 128)}, tmp_path / "cond.pt")
    code = main(
        [
            "fedd",
            "convert-adm",
            str(ckpt),
            str(tmp_path / "o"),
            "--image-size",
            "32",
            "--channel-mult",
            "1,2",
            "--num-res-blocks",
            "1",
            "--attention-resolutions",
            "16",
            "--num-head-channels",
            "8",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "label_emb.weight" in err and "cond.pt" in err and "Traceback" not in err


def test_the_paper_profile_without_the_backbone_names_download_and_convert(tmp_path, monkeypatch, capsys):
    from dermbench.cli import main
    from dermbench.errors import ConfigError
    from dermbench.methods.fedd import model as fedd

    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert fedd.PAPER["model"] == adm.PAPER_MODEL and fedd.TINY["model"] == "tiny"
    with pytest.raises(
        ConfigError,
        match="(?s)curl -L -o 256x256_diffusion_uncond.pt https://openaipublic.*"
        "dermbench fedd convert-adm 256x256_diffusion_uncond.pt",
    ):
        fedd.check_settings(fedd.PAPER)
    # `dermbench fedd ablate --profile paper` stops before it reads any data (there is none here)
    code = main(
        [
            "fedd",
            "ablate",
            "--profile",
            "paper",
            "--dataset",
            "ddi",
            "--data-root",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "ablate"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "convert-adm" in err and "Traceback" not in err
    # `dermbench run`: exit 2, both commands, no traceback
    code = main(
        [
            "run",
            "--method",
            "fedd",
            "--profile",
            "paper",
            "--device",
            "cpu",
            "--data-root",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "runs"),
            "--set",
            "data.image_size=16",
            "--set",
            "data.options={n_train: 60, n_val: 30, n_test: 30, n_test_ddi: 30, n_test_dermoscopic: 30}",
        ]
    )
    err = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert code == 2, err
    assert "curl -L -o 256x256_diffusion_uncond.pt" in err and "dermbench fedd convert-adm" in err, err
    assert "Traceback" not in err


def test_the_paper_profile_finds_the_converted_backbone(tmp_path, monkeypatch):
    from dermbench.methods.fedd import model as fedd

    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "cache"))
    ckpt = write(Ref(**SMALL).state, tmp_path / "small.pt")
    adm.convert_checkpoint(ckpt, adm.default_folder(), small_config())
    assert fedd.paper_backbone(adm.PAPER_MODEL) == str(adm.default_folder())
    assert fedd.paper_backbone("tiny") is None
    fedd.check_settings(fedd.PAPER)  # no error now
