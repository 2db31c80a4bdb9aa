"""FairQuantize: the quantiser, the schedule, the selection, and whole runs (SynthDerm, and the
headline `dermbench run --method fairquantize --dataset fitz17k` on a generated tree)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dermbench.cli import main
from dermbench.conformance import TINY_SETTINGS
from dermbench.methods.fairquantize import quantize, schedule, select_step


def is_power_of_two_or_zero(values: torch.Tensor) -> bool:
    nonzero = values[values != 0].double().abs()
    return bool(torch.all(torch.exp2(torch.round(torch.log2(nonzero))) == nonzero))


def test_quantizer_gives_exactly_zero_or_signed_powers_of_two():
    theta = torch.cat([torch.randn(10_000) * 0.05, torch.tensor([0.0, -0.0, 1.0, -0.75, 3e-9, 0.7071])])
    q = quantize(theta)
    assert is_power_of_two_or_zero(q)
    assert torch.equal(torch.sign(q), torch.sign(theta))  # the sign is kept, zero stays zero
    assert torch.equal(quantize(q), q)  # idempotent: a quantised weight is its own code
    # round(log2|θ|): 0.75 -> 2^round(-0.415) = 2^0 = 1; 0.7071 (log2 = -0.5000...) rounds to 2^-0 or 2^-1
    assert q[-3].item() == -1.0 and q[-4].item() == 1.0


def test_schedule_grows_by_the_step_and_stops_at_the_target():
    assert schedule(0.05, 0.2) == [0.05, 0.1, 0.15, 0.2]
    assert len(schedule(0.05, 0.8)) == 16 and schedule(0.05, 0.8)[-1] == 0.8
    assert schedule(0.3, 0.8) == [0.3, 0.6, 0.8]  # Q_n = min(target, n q)


def _two_layer_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 20), nn.Linear(20, 2))


def _setup(model: nn.Module):
    names = ["0.weight", "1.weight"]
    params = dict(model.named_parameters())
    eligible = {k: torch.ones_like(params[k], dtype=torch.bool) for k in names}
    quantized = {k: torch.zeros_like(eligible[k]) for k in names}
    h_u = {k: torch.rand_like(params[k]) for k in names}
    h_p = {k: torch.rand_like(params[k]) for k in names}
    return names, params, eligible, quantized, h_u, h_p


def _score(params, h_u, h_p, beta, names):
    out = {}
    for k in names:
        theta = params[k].detach()
        out[k] = 0.5 * (quantize(theta) - theta) ** 2 * (h_u[k] - beta * h_p[k])
    return out


def test_global_selection_picks_the_lowest_scores_and_follows_the_schedule():
    model = _two_layer_model()
    names, params, eligible, quantized, h_u, h_p = _setup(model)
    total = sum(params[k].numel() for k in names)  # 200 + 40
    for ratio in schedule(0.05, 0.2):
        before = {k: v.clone() for k, v in quantized.items()}
        quantized = select_step(
            model, h_u, h_p, ratio=ratio, beta=1.0, ranking="global", quantized=quantized, eligible=eligible
        )
        assert sum(int(m.sum()) for m in quantized.values()) == round(ratio * total)
        assert all(torch.equal(before[k] & quantized[k], before[k]) for k in names)  # never un-quantised
    # the first step's choice is exactly the 5 % lowest scores over both layers together
    first = select_step(
        model,
        h_u,
        h_p,
        ratio=0.05,
        beta=1.0,
        ranking="global",
        quantized={k: torch.zeros_like(v) for k, v in eligible.items()},
        eligible=eligible,
    )
    flat = torch.cat([_score(params, h_u, h_p, 1.0, names)[k].reshape(-1) for k in names])
    chosen = torch.cat([first[k].reshape(-1) for k in names])
    assert flat[chosen].max() <= flat[~chosen].min()


def test_per_layer_ranking_quantises_each_layer_by_the_ratio():
    model = _two_layer_model()
    names, params, eligible, quantized, h_u, h_p = _setup(model)
    masks = select_step(
        model, h_u, h_p, ratio=0.25, beta=1.0, ranking="layer", quantized=quantized, eligible=eligible
    )
    assert int(masks["0.weight"].sum()) == 50 and int(masks["1.weight"].sum()) == 10


def test_weights_an_inner_method_froze_are_never_selected_nor_counted():
    model = _two_layer_model()
    names, params, eligible, quantized, h_u, h_p = _setup(model)
    pruned = torch.zeros_like(eligible["0.weight"])
    pruned[:5] = True  # 50 weights FairPrune zeroed
    eligible["0.weight"] = ~pruned
    masks = select_step(
        model, h_u, h_p, ratio=0.5, beta=1.0, ranking="global", quantized=quantized, eligible=eligible
    )
    assert not (masks["0.weight"] & pruned).any()
    assert sum(int(m.sum()) for m in masks.values()) == round(0.5 * (240 - 50))


def _run(out: Path, *extra: str, method: str = "fairquantize") -> dict:
    settings = [*TINY_SETTINGS, "fairquantize.step=0.1", "fairquantize.score_samples=32", *extra]
    code = main(
        [
            "run",
            "--method",
            method,
            "--out",
            str(out),
            "--device",
            "cpu",
            *sum([["--set", s] for s in settings], []),
        ]
    )
    assert code == 0
    (record,) = out.glob("*/metrics.json")
    return json.loads(record.read_text())


@pytest.mark.slow
def test_fairquantize_runs_and_its_quantised_weights_stay_powers_of_two(tmp_path):
    metrics = _run(tmp_path / "runs")
    run_dir = next((tmp_path / "runs").glob("fairquantize_*"))
    assert metrics["hooks"]["fit"] == "erm" and metrics["hooks"]["fit_wrappers"] == ["fairquantize"]
    record = metrics["methods"]["fairquantize"]
    assert [s["quantized_share"] for s in record["steps"]] == pytest.approx([0.1, 0.2], abs=1e-4)
    assert record["groups"]["scheme"] == "tone2" and record["groups"]["privileged"] in ("light", "dark")
    assert "validation macro-F1" in record["groups"]["privileged_reason"]
    assert metrics["methods"]["erm"]["checkpoint"]["hit"] is False  # the session's cache was empty for it
    weights, masks = (
        load_file(run_dir / "model.safetensors"),
        load_file(run_dir / "quantized_mask.safetensors"),
    )
    n_quantized = 0
    for name, mask in masks.items():
        values = weights[name][mask.bool()]
        assert is_power_of_two_or_zero(values), name  # retrained, yet bit-exact codes
        n_quantized += int(mask.sum())
    eligible = sum(weights[name].numel() for name in masks)
    assert n_quantized / eligible == pytest.approx(record["quantized_share"], abs=1e-4)
    assert record["size"]["coded_bytes"] < record["size"]["float32_bytes"]
    report = (run_dir / "report.md").read_text()
    assert "## Method record: `fairquantize`" in report and "chosen_step" in report


@pytest.mark.slow
def test_the_headline_command_on_a_fitzpatrick17k_tree(make_data_home, tmp_path, monkeypatch):
    """`dermbench run --method fairquantize --dataset fitz17k --profile tiny` end to end, on a
    generated tree in the published layout with DDI and Derm7pt beside it."""
    home = make_data_home(n_fitz=300, include=("ddi", "derm7pt"), size=16)
    monkeypatch.setenv("DERMBENCH_DATA", str(home))
    out = tmp_path / "runs"
    code = main(
        [
            "run",
            "--method",
            "fairquantize",
            "--dataset",
            "fitz17k",
            "--profile",
            "tiny",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--set",
            "data.image_size=16",
            "--set",
            "model.backbone=test_resnet",
            "--set",
            "train.epochs=1",
            "--set",
            "eval.n_boot=0",
            "--set",
            "fairquantize.step=0.1",
            "--set",
            "fairquantize.score_samples=32",
        ]
    )
    assert code == 0
    (path,) = out.glob("fairquantize_fitz17k_s0_*/metrics.json")
    metrics = json.loads(path.read_text())
    assert set(metrics["eval"]) == {
        "fitz17k",
        "ddi",
        "derm7pt-derm",
        "derm7pt-clinic",
    }  # every present test set
    groups = metrics["methods"]["fairquantize"]["groups"]
    # FST -1 rows of the training split are in no group: counted, never guessed
    assert groups["unknown_group_excluded"] > 0
    assert sum(groups["train_counts"].values()) + groups["unknown_group_excluded"] > 0


@pytest.mark.slow
def test_paper_profile_carries_the_papers_protocol_and_numbers():
    from dermbench.runner import resolve_config

    fitz = resolve_config(flags={"method": "fairquantize", "profile": "paper", "dataset": "fitz17k"})
    assert fitz["task"] == "condition" and fitz["model"]["backbone"] == "vgg11_bn"
    assert fitz["data"]["options"]["fitz17k"]["split_rule"] == "fairquantize"
    assert fitz["fairquantize"]["beta"] == 1.0 and fitz["fairquantize"]["target"] == 0.2
    assert fitz["fairquantize"]["groups"] == "tone2" and fitz["fairquantize"]["retrain"]["batch_size"] == 4
    isic = resolve_config(flags={"method": "fairquantize", "profile": "paper", "dataset": "isic2019"})
    assert isic["task"] == "diagnosis" and isic["model"]["backbone"] == "resnet18"
    assert isic["fairquantize"]["groups"] == "sex"
    assert isic["fairquantize"]["beta"] == 0.778 and isic["fairquantize"]["target"] == 0.8
    overridden = resolve_config(
        sets=["fairquantize.beta=0.333", "model.backbone=resnet18"],
        flags={"method": "fairquantize", "profile": "paper", "dataset": "fitz17k"},
    )
    assert overridden["fairquantize"]["beta"] == 0.333 and overridden["model"]["backbone"] == "resnet18"


@pytest.mark.slow
def test_fairprune_then_fairquantize_keeps_pruned_weights_zero(tmp_path):
    """`--method fairprune+fairquantize`: FairPrune (inner wrapper) prunes the cached ERM model,
    FairQuantize (outer) quantises the rest and retrains; the pruned weights stay exactly zero."""
    out = tmp_path / "runs"
    metrics = _run(
        out,
        "fairprune.rounds=1",
        "fairprune.score_batches=2",
        "fairprune.score_batch_size=16",
        method="fairprune+fairquantize",
    )
    run_dir = next(out.glob("fairprune-fairquantize_*"))
    assert metrics["hooks"]["fit"] == "erm"
    assert metrics["hooks"]["fit_wrappers"] == [
        "fairprune",
        "fairquantize",
    ]  # innermost first: prune, then quantise
    weights = load_file(run_dir / "model.safetensors")
    pruned = load_file(run_dir / "pruning_mask.safetensors")
    quantized = load_file(run_dir / "quantized_mask.safetensors")
    n_pruned = 0
    for name, mask in pruned.items():
        mask = mask.bool()
        assert torch.all(weights[name][mask] == 0), name  # through FairQuantize's retraining
        assert not (mask & quantized[name].bool()).any(), name  # never quantised: not counted either
        n_pruned += int(mask.sum())
    assert n_pruned > 0
    eligible = sum(weights[k].numel() for k in quantized) - n_pruned
    n_quantized = sum(int(m.sum()) for m in quantized.values())
    assert n_quantized / eligible == pytest.approx(
        metrics["methods"]["fairquantize"]["quantized_share"], abs=1e-4
    )


@pytest.mark.slow
def test_a_paper_profile_run_reports_the_papers_numbers_beside_its_own(make_data_home, tmp_path, monkeypatch):
    """The paper profile on a generated Fitzpatrick17k tree (its settings shrunk to seconds): the
    condition task, the `fairquantize` split rule, and Table 1 beside the run's own values."""
    home = make_data_home(n_fitz=300, include=(), size=16)
    monkeypatch.setenv("DERMBENCH_DATA", str(home))
    out = tmp_path / "runs"
    shrink = [
        "data.image_size=16",
        "model.backbone=test_resnet",
        "train.epochs=1",
        "train.batch_size=32",
        "eval.n_boot=0",
        "fairquantize.step=0.1",
        "fairquantize.target=0.1",
        "fairquantize.retrain.epochs=0",
        "fairquantize.score_samples=16",
        "data.test_sets=[fitz17k]",
    ]
    code = main(
        [
            "run",
            "--method",
            "fairquantize",
            "--dataset",
            "fitz17k",
            "--profile",
            "paper",
            "--out",
            str(out),
            "--device",
            "cpu",
            *sum([["--set", s] for s in shrink], []),
        ]
    )
    assert code == 0
    (path,) = out.glob("fairquantize_fitz17k_s0_*/metrics.json")
    metrics = json.loads(path.read_text())
    assert metrics["task"] == "condition" and metrics["eval"]["fitz17k"]["task"] == "multiclass"
    paper = metrics["methods"]["fairquantize"]["paper"]
    assert paper["method"]["eodd_net"] == 0.135 and paper["vanilla"]["eodd_net"] == 0.182
    report = (path.parent / "report.md").read_text()
    assert "The paper's numbers beside this run's (FairQuantize paper, Table 1" in report
    ours = metrics["eval"]["fitz17k"]["fairness"]["tone2"]["eodd_net"]
    row = next(line for line in report.splitlines() if line.startswith("| EOdd (their convention"))
    assert "0.135" in row and "0.182" in row and f"{ours:.3f}" in row
