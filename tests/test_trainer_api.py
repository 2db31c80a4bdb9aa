"""The trainer's extension API: a method's own loss, the group scheme of batch.group, and a
method state that is checkpointed and restored on resume."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

import dermbench.train.trainer as trainer
from dermbench.context import RunContext
from dermbench.data.groups import add_group_columns
from dermbench.data.model import Split
from dermbench.errors import DermbenchError, UnknownNameError
from dermbench.runner import resolve_config
from dermbench.train.trainer import group_codes, group_names


def make_split(name: str, n: int, seed: int) -> Split:
    """Random images with known and unknown tones and sexes."""
    rng = np.random.default_rng(seed)
    fst = rng.integers(1, 7, n).astype(float)
    fst[::7] = np.nan
    sex = rng.choice(np.array(["female", "male", None], dtype=object), n)
    table = add_group_columns(
        pd.DataFrame(
            {
                "sample_id": [f"{name}{i}" for i in range(n)],
                "label": rng.integers(0, 2, n),
                "fst": fst,
                "sex": sex,
            }
        )
    )
    return Split(name, table, rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8), ("benign", "malignant"))


@pytest.fixture
def ctx_factory(tmp_path):
    cfg = resolve_config(
        sets=["model.backbone=test_resnet", "data.image_size=16", "train.batch_size=16", "train.epochs=2"],
        flags={"out": str(tmp_path / "runs"), "device": "cpu"},
    )

    def make(work: str = "work") -> RunContext:
        return RunContext(
            config=cfg,
            device=torch.device("cpu"),
            work_dir=tmp_path / work,
            cache_dir=tmp_path / "cache",
            console=Console(quiet=True),
        )

    return make


TRAIN, VAL = make_split("train", 48, 0), make_split("val", 24, 1)


def test_group_ids_follow_the_chosen_scheme():
    table = add_group_columns(
        pd.DataFrame(
            {
                "fst": [1, 3, 4, 6, np.nan, np.nan],
                "tone3": [None, None, None, None, "B", "C"],  # DDI-style: tone3 only
                "sex": ["female", "male", None, "male", "female", None],
            }
        )
    )
    split = Split("s", table, np.zeros((6, 2, 2, 3), np.uint8), ("a", "b"))
    assert group_names("tone2") == ("light", "dark")
    assert group_codes(split).tolist() == [0, 1, 1, 2, 1, 2]  # tone3 is the default
    assert group_codes(split, "tone2").tolist() == [0, 0, 1, 1, -1, 1]  # B straddles light/dark
    assert group_codes(split, "fst").tolist() == [0, 2, 3, 5, -1, -1]
    assert group_codes(split, "sex").tolist() == [0, 1, -1, 1, 0, -1]
    no_sex = Split("t", table.drop(columns="sex"), split.images, split.classes)
    assert group_codes(no_sex, "sex").tolist() == [-1] * 6
    with pytest.raises(UnknownNameError, match="unknown group scheme 'tone_2'.*Did you mean 'tone2'"):
        group_codes(split, "tone_2")


def test_the_loss_sees_group_ids_of_the_chosen_scheme(ctx_factory):
    seen = []

    def loss(logits, batch):
        seen.append((batch.index.clone(), batch.group.clone(), batch.scheme))
        return F.cross_entropy(logits, batch.y)

    ctx_factory().train_model(
        ctx_factory().create_model(2),
        TRAIN,
        VAL,
        name="sexes",
        loss=loss,
        groups="sex",
        settings={"epochs": 1},
    )
    expected = group_codes(TRAIN, "sex")
    assert len(seen) == 3 and {s for _, _, s in seen} == {"sex"}
    for index, group, _ in seen:
        assert group.tolist() == expected[index.numpy()].tolist()
    assert (expected == -1).any() and (expected >= 0).any()


def test_a_loss_written_by_the_method_replaces_the_configured_one(ctx_factory):
    default = ctx_factory("a").train_model(ctx_factory().create_model(2), TRAIN, VAL, name="m")
    own = ctx_factory("b").train_model(
        ctx_factory().create_model(2),
        TRAIN,
        VAL,
        name="m",
        loss=lambda logits, batch: F.cross_entropy(logits, batch.y),
    )
    for (k, a), b in zip(default.state_dict().items(), own.state_dict().values()):
        assert torch.equal(a, b), k  # cross-entropy written out is the configured "ce", bit for bit
    with pytest.raises(
        DermbenchError, match=r"loss\(logits, batch\) must return a scalar tensor, got \(16,\)"
    ):
        ctx_factory("c").train_model(
            ctx_factory().create_model(2),
            TRAIN,
            VAL,
            name="m",
            loss=lambda logits, batch: F.cross_entropy(logits, batch.y, reduction="none"),
        )


class StepCounter:
    """A method state: steps taken and the labels seen per group."""

    def __init__(self) -> None:
        self.steps, self.per_group = 0, torch.zeros(3)

    def loss(self, logits, batch):
        self.steps += 1
        known = batch.group >= 0
        self.per_group += torch.bincount(batch.group[known], minlength=3).float()
        return F.cross_entropy(logits, batch.y)

    def state_dict(self):
        return {
            "steps": self.steps,
            "per_group": self.per_group.clone(),
            "note": ["counts", {"scheme": "tone3"}],
        }

    def load_state_dict(self, state):
        self.steps, self.per_group = state["steps"], state["per_group"].clone()


def test_method_state_round_trips_through_the_checkpoint(ctx_factory, monkeypatch):
    reference = StepCounter()
    ref_model = ctx_factory("ref").train_model(
        ctx_factory().create_model(2), TRAIN, VAL, name="counted", loss=reference.loss, state=reference
    )
    real_score, calls = trainer.validation_score, []

    def killed_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # epoch 2 has trained but is not checkpointed
            raise KeyboardInterrupt
        return real_score(*args, **kwargs)

    monkeypatch.setattr(trainer, "validation_score", killed_in_epoch_two)
    first = StepCounter()
    with pytest.raises(KeyboardInterrupt):
        ctx_factory().train_model(
            ctx_factory().create_model(2), TRAIN, VAL, name="counted", loss=first.loss, state=first
        )
    assert first.steps == 6  # two epochs of three steps ran in memory
    saved = torch.load(ctx_factory().work_dir / "checkpoints" / "counted.pt", weights_only=True)
    assert saved["state"]["epoch"] == 1 and saved["method_state"]["steps"] == 3
    assert saved["method_state"]["note"] == ["counts", {"scheme": "tone3"}]
    monkeypatch.setattr(trainer, "validation_score", real_score)
    resumed = StepCounter()
    model = ctx_factory().train_model(
        ctx_factory().create_model(2), TRAIN, VAL, name="counted", loss=resumed.loss, state=resumed
    )
    assert resumed.steps == reference.steps == 6  # restored at 3, then epoch 2 only
    assert torch.equal(resumed.per_group, reference.per_group)
    for (k, a), b in zip(ref_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k


class NumpyState:
    def state_dict(self):
        return {"q": np.ones(2)}

    def load_state_dict(self, state):
        pass


def test_a_state_that_would_not_load_safely_is_refused_before_training(ctx_factory):
    with pytest.raises(DermbenchError, match=r"state\.state_dict\(\)\['q'\] is a ndarray.*torch\.from_numpy"):
        ctx_factory().train_model(ctx_factory().create_model(2), TRAIN, VAL, name="np", state=NumpyState())
    assert not (ctx_factory().work_dir / "checkpoints").exists()


def test_a_checkpoint_without_the_state_the_method_keeps_is_an_error(ctx_factory):
    ctx_factory().train_model(ctx_factory().create_model(2), TRAIN, VAL, name="plain", settings={"epochs": 1})
    with pytest.raises(DermbenchError, match=r"plain\.pt holds no method state"):
        ctx_factory().train_model(
            ctx_factory().create_model(2), TRAIN, VAL, name="plain", state=StepCounter()
        )
