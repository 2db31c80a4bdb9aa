"""Config resolution: precedence, validation messages, run ids."""

import pytest

from dermbench import config as c
from dermbench.errors import ConfigError


def method_defaults(profile):
    """A method's defaults as the runner hands them to resolve: (plugin name, dict) pairs."""
    return [("mymethod", {"mymethod": {"beta": 1.0 if profile == "tiny" else 0.33}, "train": {"epochs": 3}})]


def test_precedence_profile_method_file_set_flags(tmp_path):
    f = tmp_path / "cfg.yaml"
    f.write_text("train:\n  lr: 0.5\n  epochs: 4\nmymethod:\n  beta: 2.0\n")
    cfg = c.resolve(
        file=f, sets=["train.lr=0.25"], flags={"seed": 7}, method_defaults=method_defaults("tiny")
    )
    assert cfg["train"]["lr"] == 0.25  # --set beats the file
    assert cfg["train"]["epochs"] == 4  # the file beats method defaults (3)
    assert cfg["mymethod"]["beta"] == 2.0
    assert cfg["seed"] == 7
    paper = c.resolve(flags={"profile": "paper"}, method_defaults=method_defaults("paper"))
    assert paper["mymethod"]["beta"] == 0.33 and paper["model"]["backbone"] == "vgg11_bn"
    assert paper["train"]["epochs"] == 3  # method defaults beat the profile


def test_requested_reads_the_method_profile_and_dataset_before_any_key_is_checked(tmp_path):
    f = tmp_path / "cfg.yaml"
    f.write_text("method: fairprune\nfairprune:\n  betta: 1\n")  # a typo resolve names later
    head = c.requested(file=f, sets=["dataset=ddi"], flags={"profile": "paper"})
    assert (head["method"], head["dataset"], head["profile"]) == ("fairprune", "ddi", "paper")
    with pytest.raises(ConfigError, match="unknown profile 'papr'; .*did you mean 'paper'"):
        c.requested(flags={"profile": "papr"})


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("train.lrr=1", "did you mean 'train.lr'"),
        ("trian.lr=1", "did you mean 'train'"),
        ("mymethod.betta=1", "did you mean 'mymethod.beta'"),
        ("train.epochs=abc", "expected a value like"),
        ("train=3", "must be a mapping"),
        ("train.lr", "expected KEY.SUB=VALUE"),
    ],
)
def test_bad_settings_name_the_key(item, message):
    with pytest.raises(ConfigError, match=message):
        c.resolve(sets=[item], method_defaults=method_defaults("tiny"))


def test_yaml_typo_names_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  lr: [0.1\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        c.resolve(file=f)
    f.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        c.resolve(file=f)
    f.write_text("train:\n  optimiser: sgd\n")
    with pytest.raises(
        ConfigError,
        match=r"unknown setting 'train.optimiser' in config file .*did you mean 'train.optimizer'",
    ):
        c.resolve(file=f)
    with pytest.raises(ConfigError, match="cannot read config file"):
        c.resolve(file=tmp_path / "missing.yaml")


def test_unknown_profile_suggests():
    with pytest.raises(ConfigError, match="did you mean 'paper'"):
        c.resolve(flags={"profile": "papr"})


def test_set_values_are_yaml():
    cfg = c.resolve(
        sets=["train.focal_alpha=[0.3, 0.4, 0.9]", "model.pretrained=null", "data.options={split_rule: x}"]
    )
    assert cfg["train"]["focal_alpha"] == [0.3, 0.4, 0.9]
    assert cfg["model"]["pretrained"] is None
    assert cfg["data"]["options"] == {"split_rule": "x"}  # free-form section


def test_run_id_hashes_results_relevant_settings_only():
    base = c.resolve()
    assert c.run_id(base) == c.run_id(c.resolve())
    assert c.run_id(base) != c.run_id(c.resolve(flags={"seed": 1}))
    assert c.run_id(base) != c.run_id(c.resolve(sets=["train.lr=0.1"]))
    assert c.run_id(base) == c.run_id(c.resolve(flags={"out": "elsewhere"}, sets=["data.root=/data"]))
    assert c.run_id(c.resolve(flags={"device": "cpu"})) != c.run_id(c.resolve(flags={"device": "cuda"}))
    assert c.run_id(base).startswith("erm_synthderm_s0_")


def test_a_config_of_an_earlier_profile_revision_is_labelled_with_it():
    assert c.profile_label("tiny", c.resolve()) == "tiny"
    previous = c.resolve(sets=["data.image_size=64", "train.epochs=6"])  # tiny until 2026-12
    assert c.profile_label("tiny", previous) == "tiny@2026-11"
    assert (
        c.profile_label("tiny", c.resolve(sets=["data.image_size=64"])) == "tiny"
    )  # one setting changed: a variant
    assert c.profile_label("paper", previous) == "paper"
    assert (
        c.profile_label("tiny", {"data": {"image_size": 64}}) == "tiny"
    )  # a setting missing: not that revision


def test_numbers_are_read_as_numbers_and_integers_stay_integers():
    cfg = c.resolve(sets=["train.lr=1e-3", "train.epochs=3.0"])
    assert cfg["train"]["lr"] == 0.001 and isinstance(cfg["train"]["epochs"], int)
    with pytest.raises(ConfigError, match=r"'train.epochs'.*expected a value like 4, got 2.7"):
        c.resolve(sets=["train.epochs=2.7"])


@pytest.mark.parametrize(
    ("defaults", "message"),
    [
        (
            {"train": {"epoch": 10}},
            "unknown setting 'train.epoch' in the defaults of method 'mymethod'; did you mean 'train.epochs'",
        ),
        (
            {"trian": {"epochs": 10}},
            "unknown setting 'trian' in the defaults of method 'mymethod'; did you mean 'train'",
        ),
        ({"othermethod": {"beta": 1}}, "a method's own settings go under its name, 'mymethod'"),
        ({"train": {"epochs": "many"}}, "expected a value like"),
    ],
)
def test_method_defaults_merge_strictly_into_shared_sections(defaults, message):
    with pytest.raises(ConfigError, match=message):
        c.resolve(method_defaults=[("mymethod", defaults)])


def test_a_methods_own_section_is_free():
    cfg = c.resolve(method_defaults=[("mymethod", {"mymethod": {"any": {"nested": [1, 2]}}})])
    assert cfg["mymethod"] == {"any": {"nested": [1, 2]}}
