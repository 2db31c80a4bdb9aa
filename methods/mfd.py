"""MFD: MMD-based Fair Distillation (Jung, Lee, Park, Moon, "Fair Feature Distillation for Visual
Recognition", CVPR 2021), in the dermatology adaptation of the Multi-Exit (ME) paper's repository
(Chiu et al.), which the FairQuantize paper's MFD rows come from.

What it does. A teacher (the trained ERM model) is frozen. A student of the same architecture is
trained from a fresh initialisation with the task loss plus a feature-distillation term that pulls,
for every class c and every sensitive group g, the distribution of the student's features of the
(c, g) samples toward the teacher's features of *all* class-c samples. Every group's features are
thereby drawn toward one group-agnostic, class-conditional distribution, which removes what the
features say about the group beyond what the class says.

The loss, per batch (N samples, labels y, group ids a under the `groups` scheme, -1 = unknown):

    L = task_loss(student logits, y) + outer * (lam / 2) * sum_c sum_g MMD^2(T_c, S_{c,g})

- task_loss: the `train` section's loss (train.loss: ce, as in the papers, or focal).
- T_c: the teacher's features of the batch samples with y = c (every group, detached).
- S_{c,g}: the student's features of the samples with y = c and a = g. A sample of unknown group
  is in no S slice (and the group sampler does not draw it at all, see below). A (c, g) pair with
  no sample in the batch is skipped; so is a class with no sample of known group.
- MMD^2(T, S) = mean(K_TT) + mean(K_SS) - 2 mean(K_TS): the biased V-statistic, diagonals included.
- k(u, v) = exp(-||u - v||^2 / (2 * sigma * sigma_bar)) (RBF), where sigma_bar is the mean squared
  distance between every teacher feature and every student feature of the whole batch, computed
  once per batch without gradient (clamped at 1e-12, so a batch whose features all coincide gives
  MMD 0 instead of 0/0).
- Features: the penultimate vector, i.e. the input of the classifier head (`get_classifier()` of a
  timm model: 4096-d for VGG-11-BN, 512-d for ResNet-18, after global pooling and, in training mode,
  after the head's dropout when model.drop_rate > 0). The student's are captured by a forward hook
  during the trainer's own forward pass (no second pass); the teacher's come from one no-grad
  forward of the same augmented batch. The MMD is computed in float32 (outside autocast).
- A NaN or infinite MMD term stops the run with a DermbenchError saying which inputs were not
  finite, instead of training on.

Defaults (the derm adaptation; settings under `mfd`): groups tone2 (light FST I-III / dark IV-VI),
lam 5, outer 0.02, sigma 0.5: the distillation weight is 0.02 * 5 / 2 = 0.05.

Training. The student is trained by the ordinary trainer (`ctx.train_model`, name "mfd", resumable)
with `train.sampler: group`: every batch is drawn with equal probability from each (label, group)
cell of the scheme, oversampling small cells (the official code's `--labelwise` sampler); training
samples of unknown group are left out of the student's training and counted in the record (the
paper profile's plain loader trains on them with CE; they are in no S slice). The
student selects its epoch on validation like ERM. `predict` is ERM's: a plain forward pass of the
student; no group is needed at test time.

Where this differs from the official code (DQle38/Fair-Feature-Distillation-for-Visual-Recognition)
and from the ME repository's derm baseline (docs/mfd.md):

- Features: the official code distils the last conv block's map *before* pooling (ResNet layer4,
  flattened); the ME derm baseline and this plugin use the penultimate vector.
- Weights: official `--lambf` 3 (UTKFace, CIFAR-10S) or 7 (CelebA) with weight lambf / 2 and
  sigma 1; the ME derm baseline uses lam 5, sigma 0.5 and an outer weight 0.02, which we follow.
  No Hinton KD term (official `--lambh 0`, as both use); no annealing; RBF kernel only (the
  official 'poly' kernel is not offered).
- Teacher: the official teacher is a same-architecture model trained from scratch with CE (Adam,
  50 epochs); the ME repo's derm baseline uses the **epoch-5 checkpoint** of a separately trained
  CE model (`--teacher_path .../5.pth`). Here, as issue 11 asks, the teacher is the trained ERM
  model (its best validation epoch) from the shared ERM cache (`ctx.pretrained_erm`): the very
  model the ERM baseline of the same settings trains, so MFD's gain over the ERM row is measured
  from its own teacher, and FairPrune, FairQuantize and MFD share one ERM model per config and seed.
  The teacher is initialised exactly as the ERM baseline's model (the run's "model-init" seed),
  not from a seed of its own: the cache key does not cover the initialisation, so a teacher trained
  from another init on a cache miss would be stored as "the ERM model" and handed to other methods.
  The student (the `model` the harness passes to `fit`) therefore starts from the same initial
  weights the teacher started from, then trains with its own batch stream (trainer name "mfd").
- Unknown group: the ME repo puts FST -1 into the dark group; here such samples belong to no
  group and are not trained on by the student (they are in T_c and in sigma_bar only when a batch
  holds them, which the group sampler never does).
- Student init and sampler (issue 26; the FairQuantize paper is silent on both, so the paper
  profile follows the ME repository's derm baseline behind its MFD rows): the student is
  `mfd_vgg11`, torchvision's VGG-11 *without* BN, ImageNet-initialised (timm `vgg11.tv_in1k`), on
  Fitzpatrick17k and `mfd_resnet18` (`resnet18.tv_in1k`) on ISIC 2019: `mfd.student_model`, read
  from the local weights cache (`dermbench.train.models`; a missing file stops the run with the
  command that fetches it). Its batches come from a plain loader (`mfd.student.sampler: none`),
  as `train_mfd.py`'s DataLoader; the tiny profile keeps the (label, group)-balanced sampler (the
  official code's `--labelwise`) and the harness's model as the student. Its teacher, the vanilla
  VGG-11-BN, stays randomly initialised (FairQuantize's `--pre_trained 0`); both give 4096-d
  penultimate features.

Profiles. `tiny`: the defaults above, with the profile's training recipe. `paper`: the FairQuantize
paper's settings for the dataset (`dermbench.mitigation.fairquantize_paper.paper_defaults`: Fitzpatrick17k
with 114 conditions, VGG-11-BN, tone2; ISIC 2019 with 8 diagnoses, ResNet-18, sex) and the ME
repo's student recipe in `mfd.student` (train settings for the student only): SGD with nesterov
momentum 0.9, lr 0.01, weight decay 1e-5, StepLR(step 100, gamma 0.1), 200 epochs, batch 128.
The teacher is the ERM model of the shared `train` section (FairQuantize's pre_train recipe in
the paper profile), so MFD, FairPrune and FairQuantize start from one and the same ERM model and
the leaderboard's ERM row is their common baseline. (The ME repo trains its CE model with the
student's script settings; that difference is deliberate.)

Record (metrics.json "methods.mfd"): the settings used, the scheme, the distillation weight, the
feature module and size, the (class, group) cell counts of the training split and the number of
training samples left out for an unknown group; a paper-profile run adds the published numbers
under "paper". The teacher's cache entry is under "methods.erm.checkpoint".

Reported anchors (FairQuantize paper, EOdd = our eodd_net, F1 = macro-F1 on the pooled test set):
Fitzpatrick17k, VGG-11 (Table 1): MFD EOpp0 0.0011, EOpp1 0.334, EOdd 0.166, F1 0.480 (vanilla
0.0013 / 0.361 / 0.182 / 0.510). ISIC 2019, ResNet-18 (Table 2): MFD EOpp0 0.005, EOpp1 0.051,
EOdd 0.024, F1 0.735, i.e. *less* fair than vanilla (0.006 / 0.044 / 0.022 / 0.735).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from dermbench.data.model import Split
from dermbench.errors import ConfigError, DataError, DermbenchError, closest
from dermbench.hookspecs import hookimpl
from dermbench.mitigation.fairquantize_paper import paper_defaults, reported
from dermbench.mitigation.groups import check_scheme
from dermbench.seeds import seed_for
from dermbench.train.meta_models import BuiltModel, built, classifier, timm_weights
from dermbench.train.models import create_backbone
from dermbench.train.trainer import Batch, group_codes, group_names

name = "mfd"
#: the paper(s) to cite for this method, as BibTeX (`dermbench cite`; docs/cite.md)
REFERENCES: tuple[str, ...] = (
    r"""@inproceedings{jung2021fair,
  author = {Jung, S. and Lee, D. and Park, T. and Moon, T.},
  title = {Fair Feature Distillation for Visual Recognition},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages = {12115--12124},
  year = {2021},
}""",
)

#: the derm adaptation (ME repository): CE + outer * (lam / 2) * sum MMD^2, RBF bandwidth multiplier sigma
DEFAULTS: dict[str, Any] = {"groups": "tone2", "lam": 5.0, "outer": 0.02, "sigma": 0.5, "student": {}}
#: the ME repository's student recipe (train.sh / train_mfd.py), for the paper profile
PAPER_TRAIN: dict[str, Any] = {
    "optimizer": "sgd",
    "momentum": 0.9,
    "nesterov": True,
    "lr": 0.01,
    "weight_decay": 1e-5,
    "schedule": "step",
    "step_size": 100,
    "gamma": 0.1,
    "epochs": 200,
    "batch_size": 128,
}
#: the student's sampler: balanced over (label, group) cells, unknown groups left out (the tiny
#: profile's; `mfd.student.sampler` overrides it: the paper profile's is the plain loader)
STUDENT_SETTINGS = {"sampler": "group"}
#: the ME repository's students (`model.py`): `mfd_vgg11` = torchvision VGG-11 (no BN) and
#: `mfd_resnet18`, both ImageNet-initialised; paper profile only (`mfd.student_model`)
PAPER_STUDENT = {"fitz17k": "vgg11.tv_in1k", "isic2019": "resnet18.tv_in1k"}
#: settings only the paper profile sets (absent: the student is the harness's model)
OPTIONAL = ("student_model",)
#: the smallest bandwidth scale: all-equal features give MMD 0, not 0/0
MIN_SIGMA_BAR = 1e-12


@hookimpl
def dermbench_method_defaults(profile: str, dataset: str) -> dict:
    own = {k: v for k, v in DEFAULTS.items() if k != "groups"}
    if profile == "paper":
        student_model = {"backbone": PAPER_STUDENT.get(dataset, PAPER_STUDENT["fitz17k"]), "pretrained": True}
        return paper_defaults(
            dataset,
            name,
            {**own, "student": {**PAPER_TRAIN, "sampler": "none"}, "student_model": student_model},
        )
    return {name: dict(DEFAULTS)}


def _number(settings: dict, key: str, *, positive: bool) -> float:
    value = settings[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name}.{key} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"{name}.{key} must be > 0, got {value!r}")
    if value < 0:
        raise ConfigError(f"{name}.{key} must be >= 0, got {value!r}")
    return float(value)


def check_settings(settings: dict) -> dict[str, Any]:
    """MFD's settings (`groups`, `lam`, `outer`, `sigma`), checked and converted; a ConfigError
    naming the setting otherwise. A missing setting takes its default."""
    for key in settings:
        if key not in DEFAULTS and key not in OPTIONAL:
            guess = closest(str(key), [*DEFAULTS, *OPTIONAL])
            raise ConfigError(
                f"unknown setting {name}.{key}"
                + (f"; did you mean {name}.{guess}?" if guess else "")
                + f" (MFD's settings: {', '.join(DEFAULTS)})"
            )
    merged = {**DEFAULTS, **settings}
    scheme = check_scheme(merged["groups"], f"{name}.groups")
    return {
        "groups": scheme,
        "lam": _number(merged, "lam", positive=False),
        "outer": _number(merged, "outer", positive=False),
        "sigma": _number(merged, "sigma", positive=True),
        "student": _student(merged["student"]),
        **({"student_model": _student_model(merged["student_model"])} if merged.get("student_model") else {}),
    }


def _student_model(spec: Any) -> dict[str, Any]:
    if (
        not isinstance(spec, dict)
        or not isinstance(spec.get("backbone"), str)
        or set(spec) - {"backbone", "pretrained"}
    ):
        raise ConfigError(
            f"{name}.student_model must be {{backbone: <timm model>, pretrained: true|false|<file>}}, "
            f"got {spec!r}"
        )
    return {"backbone": spec["backbone"], "pretrained": spec.get("pretrained", False)}


def student_train_settings(settings: dict) -> dict[str, Any]:
    """The student's train settings: `mfd.student` over the (label, group) balanced sampler."""
    return {**STUDENT_SETTINGS, **settings["student"]}


def build_student(ctx, model: nn.Module, settings: dict, num_classes: int) -> nn.Module:
    """The harness's `model`, or the paper profile's ImageNet-initialised student (`mfd.student_model`)."""
    spec = settings.get("student_model")
    if not spec:
        return model
    torch.manual_seed(seed_for(ctx.seed, "model-init"))
    m = ctx.config["model"]
    return create_backbone(
        spec["backbone"],
        num_classes=num_classes,
        pretrained=spec["pretrained"],
        drop_rate=m["drop_rate"],
        image_size=ctx.config["data"]["image_size"],
    )


def _student(student: Any) -> dict[str, Any]:
    if not isinstance(student, dict):
        raise ConfigError(
            f"{name}.student must be a mapping of train settings for the student, got {student!r}"
        )
    return dict(student)


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a_i - b_j||^2 for every row pair, (len(a), len(b)), without an (n, m, d) intermediate."""
    sq = (a * a).sum(1, keepdim=True) + (b * b).sum(1).unsqueeze(0) - 2.0 * (a @ b.T)
    return sq.clamp(min=0.0)


def _as_float(x: torch.Tensor) -> torch.Tensor:
    x = x.reshape(x.shape[0], -1)
    return x.to(torch.promote_types(x.dtype, torch.float32))


def class_group_mmd(
    teacher: torch.Tensor,
    student: torch.Tensor,
    labels: torch.Tensor,
    groups: torch.Tensor,
    *,
    num_classes: int,
    num_groups: int,
    sigma: float,
) -> torch.Tensor:
    """sum over classes c and groups g of MMD^2(T_c, S_{c,g}), unweighted (see the module docstring).

    `teacher` and `student` are (N, ...) features of the same N samples (flattened per sample);
    `labels` (N,) class ids; `groups` (N,) group ids, -1 for unknown (in no S slice). Cells absent
    from the batch are skipped. Every cell is computed at once from three N x N kernel matrices
    and one-hot membership matrices, so there is no per-cell loop and no host synchronisation."""
    with torch.autocast(student.device.type, enabled=False):
        t = _as_float(teacher).detach()
        s = _as_float(student)
        with torch.no_grad():
            sigma_bar = squared_distances(t, s).mean().clamp(min=MIN_SIGMA_BAR)
        scale = 2.0 * sigma * sigma_bar
        k_tt = torch.exp(-squared_distances(t, t) / scale)
        k_ss = torch.exp(-squared_distances(s, s) / scale)
        k_ts = torch.exp(-squared_distances(t, s) / scale)
        labels = labels.to(s.device).long()
        groups = groups.to(s.device).long()
        known = groups >= 0
        # membership: in_t[i, c] = sample i is in T_c; in_s[i, m] = sample i is in S_m, m = c * G + g
        in_t = nn.functional.one_hot(labels, num_classes).to(s.dtype)
        cell = torch.where(known, labels * num_groups + groups.clamp(min=0), torch.zeros_like(labels))
        in_s = nn.functional.one_hot(cell, num_classes * num_groups).to(s.dtype) * known.unsqueeze(1).to(
            s.dtype
        )
        in_t_cell = in_t.repeat_interleave(num_groups, dim=1)  # T_c of each cell m = (c, g)
        n_t = in_t_cell.sum(0)
        n_s = in_s.sum(0)
        sum_tt = ((k_tt @ in_t) * in_t).sum(0).repeat_interleave(num_groups)  # sum of K_TT over T_c x T_c
        sum_ss = ((k_ss @ in_s) * in_s).sum(0)  # over S_m x S_m
        sum_ts = ((k_ts @ in_s) * in_t_cell).sum(0)  # over T_c x S_m
        present = n_s > 0  # then n_t > 0 too: S_(c,g) is part of T_c
        n_t, n_s = n_t.clamp(min=1.0), n_s.clamp(min=1.0)
        per_cell = sum_tt / (n_t * n_t) + sum_ss / (n_s * n_s) - 2.0 * sum_ts / (n_t * n_s)
        return torch.where(present, per_cell, torch.zeros_like(per_cell)).sum()


def classifier_head(model: nn.Module, role: str) -> nn.Module:
    """The classifier head whose input is the penultimate feature vector (timm's get_classifier())."""
    getter = getattr(model, "get_classifier", None)
    head = getter() if callable(getter) else None
    if not isinstance(head, nn.Module) or not any(True for _ in head.parameters()):
        raise DermbenchError(
            f"{name}: the {role} ({type(model).__name__}) has no classifier "
            "head module (timm's get_classifier()), so its penultimate "
            "features cannot be taken; MFD needs a timm classifier backbone"
        )
    return head


class FeatureTap:
    """Keeps the input of a model's classifier head from its latest forward pass (training-mode
    passes only when `training_only`, so validation passes hold no tensors)."""

    def __init__(self, model: nn.Module, role: str, *, training_only: bool) -> None:
        self.role, self.training_only = role, training_only
        self.features: torch.Tensor | None = None
        self.dim: int | None = None
        head = classifier_head(model, role)
        self.head_name = next((n for n, m in model.named_modules() if m is head), "?")
        self._handle = head.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: tuple, output: Any) -> None:
        if module.training or not self.training_only:
            self.features = inputs[0]

    def take(self, n: int) -> torch.Tensor:
        features, self.features = self.features, None
        if features is None or features.shape[0] != n:
            got = "nothing" if features is None else f"{features.shape[0]} rows"
            raise DermbenchError(
                f"{name}: expected the {self.role}'s features of the {n} batch samples from its "
                f"classifier head ({self.head_name}), got {got}"
            )
        self.dim = int(features[0].numel())
        return features

    def close(self) -> None:
        self._handle.remove()


def cell_counts(train: Split, scheme: str) -> tuple[dict[str, dict[str, int]], int]:
    """{class: {group: training samples}} for every (class, group) cell, and the unknown-group count."""
    codes = group_codes(train, scheme)
    names = group_names(scheme)
    cells = {
        str(c): {g: int(((train.labels == k) & (codes == j)).sum()) for j, g in enumerate(names)}
        for k, c in enumerate(train.classes)
    }
    return cells, int((codes < 0).sum())


def _not_finite(
    term: torch.Tensor, teacher: torch.Tensor, student: torch.Tensor, step: int, weight: float
) -> DermbenchError:
    def finite(x: torch.Tensor) -> str:
        return (
            "finite"
            if bool(torch.isfinite(x).all())
            else f"{int((~torch.isfinite(x)).sum())} non-finite value(s)"
        )

    with torch.no_grad():
        t, s = _as_float(teacher), _as_float(student)
        sigma_bar = float(squared_distances(t, s).mean()) if t.numel() and s.numel() else float("nan")
    return DermbenchError(
        f"{name}: the MMD term became {float(term.detach())} at student training step {step} of this process "
        f"(teacher features: {finite(teacher)}; student features: {finite(student)}; bandwidth sigma_bar "
        f"{sigma_bar:.4g}). The student diverged or its input is broken: lower train.lr or the distillation "
        f"weight ({name}.outer * {name}.lam / 2 = {weight:.4g}), or check the inputs"
    )


def check_run_settings(config: dict) -> dict[str, Any]:
    """`check_settings` of the run's `mfd` section, and every `mfd.student` key a train setting."""
    settings = check_settings(config.get(name) or {})
    for key in settings["student"]:
        if key not in config.get("train", {}):
            guess = closest(key, config.get("train", {}))
            raise ConfigError(
                f"{name}.student.{key} is no train setting" + (f"; did you mean {guess!r}?" if guess else "")
            )
    return settings


@hookimpl
def dermbench_check_settings(config: dict) -> None:
    check_run_settings(config)


@hookimpl
def dermbench_classifier_role() -> str:
    return "classifier (MFD's teacher)"


@hookimpl
def dermbench_models(config: dict, num_classes: int, note: str) -> list[BuiltModel]:
    """The student, for the dry run (the teacher is the harness's classifier)."""
    model = config["model"]
    student = (config.get(name) or {}).get("student_model") or {}
    backbone = str(student.get("backbone", model["backbone"]))
    return [
        built(
            "mfd: student",
            f"timm {backbone}",
            timm_weights(student.get("pretrained", model.get("pretrained")), backbone),
            lambda: classifier(backbone, num_classes),
            note,
        )
    ]


@hookimpl
def fit(ctx, model: nn.Module, train: Split, val: Split) -> nn.Module:
    settings = check_run_settings(ctx.config)
    scheme = settings["groups"]
    names = group_names(scheme)
    cells, unknown = cell_counts(train, scheme)
    present = [g for g in names if any(counts[g] for counts in cells.values())]
    if len(present) < 2:
        raise DataError(
            f"MFD needs two {scheme} groups in the training split {train.name!r}, "
            f"found {present or 'none'} ({unknown} of {len(train)} samples have "
            f"no {scheme} group); choose another scheme with {name}.groups"
        )
    weight = settings["outer"] * settings["lam"] / 2.0
    record: dict[str, Any] = {
        "settings": dict(settings),
        "scheme": scheme,
        "groups": list(names),
        "weight": weight,
        "teacher": "the trained ERM model from the shared ERM cache (methods.erm.checkpoint), frozen",
        "student_sampler": student_train_settings(settings)["sampler"],
        "student_model": settings.get("student_model") or "the harness's model (model section)",
        "train_cells": cells,
        "unknown_group_excluded": unknown,
    }
    if (
        ctx.config.get("profile") == "paper"
        and (published := reported(ctx.config.get("dataset"), name)) is not None
    ):
        record["paper"] = published
    ctx.record(name, record)
    ctx.say(
        f"{name}: {scheme} groups {', '.join(present)}; distillation weight {weight:.4g} "
        f"(outer {settings['outer']:g} * lam {settings['lam']:g} / 2), sigma {settings['sigma']:g}; "
        f"{unknown} training sample(s) of unknown group left out"
    )

    teacher = ctx.pretrained_erm(train, val)  # the ERM baseline's model, from its own initialisation
    teacher.eval()
    teacher.requires_grad_(False)
    cfg = ctx.config["train"]
    if ctx.device.type == "cuda" and bool(cfg.get("channels_last", True)):
        teacher.to(memory_format=torch.channels_last)

    model = build_student(ctx, model, settings, train.num_classes)
    teacher_tap = FeatureTap(teacher, "teacher", training_only=False)
    student_tap = FeatureTap(model, "student", training_only=True)
    num_groups, sigma, steps = len(names), settings["sigma"], [0]

    def mmd_loss(student_model: nn.Module, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
        steps[0] += 1
        n = batch.x.shape[0]
        student = student_tap.take(n)
        with torch.no_grad():
            teacher(batch.x)
        teacher_features = teacher_tap.take(n)
        term = class_group_mmd(
            teacher_features,
            student,
            batch.y,
            batch.group,
            num_classes=logits.shape[1],
            num_groups=num_groups,
            sigma=sigma,
        )
        if not bool(torch.isfinite(term)):
            raise _not_finite(term, teacher_features, student, steps[0], weight)
        return weight * term

    try:
        student = ctx.train_model(
            model,
            train,
            val,
            name=name,
            groups=scheme,
            settings=student_train_settings(settings),
            extra_loss=mmd_loss,
        )
    finally:
        teacher_tap.close()
        student_tap.close()
    ctx.record(name, {"features": {"module": student_tap.head_name, "dim": student_tap.dim}})
    return student
