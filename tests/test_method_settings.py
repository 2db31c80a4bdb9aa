"""Every method setting and paper-profile prerequisite is checked before any data loads or anything
trains (issue 27 item 4; issue 26: `--profile paper` offline without a backbone stops at once).

Each case used to be caught only after the diffusion model had trained (about 15 CPU minutes at the
tiny defaults), and some as internal errors ("generation requests lack column(s) sample_id",
"No objects to concatenate", a KeyError). Here the data layer and every trainer are replaced by
stand-ins that fail the test if reached, so the error must come from the up-front check."""

from __future__ import annotations

import re

import pytest

from dermbench import runner
from dermbench.cli import main
from dermbench.errors import ConfigError, DermbenchError
from dermbench.methods.fedd import adm
from dermbench.runner import check_run, prepare_run, resolve_config, run_experiment

FAST = ["--device", "cpu", "--set", "data.image_size=16", "--set", "model.backbone=test_resnet"]


class Reached(AssertionError):
    pass


@pytest.fixture
def nothing_loads_or_trains(monkeypatch):
    """Data loading and every training entry point fail the test if the run gets that far."""

    def reached(what):
        def fail(*args, **kwargs):
            raise Reached(f"{what} was reached before the bad setting was refused")

        return fail

    monkeypatch.setattr(runner, "DatasetPool", reached("the data (DatasetPool)"))
    import dermbench.diffusion.training as training  # noqa: PLC0415
    from dermbench.methods import dermdiff  # noqa: PLC0415
    from dermbench.methods.classndiff import plugin as classndiff  # noqa: PLC0415
    from dermbench.methods.fedd import model as fedd  # noqa: PLC0415
    from dermbench.methods.majority2minority import plugin as majority2minority  # noqa: PLC0415

    for module in (training, dermdiff, majority2minority):
        monkeypatch.setattr(module, "train_denoiser", reached("diffusion training"))
    monkeypatch.setattr(classndiff, "train_joint", reached("Class-N-Diff's joint training"))
    monkeypatch.setattr(fedd, "pixel_model", reached("FEDD's backbone"))


def config(method: str, *sets: str, profile: str = "tiny", dataset: str = "synthderm") -> dict:
    return resolve_config(
        sets=list(sets), flags={"method": method, "profile": profile, "dataset": dataset, "device": "cpu"}
    )


def planned(method: str, *sets: str, profile: str = "tiny") -> tuple[dict, object]:
    """The config and the run's plugin manager, as `dermbench run` hands them to check_run."""
    cfg, (pm, _) = prepare_run(
        sets=list(sets), flags={"method": method, "profile": profile, "dataset": "synthderm", "device": "cpu"}
    )
    return cfg, pm


# the cases of issue 27 ("Generation counts of zero or below ..."), each with the message it now gives
CASES = [
    ("dermdiff", "dermdiff.per_cell=0", r"setting 'dermdiff.per_cell' must be >= 1 or null, got 0"),
    ("dermdiff", "dermdiff.per_cell=-5", r"setting 'dermdiff.per_cell' must be >= 1 or null, got -5"),
    (
        "majority2minority",
        "majority2minority.per_image=0",
        r"setting 'majority2minority.per_image' must be >= 1, got 0",
    ),
    ("classndiff", "classndiff.per_class=0", r"setting 'classndiff.per_class' must be >= 1 or null, got 0"),
    (
        "majority2minority",
        "majority2minority.strength=1.5",
        r"setting 'majority2minority.strength' must be > 0 and <= 1, got 1.5",
    ),
    ("fedd", "fedd.t=5000", r"setting 'fedd.t' must be a diffusion step in 0..999 .*got 5000"),
    ("fedd", "fedd.block=99", r"setting 'fedd.block' must be a decoder block in 0..5 .*got 99"),
]


@pytest.mark.parametrize(("method", "setting", "message"), CASES, ids=[c[1] for c in CASES])
def test_a_bad_method_setting_stops_the_run_before_any_data_or_training(
    tmp_path, nothing_loads_or_trains, method, setting, message
):
    cfg = config(method, setting, f"out={tmp_path / 'runs'}")
    with pytest.raises(ConfigError, match=message):
        run_experiment(cfg)
    assert not (tmp_path / "runs").exists(), "no run folder is made for a refused config"


@pytest.mark.parametrize(
    ("method", "setting", "message"), CASES[:5] + CASES[6:], ids=[c[1] for c in CASES[:5] + CASES[6:]]
)
def test_the_cli_names_the_setting_without_a_traceback(
    tmp_path, capsys, nothing_loads_or_trains, method, setting, message
):
    assert main(["run", "--method", method, *FAST, "--out", str(tmp_path / "runs"), "--set", setting]) == 2
    err = capsys.readouterr().err
    assert re.search(message, " ".join(err.split())), err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("dermdiff.finetune.steps=0", "'dermdiff.finetune.steps' must be >= 1"),
        ("dermdiff.finetune.uncond_prob=1.5", "'dermdiff.finetune.uncond_prob' must be >= 0 and <= 1"),
        ("dermdiff.steps=0", "'dermdiff.steps' must be >= 1"),
        ("dermdiff.sampler=euler", "sampler must be one of ddim, dpm"),
        ("dermdiff.prompt='{label} on {skin}'", r"dermdiff.prompt .* may only use \{label\} and \{tone\}"),
        ("majority2minority.strength=0", "'majority2minority.strength' must be > 0 and <= 1, got 0"),
        ("majority2minority.mode=inpaint", "'majority2minority.mode' must be one of img2img, txt2img"),
        ("majority2minority.target_fst=[3]", "majority2minority.target_fst must list FST values among"),
        ("majority2minority.lora_settings.rank=0", "'majority2minority.lora_settings.rank' must be >= 1"),
        ("classndiff.joint.p=2", "'classndiff.joint.p' must be >= 0 and <= 1"),
        ("classndiff.dit.size=XL", "'classndiff.dit.size' must be one of tiny, S, B, L"),
        ("classndiff.sampler=euler", "'classndiff.sampler' must be one of ddim, ddpm"),
        ("fedd.t=-1", "fedd.t must be a diffusion step >= 0"),
        ("fairquantize.step=0", "fairquantize.step must be in"),
        ("fairprune.ratio=0", "fairprune.ratio must be in"),
        ("mfd.sigma=0", "mfd.sigma must be > 0"),
    ],
)
def test_other_method_settings_are_checked_up_front(tmp_path, nothing_loads_or_trains, setting, message):
    method = setting.split(".", 1)[0]
    with pytest.raises(ConfigError, match=message):
        run_experiment(config(method, setting, f"out={tmp_path / 'runs'}"))


def test_good_tiny_settings_pass_and_need_nothing(tmp_path):
    for method in (
        "erm",
        "dermdiff",
        "majority2minority",
        "classndiff",
        "fedd",
        "fairprune",
        "fairquantize",
        "mfd",
        "oracle",
        "resampling",
        "dermdiff+fairquantize",
    ):
        assert check_run(*planned(method), fetch=False) == []


def test_dermdiff_paper_offline_stops_with_the_download_command_before_any_data(
    tmp_path, monkeypatch, nothing_loads_or_trains
):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    # the ImageNet classifier weights are checked too; give them so the diffusion model is what is missing
    monkeypatch.setattr(runner, "check_pretrained_weights", lambda cfg: [])
    cfg = config("dermdiff", f"out={tmp_path / 'runs'}", profile="paper")
    with pytest.raises(
        DermbenchError,
        match=r"dermdiff.model='CompVis/stable-diffusion-v1-4'.*HF_HUB_OFFLINE.*"
        r"huggingface-cli download CompVis/stable-diffusion-v1-4",
    ):
        run_experiment(cfg)


def test_paper_imagenet_weights_are_checked_before_any_data(tmp_path, monkeypatch, nothing_loads_or_trains):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = config("erm", f"out={tmp_path / 'runs'}", "model.backbone=resnet18", "model.pretrained=true")
    with pytest.raises(
        DermbenchError, match=r"model.pretrained: resnet18 .*timm.create_model\('resnet18.a1_in1k'"
    ):
        run_experiment(cfg)


def test_fedd_paper_without_its_backbone_stops_with_download_and_convert_and_no_traceback(
    tmp_path, capsys, nothing_loads_or_trains
):
    folder = adm.default_folder()
    assert not (folder / "unet" / "config.json").exists()  # the private cache root of this test
    code = main(
        ["run", "--method", "fedd", "--profile", "paper", "--device", "cpu", "--out", str(tmp_path / "runs")]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    text = " ".join(err.split())
    assert "fedd.model=adm-imagenet256-uncond" in text
    assert "256x256_diffusion_uncond.pt" in text  # the download
    assert "dermbench fedd convert-adm" in text  # the conversion
    assert not (tmp_path / "runs").exists()


def test_fedd_t_and_block_are_checked_against_a_converted_backbone(tmp_path, monkeypatch):
    """The converted ADM's own config (18 decoder blocks, 1000 steps) bounds block and t."""
    folder = adm.default_folder()
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text(
        '{"block_out_channels": [256, 256, 512, 512, 1024, 1024], "layers_per_block": 2}'
    )
    found = check_run(*planned("fedd", "fedd.block=17", profile="paper"), fetch=False)
    assert any(f["setting"] == "fedd.model" and str(folder) in f["status"] for f in found)
    with pytest.raises(ConfigError, match=r"'fedd.block' must be a decoder block in 0..17 .*got 18"):
        check_run(*planned("fedd", "fedd.block=18", profile="paper"), fetch=False)


def test_a_plugin_whose_check_raises_is_named(monkeypatch):
    from dermbench.methods import dermdiff  # noqa: PLC0415

    def broken(hp, *, fetch):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(dermdiff, "check_settings", broken)
    with pytest.raises(
        DermbenchError, match=r"plugin 'dermdiff' failed in dermbench_check_settings: ZeroDivisionError"
    ):
        check_run(*planned("dermdiff"), fetch=False)
