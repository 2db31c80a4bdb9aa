"""The `resampling` baseline: ERM on label x tone-group balanced batches."""

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import chisquare

from dermbench.conformance import check_method
from dermbench.data.groups import add_group_columns
from dermbench.data.model import Split
from dermbench.errors import ConfigError
from dermbench.train.trainer import epoch_order, group_codes

#: (label, fst) cells of very different sizes, and samples of unknown tone
CELLS = {(0, 1): 400, (0, 3): 120, (0, 6): 15, (1, 1): 60, (1, 4): 30, (1, 5): 8}
N_UNKNOWN = 50


def imbalanced_split() -> Split:
    labels, fst = [], []
    for (label, tone), count in CELLS.items():
        labels += [label] * count
        fst += [float(tone)] * count
    labels += [0] * N_UNKNOWN
    fst += [np.nan] * N_UNKNOWN
    n = len(labels)
    table = add_group_columns(
        pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "label": labels, "fst": fst})
    )
    return Split("train", table, np.zeros((n, 4, 4, 3), dtype=np.uint8), ("benign", "malignant"))


def cell_draws(split: Split, sampler: str, epochs: int = 20) -> tuple[np.ndarray, int]:
    """Draws per known label x tone3 cell over `epochs` epochs, and draws of unknown-tone samples."""
    gen = torch.Generator()
    gen.manual_seed(0)
    codes = group_codes(split, "tone3")
    drawn = np.concatenate([epoch_order(split, sampler, gen) for _ in range(epochs)])
    known = drawn[codes[drawn] >= 0]
    keys = split.labels[known] * 3 + codes[known]
    return np.bincount(keys, minlength=6), int((codes[drawn] < 0).sum())


def test_group_sampler_draws_every_label_x_tone_cell_equally_often():
    split = imbalanced_split()
    counts, unknown = cell_draws(split, "group")
    # six cells (two labels x tone3 A, B, C), each drawn with the same probability
    assert (counts > 0).all()
    assert chisquare(counts).pvalue > 0.01
    assert unknown == 0  # a sample of unknown tone belongs to no cell
    # the same test rejects plain shuffling of this imbalanced split: it can fail
    plain, _ = cell_draws(split, "none")
    assert chisquare(plain).pvalue < 1e-6


def test_resampling_runs_end_to_end_with_its_own_fit(tmp_path):
    metrics = check_method("resampling", out=tmp_path / "runs")
    assert metrics["hooks"]["fit"] == "resampling"
    assert metrics["methods"]["resampling"] == {"sampler": "label x group cells", "groups": "tone3"}
    assert metrics["config"]["resampling"] == {"groups": "tone3"}


def test_an_unknown_group_scheme_is_a_config_error_naming_the_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"resampling.groups.*tone3"):
        check_method("resampling", out=tmp_path / "runs", sets=["resampling.groups=tone33"])
