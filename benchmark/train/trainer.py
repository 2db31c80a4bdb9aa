"""The reusable ERM trainer. Methods call it through `ctx.train_model` (MFD trains its teacher
with it, FairQuantize retrains with it) and extend it through small callbacks, documented in
docs/trainer.md:

- `loss(logits, batch)` replaces the configured task loss (GroupDRO's group-weighted loss);
- `groups="tone3" | "tone2" | "fst" | "sex"` chooses the scheme of the per-sample group ids
  in `batch.group` (index into `group_names(scheme)`, -1 when unknown);
- `state=` an object with state_dict()/load_state_dict() that is saved in the checkpoint, so a
  method's own running state (GroupDRO's group weights) resumes exactly;
- `extra_loss(model, batch, logits)` adds a term to the loss (MFD's MMD term);
- `after_step(model)` runs after each optimiser step (FairQuantize re-freezes weights).

Every epoch ends with a checkpoint (model, optimiser, schedule, torch RNG state, best-so-far),
so a killed run resumes where it stopped and, on the CPU, gives the same result as an
uninterrupted one: batch order and augmentation depend only on (run seed, epoch), never on how
long the process lived. A checkpoint carries its own checksum and is resumed from only when it
matches: a damaged one is moved to `<work>/set-aside/`, training falls back to the previous
epoch's checkpoint or to scratch, and the run record names the file (`methods.<name>.
checkpoints_set_aside`). Plugins that need randomness use `ctx.rng(name)`, which is seeded the
same way; the global numpy/random state is not checkpointed. On CUDA, cuDNN's kernel choice
can make repeated runs differ slightly.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from torch import nn

from dermbench.data.groups import GROUP_ORDER, SCHEMES, group_schemes
from dermbench.data.model import Split
from dermbench.errors import ConfigError, DermbenchError, closest, unknown_name
from dermbench.seeds import seed_for
from dermbench.train import notredame
from dermbench.train.checkpoint import Stateful, check_plain, read_resume_checkpoint, save_checkpoint
from dermbench.train.losses import make_loss
from dermbench.train.models import input_stats

if TYPE_CHECKING:  # the context sits above the trainer; it is only named in annotations
    from dermbench.context import RunContext


@dataclass
class Batch:
    """One training step's samples, as the loss callbacks see them."""

    x: torch.Tensor  # normalised (and augmented) images, NCHW on the device
    y: torch.Tensor | None  # labels on the device
    index: torch.Tensor  # positions of the samples in the training split
    group: torch.Tensor  # index into group_names(scheme) on the device, -1 when unknown
    scheme: str = "tone3"  # the group scheme of `group`


#: loss(logits, batch) -> the scalar training loss, replacing the configured one (logits are float32)
TaskLoss = Callable[[torch.Tensor, Batch], torch.Tensor]
#: extra_loss(model, batch, logits) -> a scalar added to the task loss (MFD's MMD term, ...)
ExtraLoss = Callable[[nn.Module, Batch, torch.Tensor], torch.Tensor]
#: after_step(model) runs after each optimiser step (FairQuantize re-freezes quantised weights)
AfterStep = Callable[[nn.Module], None]


def group_names(scheme: str) -> tuple[str, ...]:
    """The groups of `scheme` in the order of their ids: tone3 A/B/C, tone2 light/dark,
    fst "1".."6", sex female/male (see dermbench.data.groups)."""
    if scheme not in SCHEMES:
        raise unknown_name("group scheme", scheme, SCHEMES)
    return GROUP_ORDER[scheme]


def group_codes(split: Split, scheme: str = "tone3") -> np.ndarray:
    """Each sample's group id under `scheme` (its index in group_names(scheme)), -1 when the
    dataset does not know it (a missing column, a missing value, DDI's FST III-IV under tone2)."""
    ids = {g: i for i, g in enumerate(group_names(scheme))}
    values = group_schemes(split.table[[scheme]]).get(scheme) if scheme in split.table else None
    if values is None:
        return np.full(len(split), -1, dtype=np.int64)
    return np.array([ids.get(v, -1) for v in values], dtype=np.int64)


def configured_loss(cfg: dict, num_classes: int, device: torch.device) -> TaskLoss:
    """The task loss the `train` config section names (cross-entropy or focal), as a TaskLoss."""
    criterion = make_loss(cfg, num_classes).to(device)
    return lambda logits, batch: criterion(logits, batch.y)


class Normaliser:
    """uint8 NHWC batches -> normalised float NCHW tensors on the device, with optional augmentation.

    `crop` (the notredame recipe's 112 of 128 px, `notredame.crop_size`) makes the model see a
    `crop`-sized window: a random one when training with that augmentation, the centre one
    otherwise (evaluation, scoring); None, the default, passes the whole image."""

    def __init__(
        self, model: nn.Module, device: torch.device, channels_last: bool, crop: int | None = None
    ) -> None:
        mean, std = input_stats(model)
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255.0
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.crop = crop

    def __call__(
        self, images: np.ndarray, augment: str = "none", gen: torch.Generator | None = None
    ) -> torch.Tensor:
        x = torch.from_numpy(np.array(images)).to(
            self.device, non_blocking=True
        )  # a copy: caches are read-only
        x = x.permute(0, 3, 1, 2).float()
        if self.crop is not None:
            x = (
                notredame.random_crop(x, self.crop, gen)
                if augment == "notredame"
                else notredame.center_crop(x, self.crop)
            )
        if augment != "none":
            x = augment_batch(x, augment, gen)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format)


def augment_batch(x: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    """Random flips (and for "standard" 90-degree rotations and brightness/contrast jitter;
    "notredame" is the Notre Dame Fitzpatrick17k recipe, dermbench.train.notredame), drawn per
    sample from `gen` on the CPU so results do not depend on the device."""
    if kind == "notredame":
        return notredame.notredame(x, gen)
    if kind not in ("flip", "standard"):
        raise ConfigError(f"train.augment must be none, flip, standard or notredame, got {kind!r}")
    n = x.shape[0]
    r = torch.rand(n, 4, generator=gen).to(x.device)
    x = torch.where((r[:, 0] < 0.5).view(n, 1, 1, 1), x.flip(3), x)
    x = torch.where((r[:, 1] < 0.5).view(n, 1, 1, 1), x.flip(2), x)
    if kind == "standard":
        if x.shape[2] == x.shape[3]:
            x = torch.where((r[:, 2] < 0.5).view(n, 1, 1, 1), x.transpose(2, 3), x)
        scale = (0.8 + 0.4 * r[:, 3]).view(n, 1, 1, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * scale + mean).clamp(0, 255)
    return x


def epoch_order(train: Split, sampler: str, gen: torch.Generator, scheme: str = "tone3") -> np.ndarray:
    """Sample positions for one epoch: a permutation, or len(train) draws balanced over labels
    ("class"), over label x group cells of `scheme` ("group") or over the groups of `scheme` alone
    ("sensitive": FairQuantize's light/dark-balanced batches). The group samplers leave samples
    whose group is unknown out (they belong to no cell); every known cell is drawn equally often."""
    n = len(train)
    if sampler == "none":
        return torch.randperm(n, generator=gen).numpy()
    if sampler == "class":
        keys, pool = train.labels, np.arange(n)
    elif sampler in ("group", "sensitive"):
        codes = group_codes(train, scheme)
        pool = np.flatnonzero(codes >= 0)
        if len(pool) == 0:
            raise DermbenchError(
                f"train.sampler={sampler}: no sample of {train.name!r} has a known {scheme} group"
            )
        keys = (
            codes[pool]
            if sampler == "sensitive"
            else train.labels[pool] * len(group_names(scheme)) + codes[pool]
        )
    else:
        raise ConfigError(f"train.sampler must be none, class, group or sensitive, got {sampler!r}")
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    weights = torch.from_numpy(1.0 / counts[inverse])
    return pool[torch.multinomial(weights, n, replacement=True, generator=gen).numpy()]


def make_optimizer(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    kind = cfg["optimizer"]
    if kind == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg["lr"],
            momentum=cfg["momentum"],
            nesterov=cfg["nesterov"] and cfg["momentum"] > 0,
            weight_decay=cfg["weight_decay"],
        )
    if kind == "adam":
        return torch.optim.Adam(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    raise ConfigError(f"train.optimizer must be sgd, adam or adamw, got {kind!r}")


def make_schedule(optimizer: torch.optim.Optimizer, cfg: dict) -> torch.optim.lr_scheduler.LRScheduler:
    kind = cfg["schedule"]
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, cfg["epochs"]))
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg["step_size"], gamma=cfg["gamma"])
    if kind == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    raise ConfigError(f"train.schedule must be cosine, step or none, got {kind!r}")


def _autocast(ctx: RunContext, cfg: dict):
    if ctx.device.type == "cuda" and cfg.get("amp", True):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(ctx.device.type, enabled=False)


def predict_proba(
    ctx: RunContext, model: nn.Module, split: Split, *, batch_size: int | None = None
) -> np.ndarray:
    """Softmax probabilities (n, K) for every sample of `split`, in order."""
    cfg = ctx.config["train"]
    batch_size = batch_size or max(cfg["batch_size"], 64)
    model.eval()
    norm = Normaliser(model, ctx.device, _channels_last(ctx, cfg), input_crop(ctx, cfg))
    outs = []
    with torch.no_grad(), _autocast(ctx, cfg):
        for start in range(0, len(split), batch_size):
            logits = model(norm(split.images[start : start + batch_size]))
            outs.append(F.softmax(logits.float(), dim=1).cpu())
    return torch.cat(outs).numpy().astype(np.float64) if outs else np.zeros((0, split.num_classes))


def input_crop(ctx: RunContext, cfg: dict) -> int | None:
    """The window the model sees under the `train` settings `cfg` (notredame: 112 of 128 px), or None."""
    augment = cfg.get("augment", "none")
    return (
        notredame.crop_size(augment, int(ctx.config["data"]["image_size"]))
        if augment == "notredame"
        else None
    )


def _channels_last(ctx: RunContext, cfg: dict) -> bool:
    return ctx.device.type == "cuda" and bool(cfg.get("channels_last", True))


def validation_score(metric: str, y: np.ndarray, prob: np.ndarray) -> float:
    """Higher is better: AUC (one-vs-rest macro for K > 2), accuracy, balanced accuracy or -loss."""
    pred = prob.argmax(1)
    if metric == "acc":
        return float((pred == y).mean())
    if metric == "bacc":
        return float(balanced_accuracy_score(y, pred))
    if metric == "loss":
        return float(np.log(np.clip(prob[np.arange(len(y)), y], 1e-12, 1)).mean())
    if metric == "auc":
        present = np.unique(y)
        if len(present) < 2:
            return float((pred == y).mean())
        if prob.shape[1] == 2:
            return float(roc_auc_score(y, prob[:, 1]))
        sub = prob[:, present] / prob[:, present].sum(1, keepdims=True)
        return float(roc_auc_score(y, sub, multi_class="ovr", labels=present))
    raise ConfigError(f"train.select_metric must be auc, acc, bacc or loss, got {metric!r}")


def train_model(
    ctx: RunContext,
    model: nn.Module,
    train: Split,
    val: Split,
    *,
    name: str = "erm",
    settings: dict | None = None,
    loss: TaskLoss | None = None,
    groups: str = "tone3",
    state: Stateful | None = None,
    extra_loss: ExtraLoss | None = None,
    after_step: AfterStep | None = None,
    checkpoint: str | None = None,
    **removed: object,
) -> nn.Module:
    """Train `model` on `train`, keep the epoch with the best validation score, return it.

    `settings` overrides keys of the config's `train` section for this call only (e.g. a
    method's retraining schedule); `name` keys the checkpoint so one run can train several
    models (teacher, student) and resume each.

    Extension points for methods: `loss(logits, batch)` computes the training loss instead of
    the configured one (`logits` are float32, `batch` a `Batch`); `groups` is the scheme of
    `batch.group` (tone3, tone2, fst or sex); `state` (state_dict/load_state_dict, holding only
    tensors and plain data) is checkpointed every epoch and restored on resume, so the method's
    running state continues exactly; `extra_loss(model, batch, logits)` is added to the loss;
    `after_step(model)` runs after every optimiser step. `checkpoint` names the checkpoint
    file and the once-per-run claim (default `name`): two models trained with the same batch
    streams in one run (the ERM models of the real and of the augmented training split) need two.
    """
    if removed:
        raise _keyword_error(removed)
    cfg = {**ctx.config["train"], **(settings or {})}
    claim = checkpoint or name
    if claim in ctx.trained:
        raise DermbenchError(
            f"train_model was called twice with name {name!r} in one run; give each training its own "
            "name, which keys its resume checkpoint"
        )
    ctx.trained.add(claim)
    if len(train) == 0:
        raise DermbenchError(f"training split {train.name!r} is empty")
    if len(val) == 0:
        raise DermbenchError(f"validation split {val.name!r} is empty; it is needed to choose the epoch")
    model.to(ctx.device)
    if _channels_last(ctx, cfg):
        model.to(memory_format=torch.channels_last)
    task_loss = loss if loss is not None else configured_loss(cfg, train.num_classes, ctx.device)
    optimizer = make_optimizer(model, cfg)
    schedule = make_schedule(optimizer, cfg)
    scaler = torch.amp.GradScaler(
        "cuda",
        enabled=ctx.device.type == "cuda" and cfg.get("amp", True) and not torch.cuda.is_bf16_supported(),
    )
    norm = Normaliser(model, ctx.device, _channels_last(ctx, cfg), input_crop(ctx, cfg))
    labels = torch.tensor(train.labels)
    group_ids = torch.tensor(group_codes(train, groups))
    if (loss is not None or extra_loss is not None) and not (group_ids >= 0).any():
        ctx.say(f"[yellow]warning[/]: training {name}: no training sample has a known {groups} group")
    if cfg["sampler"] in ("group", "sensitive") and (unknown := int((group_ids < 0).sum())):
        ctx.say(f"training {name}: the group sampler leaves out {unknown} sample(s) without a {groups} group")
    if state is not None:
        check_plain(state.state_dict(), f"training {name}: state.state_dict()")
    val_y = val.labels
    ckpt_path = ctx.work_dir / "checkpoints" / f"{claim}.pt"
    progress = {
        "epoch": 0,
        "best_score": -math.inf,
        "best_epoch": -1,
        "best_state": None,
        "history": [],
        "resumes": [],
    }
    # only a checkpoint that verifies is resumed from; a damaged one is set aside and named in the record
    payload, set_aside = read_resume_checkpoint(ckpt_path, aside_dir=ctx.work_dir / SET_ASIDE)
    for aside in set_aside:
        ctx.say(
            f"[yellow]checkpoint set aside[/]: {aside['why']}; it was moved to {aside['file']} and {name} "
            f"trains again from {aside['resumed_from']}"
        )
    if set_aside:
        ctx.record(
            name,
            {
                "checkpoints_set_aside": [
                    *ctx.records.get(name, {}).get("checkpoints_set_aside", []),
                    *set_aside,
                ]
            },
        )
    if payload is not None:
        progress = _restore(ckpt_path, payload, model, optimizer, schedule, scaler, state)
        progress.setdefault("resumes", []).append(
            {"epoch": progress["epoch"], "sha256": payload["checksum"]["sha256"]}
        )
        ctx.say(f"[cyan]resuming[/] {name} from its checkpoint after epoch {progress['epoch']}")
    epochs, bs = int(cfg["epochs"]), int(cfg["batch_size"])
    steps = math.ceil(len(train) / bs)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=ctx.console, transient=False, disable=not ctx.console.is_terminal) as bar:
        task = bar.add_task(
            f"train {name}", total=epochs * steps, completed=progress["epoch"] * steps, info=""
        )
        for epoch in range(progress["epoch"], epochs):
            gen = torch.Generator().manual_seed(seed_for(ctx.seed, f"{name}-epoch-{epoch}"))
            order = epoch_order(train, cfg["sampler"], gen, groups)
            model.train()
            running = 0.0
            for step in range(steps):
                idx = order[step * bs : (step + 1) * bs]
                if len(idx) == 0:
                    continue
                batch = Batch(
                    x=norm(train.images[idx], cfg["augment"], gen),
                    y=labels[idx].to(ctx.device),
                    index=torch.from_numpy(idx),
                    group=group_ids[idx].to(ctx.device),
                    scheme=groups,
                )
                with _autocast(ctx, cfg):
                    logits = model(batch.x)
                    value = task_loss(logits.float(), batch)
                    if loss is not None:
                        _check_scalar(value, f"training {name}: loss(logits, batch)")
                    if extra_loss is not None:
                        value = value + extra_loss(model, batch, logits)
                if not torch.isfinite(value):
                    raise DermbenchError(
                        f"training {name}: loss became {value.item()} at epoch {epoch + 1}, step {step + 1} "
                        f"(lr {optimizer.param_groups[0]['lr']:.3g}); lower train.lr, or check the inputs"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(value).backward()
                scaler.step(optimizer)
                scaler.update()
                if after_step is not None:
                    after_step(model)
                running += float(value.detach())
                bar.update(
                    task, advance=1, info=f"epoch {epoch + 1}/{epochs} loss {running / (step + 1):.4f}"
                )
            schedule.step()
            score = validation_score(cfg["select_metric"], val_y, predict_proba(ctx, model, val))
            progress["history"].append(
                {"epoch": epoch + 1, "loss": running / steps, f"val_{cfg['select_metric']}": score}
            )
            if score > progress["best_score"]:
                progress.update(
                    best_score=score,
                    best_epoch=epoch + 1,
                    best_state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                )
            progress["epoch"] = epoch + 1
            bar.update(task, info=f"epoch {epoch + 1}/{epochs} val {cfg['select_metric']} {score:.4f}")
            ctx.say(
                f"{name} epoch {epoch + 1}/{epochs}: loss "
                f"{running / steps:.4f}, val {cfg['select_metric']} {score:.4f}"
            )
            _save(ckpt_path, model, optimizer, schedule, scaler, progress, state, name)
    if progress["best_state"] is not None:
        model.load_state_dict(progress["best_state"])
    ctx.say(
        f"{name}: best val {cfg['select_metric']} "
        f"{progress['best_score']:.4f} at epoch {progress['best_epoch']}"
    )
    model.train_history = progress["history"]  # type: ignore[attr-defined]
    # every state this training resumed from matched its checksum (the ERM cache stores only such models)
    model.train_resumes = progress["resumes"]  # type: ignore[attr-defined]
    model.train_history_verified = True  # type: ignore[attr-defined]
    return model


#: the keywords train_model takes after (ctx, model, train, val)
KEYWORDS = ("name", "settings", "loss", "groups", "state", "extra_loss", "after_step", "checkpoint")
#: keywords it no longer takes, and what replaced them (docs/trainer.md)
REMOVED_KEYWORDS = {
    "loss_fn": "loss=, a function loss(logits, batch) returning the scalar loss (the labels are batch.y: "
    "loss=lambda logits, batch: criterion(logits, batch.y))",
}


def _keyword_error(given: dict) -> DermbenchError:
    key = next(iter(given))
    if key in REMOVED_KEYWORDS:
        return DermbenchError(f"train_model: the keyword {key}= was removed; use {REMOVED_KEYWORDS[key]}")
    guess = closest(key, KEYWORDS)
    hint = f"; did you mean {guess!r}?" if guess else ""
    return DermbenchError(
        f"train_model: unknown keyword {key!r}{hint} Its "
        f"keywords: {', '.join(KEYWORDS)} (see docs/trainer.md)"
    )


#: the folder (under the work dir) that damaged checkpoints are moved to, kept for inspection
SET_ASIDE = "set-aside"


def _check_scalar(value: object, where: str) -> None:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise DermbenchError(f"{where} must return a scalar tensor, got {shape}")


def _save(
    path, model, optimizer, schedule, scaler, progress: dict, state: Stateful | None, name: str
) -> None:
    method_state = None
    if state is not None:
        method_state = state.state_dict()
        check_plain(method_state, f"training {name}: state.state_dict()")
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "scaler": scaler.state_dict(),
            "state": progress,
            "method_state": method_state,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
    )


def _restore(path, payload: dict, model, optimizer, schedule, scaler, state: Stateful | None) -> dict:
    """Load a verified checkpoint's `payload` into the training objects; the progress it holds."""
    if state is not None and payload.get("method_state") is None:
        raise DermbenchError(
            f"checkpoint {path} holds no method state, but this training keeps one; "
            "delete it to train this model from scratch"
        )
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    schedule.load_state_dict(payload["schedule"])
    scaler.load_state_dict(payload["scaler"])
    if state is not None:
        state.load_state_dict(payload["method_state"])
    torch.set_rng_state(payload["torch_rng"])
    if payload.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["cuda_rng"])
    return copy.deepcopy(payload["state"])
