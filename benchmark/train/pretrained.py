"""The shared ERM starting point: a content-addressed cache of trained ERM models.

The ERM baseline's fit, and FairPrune, FairQuantize and MFD, which start from a trained ERM
model, all take it from here. Training it is most of a run's cost, so it is trained once per
(model settings, training settings, seed, device type, training and validation data) and kept
under the cache root (`$DERMBENCH_CACHE/erm`, default `~/.cache/dermbench/erm`): the second run
on the same data and seed loads it (`--force` redoes a run, not its cached ERM model; delete
the entry, named in the record, to retrain it).

The model is trained by the ordinary trainer under the name "erm", the name the ERM baseline's
own fit uses, so its batch order and augmentation streams are those of the ERM baseline: the
cached model is the model of the `erm` run with the same config, and a method's gain over the
ERM row of a leaderboard is measured from the very model it started from.

The key hashes every setting that changes the model (`model` and `train` sections, task, seed,
device type, class names) and the data itself: each split's sample ids, labels and group columns
and the bytes of its images (so a training split pooled with another method's synthetic samples
is other data). An entry is a folder with `model.safetensors` and `entry.json` (the key material,
the weights' SHA-256, the validation history). It is written into a temporary folder and renamed
into place, under a lock, so two runs that need the same model train it once. An entry that does
not verify (missing or unreadable file, checksum or parameter mismatch) is rebuilt, never trusted,
and the record says why. Only a model whose whole training history verified is stored: every
checkpoint its training resumed from matched its checksum (entry.json: `history_verified`, and the
`resumes` with each state's checksum); an entry without that mark (stored before checkpoints
carried checksums) is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from dermbench.data.metadata import sha256_file
from dermbench.data.model import Split
from dermbench.errors import DermbenchError
from dermbench.files import exclusive_lock, make_dirs, read_json, storage_errors, write_json
from dermbench.seeds import seed_for
from dermbench.train.trainer import train_model
from dermbench.train.weights import save_weights

if TYPE_CHECKING:  # the context sits above the trainer; it is only named in annotations
    from dermbench.context import RunContext

#: bump when what an entry holds changes, so older entries are not reused
FORMAT = 1
#: the trainer name of the ERM model (the ERM baseline's own fit uses it too)
ERM_NAME = "erm"
WEIGHTS, ENTRY = "model.safetensors", "entry.json"
#: split table columns that change what the trainer does with a sample
SPLIT_COLUMNS = ("sample_id", "label", "tone3", "tone2", "fst", "sex", "tone_source")
_ROWS_PER_READ = 512


def erm_cache_root() -> Path:
    """`$DERMBENCH_CACHE/erm`, else `~/.cache/dermbench/erm`."""
    env = os.environ.get("DERMBENCH_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "dermbench"
    return base / "erm"


def split_digest(split: Split) -> str:
    """SHA-256 of what a split gives a trainer: its table's identity, label and group columns and
    its pixels (read in blocks, so a memory-mapped split is not loaded at once)."""
    digest = hashlib.sha256()
    table = split.table[[c for c in SPLIT_COLUMNS if c in split.table]]
    digest.update(table.to_csv(index=False).encode("utf-8"))
    digest.update(repr((tuple(split.images.shape), split.classes)).encode("utf-8"))
    for start in range(0, len(split), _ROWS_PER_READ):
        digest.update(np.ascontiguousarray(split.images[start : start + _ROWS_PER_READ]).tobytes())
    return digest.hexdigest()


def key_material(ctx: RunContext, train: Split, val: Split) -> dict[str, Any]:
    cfg = ctx.config
    return {
        "format": FORMAT,
        "model": cfg["model"],
        "train": cfg["train"],
        "task": cfg["task"],
        "seed": cfg["seed"],
        "device": ctx.device.type,
        "classes": list(train.classes),
        "train_data": split_digest(train),
        "val_data": split_digest(val),
    }


def cache_key(material: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:20]


def pretrained_erm(ctx: RunContext, train: Split, val: Split) -> nn.Module:
    """The ERM model for this run's settings, seed and data: loaded from the cache, or trained
    and stored. It is built here from the run's own initialisation (`ctx.create_model`, seed
    "model-init", as the runner builds the ERM baseline's), never from a caller's weights, which
    the key does not cover. Records the entry under `methods.erm.checkpoint` in the run record.
    Torch's global RNG is reseeded afterwards, so what follows does not depend on whether the
    entry was found."""
    model = ctx.create_model(train.num_classes)
    material = key_material(ctx, train, val)
    key = cache_key(material)
    entry = erm_cache_root() / key
    info: dict[str, Any] = {"key": key, "path": str(entry)}
    with exclusive_lock(
        entry.with_name(f"{key}.lock"),
        on_wait=lambda pid: ctx.say(f"waiting for process {pid}, which is training ERM model {key}"),
    ):
        problem = _verify(entry, model, material)
        if problem is None:
            ctx.say(f"[green]ERM model found in the cache[/]: {entry}")
            info["hit"] = True
        else:
            if entry.exists():
                ctx.say(f"[yellow]cached ERM model {entry} is not usable ({problem}); training it again[/]")
                info["rebuilt_because"] = problem
                shutil.rmtree(entry, ignore_errors=True)
            ctx.say(f"training the ERM model (cached afterwards as {entry})")
            # the batch streams of the ERM baseline ("erm"); a checkpoint per entry, because a
            # diffusion run trains two (on the real split for its quality metrics, and on real + synthetic)
            model = train_model(ctx, model, train, val, name=ERM_NAME, checkpoint=f"{ERM_NAME}-{key}")
            if getattr(model, "train_history_verified", False) is not True:
                raise DermbenchError(
                    f"the ERM model {key} was trained from a state that was not verified; "
                    "it is not stored in the ERM cache"
                )
            _store(
                entry,
                model,
                material,
                getattr(model, "train_history", None),
                getattr(model, "train_resumes", []),
            )
            info["hit"] = False
        meta = read_json(entry / ENTRY)  # read under the lock: what was verified or just stored
    info["sha256"] = meta["sha256"]
    if info["hit"]:
        model.train_history = meta.get("history")  # type: ignore[attr-defined]
    ctx.record("erm", {"checkpoint": info})
    torch.manual_seed(seed_for(ctx.seed, "after-erm"))
    model.to(ctx.device)
    return model


def _verify(entry: Path, model: nn.Module, material: dict) -> str | None:
    """None when `entry` holds this model, else what is wrong (and it is loaded into `model`)."""
    if not entry.is_dir():
        return "absent"
    try:
        meta = read_json(entry / ENTRY)
        if meta.get("material") != json.loads(json.dumps(material, default=str)):
            return "its entry.json describes other settings or data"
        if meta.get("history_verified") is not True:
            return (
                "its training history is not marked verified (stored before checkpoints carried checksums), "
                "so it may have resumed from a damaged checkpoint"
            )
        weights = entry / WEIGHTS
        if sha256_file(weights) != meta.get("sha256"):
            return f"{WEIGHTS} does not match the checksum in {ENTRY}"
        state = load_file(str(weights))
        model.load_state_dict(state, strict=True)
    except (
        DermbenchError,
        OSError,
        RuntimeError,
        ValueError,
        KeyError,
        AttributeError,
        SafetensorError,
    ) as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def _store(entry: Path, model: nn.Module, material: dict, history: Any, resumes: list) -> None:
    temporary = entry.with_name(f".tmp-{entry.name}-{uuid.uuid4().hex[:8]}")
    with storage_errors(entry.parent):
        make_dirs(temporary)
        save_weights(model, temporary / WEIGHTS)
        write_json(
            temporary / ENTRY,
            {
                "material": material,
                "sha256": sha256_file(temporary / WEIGHTS),
                "history": history,
                "history_verified": True,
                "resumes": resumes,
            },
        )
        os.replace(temporary, entry)
