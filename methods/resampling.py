"""Resampling: ERM trained on batches balanced over label x tone-group cells.

The simplest mitigation, and the baseline every other method should beat (MEDFAIR's
"Resampling" row; Idrissi et al. 2022, "Simple data balancing achieves competitive
worst-group-accuracy"). Each epoch draws len(train) samples with replacement, every known
(label, group) cell equally often (`train.sampler: group`, dermbench.train.trainer.epoch_order);
samples whose group is unknown are left out, since they belong to no cell. Everything else
(backbone, initialisation, schedule, model selection) is ERM's, so a leaderboard row differs
from ERM's only by the sampling.

Settings (`resampling.*`): `groups`, the scheme whose groups make the cells (tone3, tone2, fst
or sex; default tone3).
"""

from __future__ import annotations

from torch import nn

from dermbench.data.model import Split
from dermbench.hookspecs import hookimpl
from dermbench.mitigation.groups import check_scheme

name = "resampling"
#: the paper(s) to cite for this method, as BibTeX (`dermbench cite`; docs/cite.md)
REFERENCES: tuple[str, ...] = (
    r"""@inproceedings{idrissi2022simple,
  author = {Idrissi, Badr Youbi and Arjovsky, Martin and Pezeshki, Mohammad and Lopez-Paz, David},
  title = {Simple Data Balancing Achieves Competitive Worst-Group-Accuracy},
  booktitle = {Conference on Causal Learning and Reasoning (CLeaR)},
  year = {2022},
}""",
    r"""@inproceedings{zong2023medfair,
  author = {Zong, Yongshuo and Yang, Yongxin and Hospedales, Timothy},
  title = {{MEDFAIR}: Benchmarking Fairness for Medical Imaging},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year = {2023},
}""",
)
DEFAULTS = {"groups": "tone3"}


@hookimpl
def dermbench_method_defaults(profile: str) -> dict:
    return {name: dict(DEFAULTS)}


@hookimpl
def fit(ctx, model: nn.Module, train: Split, val: Split) -> nn.Module:
    scheme = check_scheme(ctx.hparams(name)["groups"], f"{name}.groups")
    ctx.record(name, {"sampler": "label x group cells", "groups": scheme})
    return ctx.train_model(model, train, val, name=name, groups=scheme, settings={"sampler": "group"})
