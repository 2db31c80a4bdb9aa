"""FairPrune (methods/fairprune.py): one pruning round given the curvature zeroes exactly the
lowest-saliency share of the editable weights (biases and an inner method's frozen weights never),
rounds only add to the mask, the chosen round is what the model keeps, and a whole run through
the CLI saves a mask that matches the saved weights."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dermbench.cli import main
from dermbench.conformance import TINY_SETTINGS
from dermbench.errors import ConfigError
from dermbench.methods import fairprune
from dermbench.mitigation.frozen import freeze, frozen, restore

BETA = 0.33


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))  # BatchNorm's gamma and every bias non-zero too
    return model


def hand_curvature(model: nn.Module, seed: int) -> tuple[dict, dict]:
    """Distinct positive diagonals for every parameter, biases included (they must be ignored)."""
    gen = torch.Generator().manual_seed(seed)
    h_u = {k: torch.rand(p.shape, generator=gen) + 0.01 for k, p in model.named_parameters()}
    h_p = {k: torch.rand(p.shape, generator=gen) * 3 for k, p in model.named_parameters()}
    return h_u, h_p


WEIGHTS = ["0.weight", "1.weight", "4.weight"]  # conv, BatchNorm gamma, linear; biases excluded


def expected_mask(model, h_u, h_p, count, *, excluded=None) -> dict[str, torch.Tensor]:
    """The `count` lowest S = 1/2 θ^2 (h_u - β h_p) over the weights, by a direct flat ranking."""
    params = dict(model.named_parameters())
    flat = torch.cat(
        [(0.5 * params[k].detach() ** 2 * (h_u[k] - BETA * h_p[k])).reshape(-1) for k in WEIGHTS]
    )
    if excluded is not None:
        flat[torch.cat([excluded[k].reshape(-1) for k in WEIGHTS])] = float("inf")
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.argsort(flat)[:count]] = True
    out, start = {}, 0
    for k in WEIGHTS:
        n = params[k].numel()
        out[k] = chosen[start : start + n].reshape(params[k].shape)
        start += n
    return out


def total_weights(model) -> int:
    return sum(dict(model.named_parameters())[k].numel() for k in WEIGHTS)


def test_the_editable_weights_are_every_weight_but_no_bias():
    from dermbench.mitigation.saliency import editable_weights

    assert editable_weights(tiny_model()) == WEIGHTS


def test_a_round_zeroes_exactly_the_lowest_saliency_share_and_nothing_else():
    model = tiny_model()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    h_u, h_p = hand_curvature(model, 1)
    target = round(0.1 * total_weights(model))
    masks = fairprune.prune_round(model, h_u, h_p, beta=BETA, target=target)
    want = expected_mask(_with(before), h_u, h_p, target)
    assert sorted(masks) == WEIGHTS
    assert sum(int(m.sum()) for m in masks.values()) == target
    params = dict(model.named_parameters())
    for k in WEIGHTS:
        assert torch.equal(masks[k], want[k]), k
        assert torch.equal(params[k] == 0, masks[k]), k  # zero exactly where pruned
        assert torch.equal(params[k][~masks[k]], before[k][~masks[k]]), k  # the rest untouched
    for k in ("0.bias", "1.bias", "4.bias"):
        assert torch.equal(params[k], before[k])  # biases untouched
    assert frozen(model) == {}  # freezing is for the chosen round, at the end


def _with(values: dict) -> nn.Module:
    """A tiny model holding `values` (the weights before a round)."""
    model = tiny_model()
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(values[k])
    return model


def test_a_weight_frozen_by_an_inner_method_is_never_chosen():
    model = tiny_model()
    h_u, h_p = hand_curvature(model, 2)
    target = round(0.1 * total_weights(model))
    lowest_one = expected_mask(model, h_u, h_p, 1)
    (name,) = [k for k in WEIGHTS if lowest_one[k].any()]
    freeze(model, name, lowest_one[name])  # e.g. quantised by an inner FairQuantize
    held_value = dict(model.named_parameters())[name][lowest_one[name]].clone()
    want = expected_mask(
        model,
        h_u,
        h_p,
        target,
        excluded={k: lowest_one[k] if k == name else torch.zeros_like(v) for k, v in lowest_one.items()},
    )
    masks = fairprune.prune_round(model, h_u, h_p, beta=BETA, target=target)
    assert not masks[name][lowest_one[name]].any()
    assert sum(int(m.sum()) for m in masks.values()) == target  # the count stays exact: the next lowest
    assert all(torch.equal(masks[k], want[k]) for k in WEIGHTS)
    assert torch.equal(dict(model.named_parameters())[name][lowest_one[name]], held_value)


def test_a_second_round_prunes_a_further_share_and_never_unprunes():
    model = tiny_model()
    total = total_weights(model)
    first = fairprune.prune_round(model, *hand_curvature(model, 3), beta=BETA, target=round(0.05 * total))
    h_u, h_p = hand_curvature(model, 4)  # recomputed on the pruned model
    remaining = expected_mask(model, h_u, h_p, round(0.1 * total) - round(0.05 * total), excluded=first)
    second = fairprune.prune_round(model, h_u, h_p, beta=BETA, target=round(0.1 * total), pruned=first)
    params = dict(model.named_parameters())
    assert sum(int(m.sum()) for m in second.values()) == round(0.1 * total)
    for k in WEIGHTS:
        assert torch.equal(second[k] & first[k], first[k]), k  # nothing un-pruned
        assert torch.equal(second[k], first[k] | remaining[k]), k  # the lowest among the rest
        assert torch.equal(params[k] == 0, second[k]), k


@pytest.mark.parametrize(
    "profile, dataset", [("tiny", "synthderm"), ("paper", "fitz17k"), ("paper", "synthderm")]
)
def test_the_chosen_round_is_restored_frozen_and_saved(tmp_path, monkeypatch, profile, dataset):
    """Three rounds, validation prefers round 1: the model keeps round 1's zeros only, with the
    weights later rounds zeroed back at their values, and they stay zero through retraining."""
    model = tiny_model()
    original = {k: v.detach().clone() for k, v in model.named_parameters()}
    monkeypatch.setattr(
        fairprune,
        "sensitive_groups",
        lambda *a, **k: SimpleNamespace(
            privileged="light", reason="test", as_record=lambda: {"scheme": "tone2", "privileged": "light"}
        ),
    )
    monkeypatch.setattr(
        fairprune, "group_curvature", lambda ctx, m, *a, **k: (*hand_curvature(m, 5), {"samples": 4})
    )
    gaps = iter([0.30, 0.10, 0.20, 0.05])  # unpruned, rounds 1-3; round 3 fairest but loses too much metric
    metrics = iter([0.90, 0.89, 0.88, 0.80])
    monkeypatch.setattr(
        fairprune,
        "validation_scores",
        lambda *a, **k: {"metric": next(metrics), "gap": next(gaps), "acc": 0.5, "threshold": 0.5},
    )
    records = {}
    ctx = SimpleNamespace(
        config={"profile": profile, "dataset": dataset},
        say=lambda message: None,
        record=lambda method, values: records.setdefault(method, {}).update(values),
        artifact=lambda name: tmp_path / name,
    )
    settings = fairprune.check_settings({**fairprune.DEFAULTS, "rounds": 3, "ratio": 0.1})
    out = fairprune.prune(ctx, model, None, None, settings)
    record = records["fairprune"]
    assert record["chosen_round"] == 1 and "within 0.02" in record["chosen_reason"]
    assert [r["pruned_share"] for r in record["rounds"]] == [
        round(0.1 * r * total_weights(model)) / total_weights(model) for r in (1, 2, 3)
    ]
    saved = load_file(tmp_path / "pruning_mask.safetensors")
    assert sorted(saved) == WEIGHTS
    assert (
        sum(int(v.sum()) for v in saved.values())
        == round(0.1 * total_weights(model))
        == record["pruned_weights"]
    )
    params = dict(out.named_parameters())
    for k in WEIGHTS:
        mask = saved[k].bool()
        assert torch.equal(params[k] == 0, mask)
        assert torch.equal(params[k][~mask], original[k][~mask])  # later rounds' zeros restored
        assert torch.equal(frozen(out)[k][0], mask)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(1.0)  # an outer method's optimiser step
    restore(out)
    assert all(torch.equal(params[k][saved[k].bool()], torch.zeros(int(saved[k].sum()))) for k in WEIGHTS)
    assert record["layer_shares"] == {k: round(float(saved[k].float().mean()), 6) for k in WEIGHTS}
    # a paper-profile run carries the published numbers where the paper has them
    assert ("paper" in record) == (dataset == "fitz17k")
    if dataset == "fitz17k":
        assert (
            record["paper"]["method"]["eodd_net"] == 0.165 and record["paper"]["vanilla"]["eodd_net"] == 0.182
        )


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("ratio", 0, "fairprune.ratio must be in (0, 1]"),
        ("ratio", 0.3, "fairprune.ratio * fairprune.rounds must be <= 1"),
        ("beta", -0.1, "fairprune.beta must be >= 0"),
        ("rounds", 0, "fairprune.rounds must be a positive integer"),
        ("score_batches", 2.5, "fairprune.score_batches must be a positive integer"),
        ("score_batch_size", True, "fairprune.score_batch_size must be a positive integer"),
        ("select", "fairest", "fairprune.select must be one of"),
        ("fair_metric", "eod", "fairprune.fair_metric must be one of"),
        ("privileged", "pale", "fairprune.privileged"),
        ("groups", "tone_2", "fairprune.groups: unknown group scheme 'tone_2'"),
        ("groups", 3, "fairprune.groups must be a group scheme name"),
    ],
)
def test_bad_settings_are_config_errors_naming_the_setting(key, value, words):
    with pytest.raises(ConfigError) as err:
        fairprune.check_settings({**fairprune.DEFAULTS, key: value})
    assert words in str(err.value)


def test_defaults_per_profile_and_dataset():
    tiny = fairprune.dermbench_method_defaults("tiny", "synthderm")["fairprune"]
    assert tiny["rounds"] == 3 and tiny["score_batches"] == 16
    paper = fairprune.dermbench_method_defaults("paper", "fitz17k")
    assert paper["model"]["backbone"] == "vgg11_bn" and paper["fairprune"]["groups"] == "tone2"
    assert paper["fairprune"]["rounds"] == 10 and paper["fairprune"]["beta"] == 0.33
    assert fairprune.dermbench_method_defaults("paper", "isic2019")["fairprune"]["groups"] == "sex"
    assert fairprune.name == "fairprune"


def command(out: Path, *extra: str) -> list[str]:
    sets = [
        *TINY_SETTINGS,
        "fairprune.rounds=2",
        "fairprune.score_batches=2",
        "fairprune.score_batch_size=8",
        *extra,
    ]
    return [
        "run",
        "--method",
        "fairprune",
        "--device",
        "cpu",
        "--out",
        str(out),
        *sum([["--set", s] for s in sets], []),
    ]


@pytest.mark.slow
def test_fairprune_runs_through_the_cli_and_saves_a_matching_mask(tmp_path):
    assert main(command(tmp_path)) == 0
    (run_dir,) = tmp_path.glob("fairprune_*")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["hooks"]["fit"] == "erm" and metrics["hooks"]["fit_wrappers"] == ["fairprune"]
    record = metrics["methods"]["fairprune"]
    assert record["chosen_round"] in (1, 2) and [r["round"] for r in record["rounds"]] == [1, 2]
    assert record["groups"]["scheme"] == "tone2" and record["groups"]["privileged"] in ("light", "dark")
    weights = load_file(run_dir / "model.safetensors")
    masks = load_file(run_dir / "pruning_mask.safetensors")
    assert masks and set(record["layer_shares"]) == set(masks) and not any(k.endswith("bias") for k in masks)
    zeros = total = 0
    for k, mask in masks.items():
        assert torch.equal(mask.bool(), weights[k] == 0), k  # ones of the mask = zeros of the weights
        assert record["layer_shares"][k] == round(float(mask.float().mean()), 6)
        zeros, total = zeros + int((weights[k] == 0).sum()), total + mask.numel()
    assert zeros == record["pruned_weights"] and total == record["editable_weights"]
    assert zeros == round(0.05 * record["chosen_round"] * total)
    assert record["pruned_share"] == round(zeros / total, 6)


def test_a_scheme_the_data_lacks_fails_before_training_naming_it(tmp_path, capsys):
    assert main(command(tmp_path, "fairprune.groups=sex")) == 2
    out = "".join("".join(capsys.readouterr()).split())  # without the console's line breaks
    assert "fairprune.groups=sex:FairPruneneedstwosexgroups" in out
    assert not list(tmp_path.glob("*/model.safetensors"))
