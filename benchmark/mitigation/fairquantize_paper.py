"""The FairQuantize paper's settings and numbers (Guo et al., MICCAI 2024: Table 1, Fitzpatrick17k
with VGG-11; Table 2, ISIC 2019 with ResNet-18). Its settings per dataset are the `paper` profile's
defaults of FairPrune, FairQuantize and MFD (its tables compare all three); the numbers it reports
are printed beside ours in a paper-profile run's report.

Their EOdd is the Notre Dame convention, |ΔTPR + ΔFPR| / 2 averaged over classes: our
`eodd_net`; EOpp0 and EOpp1 are our `eopp0` and `eopp1`; "avg F1" is macro-F1 on the pooled
test set. Every method on a dataset the paper does not use keeps the dataset's own task and
split, with the Fitzpatrick17k recipe's hyperparameters.
"""

from __future__ import annotations

from typing import Any

#: the paper's settings per dataset, shared by the three methods: task, split rule, backbone,
#: sensitive groups.
#: The training recipe is the `paper` profile's (FairQuantize's pre_train.py), in profiles/paper.yaml.
DATASET_SETTINGS: dict[str, dict[str, Any]] = {
    "fitz17k": {
        "task": "condition",
        "data": {"options": {"fitz17k": {"split_rule": "fairquantize"}}},
        "model": {"backbone": "vgg11_bn"},
        "groups": "tone2",
    },
    "isic2019": {
        "task": "diagnosis",
        "data": {"options": {"isic2019": {"split_rule": "fairquantize"}}},
        "model": {"backbone": "resnet18"},
        "groups": "sex",
    },
}

_T1 = "FairQuantize paper, Table 1 (Fitzpatrick17k, 114 conditions, VGG-11, light/dark; dark privileged)"
_T2 = "FairQuantize paper, Table 2 (ISIC 2019, 8 diagnoses, ResNet-18, female/male; female privileged)"
#: {dataset: {method: {our metric name: value}}}; "vanilla" is their ERM
REPORTED: dict[str, dict[str, dict[str, float]]] = {
    "fitz17k": {
        "vanilla": {"eopp0": 0.0013, "eopp1": 0.361, "eodd_net": 0.182, "f1": 0.510},
        "mfd": {"eopp0": 0.0011, "eopp1": 0.334, "eodd_net": 0.166, "f1": 0.480},
        "fairprune": {"eopp0": 0.0008, "eopp1": 0.330, "eodd_net": 0.165, "f1": 0.483},
        "fairquantize": {"eopp0": 0.0012, "eopp1": 0.269, "eodd_net": 0.135, "f1": 0.524},
    },
    "isic2019": {
        "vanilla": {"eopp0": 0.006, "eopp1": 0.044, "eodd_net": 0.022, "f1": 0.735},
        "mfd": {"eopp0": 0.005, "eopp1": 0.051, "eodd_net": 0.024, "f1": 0.735},
        "fairprune": {"eopp0": 0.007, "eopp1": 0.026, "eodd_net": 0.014, "f1": 0.727},
        "fairquantize": {"eopp0": 0.003, "eopp1": 0.019, "eodd_net": 0.012, "f1": 0.850},
    },
}
SOURCES = {"fitz17k": _T1, "isic2019": _T2}


def paper_defaults(dataset: str, method: str, settings: dict[str, Any]) -> dict[str, Any]:
    """A method's `paper` defaults on `dataset`: the paper's task, split and backbone there, and
    under the method's own name its `settings` with the paper's group scheme (which wins)."""
    paper = DATASET_SETTINGS.get(dataset)
    if paper is None:
        return {method: {"groups": "tone2", **settings}}
    shared = {k: v for k, v in paper.items() if k != "groups"}
    return {**shared, method: {**settings, "groups": paper["groups"]}}


def reported(dataset: str, method: str) -> dict[str, Any] | None:
    """The published numbers for `method` and the paper's vanilla model on `dataset`, with their
    source and metric convention, for the run record (None when the paper has none)."""
    table = REPORTED.get(dataset)
    if table is None or method not in table:
        return None
    return {
        "source": SOURCES[dataset],
        "convention": "EOdd = our eodd_net; F1 = macro-F1 on the pooled test set",
        "test_set": dataset,
        "scheme": DATASET_SETTINGS[dataset]["groups"],
        "method": table[method],
        "vanilla": table["vanilla"],
    }
