"""The tone detector: a tone3 classifier trained on annotated tones, its scores and its record."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from rich.console import Console
from safetensors import SafetensorError
from safetensors.torch import load_file
from sklearn.metrics import confusion_matrix, f1_score

from dermbench import __version__
from dermbench.context import RunContext, choose_device
from dermbench.data.generated import IMAGES, MANIFEST, generated_split, read_images, read_manifest
from dermbench.data.groups import TONE3, add_group_columns, tone3_from_fst
from dermbench.data.metadata import sha256_file
from dermbench.data.model import Split, content_digest
from dermbench.data.pool import DatasetPool
from dermbench.errors import ConfigError, DataError, DermbenchError
from dermbench.files import read_json, write_json
from dermbench.train.models import create_backbone
from dermbench.train.trainer import predict_proba, train_model
from dermbench.train.weights import save_weights as _save_weights


def known_fst(table: pd.DataFrame) -> np.ndarray:
    """Bool per row: fst is one of 1..6."""
    if "fst" not in table:
        return np.zeros(len(table), dtype=bool)
    return pd.to_numeric(table["fst"], errors="coerce").isin([1, 2, 3, 4, 5, 6]).to_numpy()


def annotated_tone3(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """(row positions, tone3 index 0/1/2) of the rows whose tone3 a person annotated."""
    table = add_group_columns(split.table)
    source = (
        table["tone_source"].astype(object)
        if "tone_source" in table
        else pd.Series("annotated", index=table.index)
    )
    ok = table["tone3"].isin(TONE3).to_numpy() & (source == "annotated").to_numpy()
    rows = np.flatnonzero(ok)
    return rows, table["tone3"].iloc[rows].map({t: i for i, t in enumerate(TONE3)}).to_numpy(dtype=np.int64)


def tone_split(
    split: Split, *, name: str | None = None, label_sources: tuple[str, ...] = ("annotated",)
) -> tuple[Split, dict[str, int]]:
    """A split for training or scoring the detector: label = tone3 index, classes A/B/C.

    Only rows whose `tone_source` is in `label_sources` are kept: by default those a person
    annotated (training on ITA or detector output would be circular). A generated set passes
    ("generated",): its tone is the one the generator was asked for, a label by construction.
    The others are counted by reason.
    """
    table = add_group_columns(split.table)
    source = (
        table["tone_source"].astype(object)
        if "tone_source" in table
        else pd.Series("annotated", index=table.index)
    )
    has_tone = table["tone3"].isin(TONE3).to_numpy()
    labelled = source.isin(label_sources).to_numpy()
    excluded = {}
    if (~has_tone).sum():
        excluded["unknown tone"] = int((~has_tone).sum())
    if (has_tone & ~labelled).sum():
        excluded["tone not annotated (estimated)"] = int((has_tone & ~labelled).sum())
    keep = np.flatnonzero(has_tone & labelled)
    split = replace(split, table=table)
    sub = split if len(keep) == len(split) else split.subset(keep)  # a full memory-mapped set stays on disk
    labels = sub.table["tone3"].map({t: i for i, t in enumerate(TONE3)}).to_numpy(dtype=np.int64)
    tab = sub.table.assign(label=labels)
    out = replace(
        sub,
        name=name or f"{split.name}-tone3",
        table=tab,
        classes=TONE3,
        meta={**split.meta, "excluded": {**split.meta.get("excluded", {}), **excluded}},
    )
    return out, excluded


def per_tone_n(split: Split) -> dict[str, int]:
    """Rows per tone3 group of a tone split (label = tone3 index)."""
    counts = np.bincount(split.labels, minlength=len(TONE3))
    return {t: int(counts[k]) for k, t in enumerate(TONE3)}


def tone_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Accuracy, balanced accuracy, per-tone F1 and support, and the confusion matrix (rows =
    truth A/B/C). A tone absent from the truth gets F1 None: it cannot be scored."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if len(y_true) == 0:
        raise DataError("cannot score the tone detector on zero samples with annotated tone")
    labels = list(range(len(TONE3)))
    f1 = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    support = np.bincount(y_true, minlength=len(TONE3))
    recall = [float((y_pred[y_true == k] == k).mean()) for k in labels if support[k]]
    return {
        "n": int(len(y_true)),
        "accuracy": float((y_true == y_pred).mean()),
        "balanced_accuracy": float(np.mean(recall)),
        "per_tone_f1": {t: (float(f1[k]) if support[k] else None) for k, t in enumerate(TONE3)},
        "per_tone_n": {t: int(support[k]) for k, t in enumerate(TONE3)},
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


# ---------------------------------------------------------------------------------------
# The tone detector
# ---------------------------------------------------------------------------------------
RESIZE_CHUNK = 64  # images resized per torch call, to bound memory
DETECTOR_FILE = "detector.json"
WEIGHTS_FILE = "model.safetensors"
#: settings the detector is trained with unless --set overrides them: focal loss with alpha
#: weighting the rarer darker tones (A 0.3, B 0.4, C 0.9) and gamma 2; the epoch is chosen by
#: balanced accuracy, since plain accuracy rewards ignoring the rare tone C
DETECTOR_SETTINGS = (
    "train.loss=focal",
    "train.focal_alpha=[0.3, 0.4, 0.9]",
    "train.focal_gamma=2.0",
    "train.select_metric=bacc",
)
#: DermDiff's detector (arXiv 2503.17536, section 3.2): ResNeXt-101, the same focal loss, SGD with momentum
#: (0.9: the paper gives no value), lr 3e-4, batch 64.
#: What the paper leaves open (epochs, schedule, weight decay, init) stays at the run defaults.
DERMDIFF_SETTINGS = (
    "model.backbone=resnext101_32x8d",
    *DETECTOR_SETTINGS,
    "train.optimizer=sgd",
    "train.momentum=0.9",
    "train.lr=3e-4",
    "train.batch_size=64",
)
#: `dermbench tone train --recipe NAME`: the settings applied before --backbone, --epochs and --set
RECIPES = {"default": DETECTOR_SETTINGS, "dermdiff": DERMDIFF_SETTINGS}
_REQUIRED_INFO = (
    "backbone",
    "image_size",
    "classes",
    "trained_on",
    "evaluated_on",
    "accuracy",
    "per_tone_f1",
    "n",
)


@dataclass
class ToneDetector:
    """A trained tone3 classifier and its record (detector.json)."""

    path: Path
    info: dict
    model: object  # torch.nn.Module

    def predict_proba(self, images: np.ndarray, *, device=None, batch_size: int = 64) -> np.ndarray:
        """(n, 3) probabilities of A/B/C; images are resized to the detector's size if needed."""
        images = resize_images(np.asarray(images), int(self.info["image_size"]))
        dev = _device(device)
        self.model.to(dev)
        ctx = RunContext(
            config={"seed": 0, "train": {"batch_size": batch_size, "amp": True, "channels_last": True}},
            device=dev,
            work_dir=self.path,
            cache_dir=self.path,
        )
        split = Split(name="tone", table=pd.DataFrame(index=range(len(images))), images=images, classes=TONE3)
        return predict_proba(ctx, self.model, split, batch_size=batch_size)

    def summary(self) -> dict:
        """What a report needs to judge the detector's tones."""
        keys = (
            "backbone",
            "image_size",
            "trained_on",
            "synthetic",
            "evaluated_on",
            "n",
            "accuracy",
            "balanced_accuracy",
            "per_tone_f1",
            "per_tone_n",
            "created",
        )
        return {"path": str(self.path), **{k: self.info.get(k) for k in keys}}


def _device(device):

    if isinstance(device, torch.device):
        return device
    return choose_device(device or "auto")


def resize_images(images: np.ndarray, size: int, *, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 (n, H, W, 3) resized to (n, size, size, 3) with antialiased bilinear filtering.

    `out` (e.g. a memory-mapped file) receives the result, so a large generated set is never
    held in memory whole; images already at `size` are returned as they are.
    """
    if images.shape[1:3] == (size, size):
        return images
    if out is None:
        out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for start in range(0, len(images), RESIZE_CHUNK):
        chunk = np.array(
            images[start : start + RESIZE_CHUNK]
        )  # a writable copy: the input may be a read-only memmap
        x = torch.from_numpy(chunk).permute(0, 3, 1, 2).float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + RESIZE_CHUNK] = (
            y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        )
    return out


def detector_fingerprint(path: Path | str | None) -> dict:
    """What a detector is (its record and weights, not where they live), with its `digest`: the
    detector assigns the tone groups of every unannotated test row, so a run reads it as data
    and a retrained detector in the same folder is another run."""
    read_detector_info(path)  # a missing or bad folder is an error naming it
    folder = Path(path).expanduser()
    content = {
        "kind": "tone detector",
        **{name: sha256_file(folder / name) for name in (DETECTOR_FILE, WEIGHTS_FILE)},
    }
    return {**content, "digest": content_digest(content)}


def read_detector_info(path: Path | str | None) -> dict:
    """detector.json of a detector folder, checked; a clear error for a missing or bad folder."""
    if path is None or str(path) == "":
        raise ConfigError(
            "tone source 'detector' needs a trained tone detector: pass its folder (made by "
            "`dermbench tone train`), or use tone source 'ita'"
        )
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"tone detector folder {folder} does not exist (train one with `dermbench tone train`)"
        )
    info_path, weights = folder / DETECTOR_FILE, folder / WEIGHTS_FILE
    for f in (info_path, weights):
        if not f.is_file():
            raise DataError(
                f"{folder} is not a tone detector: {f.name} is missing (made by `dermbench tone train`)"
            )
    info = read_json(info_path)
    if not isinstance(info, dict):
        raise DataError(f"tone detector record {info_path} must hold a JSON object")
    missing = [k for k in _REQUIRED_INFO if k not in info]
    if missing:
        raise DataError(f"tone detector record {info_path} lacks {', '.join(missing)}")
    if list(info["classes"]) != list(TONE3):
        raise DataError(f"tone detector record {info_path}: classes {info['classes']} are not {list(TONE3)}")
    return info


def load_detector(path: Path | str | None) -> ToneDetector:
    """The detector in folder `path` (detector.json + model.safetensors), on the CPU."""

    info = read_detector_info(path)
    folder = Path(path).expanduser()
    model = create_backbone(
        info["backbone"], num_classes=len(TONE3), pretrained=False, image_size=info.get("image_size")
    )
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise DataError(
            f"tone detector weights {folder / WEIGHTS_FILE} do not fit backbone {info['backbone']!r}: {exc}"
        ) from exc
    model.eval()
    return ToneDetector(path=folder, info=info, model=model)


def _carve_val(ctx, train: Split, fraction: float = 0.15) -> tuple[Split, Split]:
    """A seeded, tone-stratified validation part of `train` for datasets without a val split."""
    rng = ctx.rng("tone-detector-val")
    val_rows = []
    for k in range(len(TONE3)):
        rows = np.flatnonzero(train.labels == k)
        take = int(round(len(rows) * fraction))
        val_rows.extend(rng.permutation(rows)[:take].tolist())
    is_val = np.zeros(len(train), dtype=bool)
    is_val[val_rows] = True
    if is_val.all() or not is_val.any():
        raise DataError(f"{train.name!r}: too few samples with annotated tone to hold out a validation part")
    return train.subset(~is_val), replace(train.subset(is_val), name=f"{train.name}-heldout")


# ---------------------------------------------------------------------------------------
# Generated sets as extra training samples (`dermbench tone train --synthetic DIR`)
# ---------------------------------------------------------------------------------------
@dataclass
class SyntheticSet:
    """A generated set read for detector training: its tone split (at the generated size) and
    its entry in detector.json."""

    folder: Path
    split: Split
    entry: dict


def read_synthetic(folder: Path | str, *, classes: tuple[str, ...]) -> SyntheticSet:
    """The generated set in `folder` (data.generated format) as detector training samples
    labelled with their requested tone3.

    A set that cannot be used whole is a DataError naming the folder: dropping rows would
    change the training mix unseen. `classes` are the training task's: a sample of another
    task's class means the set was made for something else.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(
            f"synthetic set {folder} is not a folder (expected the {IMAGES} and {MANIFEST} of a generation)"
        )
    images, manifest = read_images(folder), read_manifest(folder)
    _check_requested_tones(manifest, folder / MANIFEST)
    try:
        generated = generated_split(images, manifest, classes=classes, name=folder.name)
    except DataError as exc:
        raise DataError(f"synthetic set {folder}: {exc}") from exc
    split, excluded = tone_split(generated, name=f"synthetic:{folder.name}", label_sources=("generated",))
    if excluded:
        raise DataError(
            f"synthetic set {folder}: rows without a requested tone ({excluded}); "
            "every row needs tone3 A/B/C or fst 1-6"
        )
    entry = {
        "path": str(folder.resolve()),
        "n": len(split),
        "per_tone_n": per_tone_n(split),
        "manifest_sha256": sha256_file(folder / MANIFEST),
        "image_size": list(images.shape[1:3]),
    }
    return SyntheticSet(folder=folder, split=split, entry=entry)


def _check_requested_tones(manifest: pd.DataFrame, path: Path) -> None:
    """Each row's requested tone must name one tone3 group: tone3 among A/B/C, fst among 1-6,
    and the two agreeing where both are given."""
    tone3 = manifest["tone3"].where(manifest["tone3"] != "", None)
    fst, from_fst = manifest["fst"], tone3_from_fst(manifest["fst"])
    bad = sorted(set(tone3.dropna()) - set(TONE3))
    if bad:
        raise DataError(f"{path}: tone3 value(s) {bad} are not among {list(TONE3)}")
    bad_fst = fst.notna() & from_fst.isna()
    if bad_fst.any():
        raise DataError(
            f"{path}: fst value(s) {sorted(map(str, fst[bad_fst].unique()))} are not Fitzpatrick types 1-6"
        )
    clash = tone3.notna() & from_fst.notna() & (tone3 != from_fst)
    if clash.any():
        row = int(np.flatnonzero(clash.to_numpy())[0])
        raise DataError(
            f"{path}: {int(clash.sum())} row(s) ask for a tone3 that contradicts their fst (first: "
            f"sample_id {manifest['sample_id'].iloc[row]}, fst {fst.iloc[row]:g}, tone3 {tone3.iloc[row]})"
        )


def _at_size(sets: list[SyntheticSet], size: int, work: Path) -> list[Split]:
    """The sets' splits at the detector's image size; a resized set is written to a memory-mapped
    file in `work` (deleted with it) instead of being held in memory."""
    out = []
    for k, synthetic in enumerate(sets):
        images = synthetic.split.images
        if images.shape[1:3] != (size, size):
            target = work / "synthetic" / f"{k}-{synthetic.folder.name}-{size}px.npy"
            target.parent.mkdir(parents=True, exist_ok=True)
            mapped = np.lib.format.open_memmap(
                target, mode="w+", dtype=np.uint8, shape=(len(images), size, size, 3)
            )
            images = resize_images(images, size, out=mapped)
        out.append(replace(synthetic.split, images=images))
    return out


def _distinct(sets: list[SyntheticSet]) -> list[SyntheticSet]:
    """The sets, refusing one given twice (its samples would count double)."""
    seen: set[str] = set()
    for synthetic in sets:
        if synthetic.entry["path"] in seen:
            raise ConfigError(f"synthetic set {synthetic.folder} is given twice")
        seen.add(synthetic.entry["path"])
    return sets


def _claim_work_dir(work: Path, settings: dict, *, force: bool) -> None:
    """Resume an interrupted training only if it had the same settings; --force starts over."""
    stamp = work / "settings.json"
    if force:
        shutil.rmtree(work, ignore_errors=True)
    elif stamp.exists():
        try:
            before = json.loads(stamp.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            before = None
        if before != json.loads(json.dumps(settings, default=str)):
            raise DermbenchError(
                f"{work} holds an interrupted detector training with other settings; rerun with those "
                "settings to resume it, or pass --force to start over"
            )
    write_json(stamp, json.loads(json.dumps(settings, default=str)))


@dataclass
class DetectorData:
    """The detector's splits and what detector.json says about them (`record`)."""

    train: Split  # real training rows plus every synthetic set
    val: Split
    evaluation: Split
    record: dict


def detector_data(
    ctx: RunContext, pool: DatasetPool, *, eval_dataset: str, eval_split: str, sets: list[SyntheticSet]
) -> DetectorData:
    """Training, validation and evaluation splits of tone3 labels for the detector.

    Synthetic samples join the training split only, after validation is carved from the real
    rows, so validation and evaluation stay real and annotated.
    """
    cfg, name = ctx.config, ctx.config["dataset"]
    evaluation, eval_excluded = tone_split(
        pool.load(eval_dataset, eval_split), name=f"{eval_dataset}-{eval_split}"
    )
    if len(evaluation) == 0:
        raise DataError(
            f"{eval_dataset} split {eval_split!r} has no sample "
            "with an annotated tone to score the detector on"
        )
    real, train_excluded = tone_split(pool.load(name, "train"), name=f"{name}-train")
    if len(real) == 0:
        raise DataError(
            f"dataset {name!r} has no training sample with an annotated Fitzpatrick type or tone3"
        )
    if "val" in set(pool.get(name).table(cfg["task"])["split"]):
        val, val_excluded = tone_split(pool.load(name, "val"), name=f"{name}-val")
        val_from = f"{name}:val"
    else:
        real, val = _carve_val(ctx, real)
        val_excluded, val_from = {}, f"{name}:train (15 % held out, tone-stratified)"
    size = int(cfg["data"]["image_size"])
    train = (
        Split.concat(f"{name}-train+synthetic", [real, *_at_size(sets, size, ctx.work_dir)]) if sets else real
    )
    record = {
        "train": {
            "split": f"{name}:train",
            "n": len(train),
            "n_real": len(real),
            "n_synthetic": len(train) - len(real),
            "per_tone_n": per_tone_n(train),
            "excluded": train_excluded,
        },
        "val": {"split": val_from, "n": len(val), "excluded": val_excluded},
        "eval": {"split": f"{eval_dataset}:{eval_split}", "n": len(evaluation), "excluded": eval_excluded},
    }
    return DetectorData(train=train, val=val, evaluation=evaluation, record=record)


def train_detector(
    cfg: dict,
    *,
    out: Path,
    eval_dataset: str,
    eval_split: str = "test",
    synthetic: tuple[Path | str, ...] = (),
    recipe: str = "default",
    force: bool = False,
    local: tuple[str, ...] = (),
    console=None,
) -> dict:
    """Train a tone3 detector on cfg["dataset"] (annotated FST) and score it on `eval_dataset`.

    Each folder in `synthetic` is a generated set whose samples join the training split only,
    labelled with their requested tone (see detector_data). `recipe` names the settings cfg was
    resolved from, for the record. Writes out/model.safetensors and out/detector.json (with
    accuracy and per-tone F1 on the evaluation set and the synthetic sets used) and returns the
    record. A killed run resumes from out/work/.
    """

    out = Path(out)
    name = cfg["dataset"]
    if eval_dataset == name and eval_split in ("train", "val"):
        raise ConfigError(f"the detector cannot be scored on {name}'s {eval_split!r} split: it trains on it")
    if (out / DETECTOR_FILE).exists() and not force:
        raise DermbenchError(
            f"{out} already holds a tone detector; pass --force to replace it, or choose --out"
        )
    pool = DatasetPool(cfg, local)
    sets = _distinct(
        [read_synthetic(folder, classes=pool.get(name).classes(cfg["task"])) for folder in synthetic]
    )
    _claim_work_dir(
        out / "work",
        {"config": cfg, "eval": [eval_dataset, eval_split], "synthetic": [s.entry for s in sets]},
        force=force,
    )
    ctx = RunContext(
        config=cfg,
        device=choose_device(cfg["device"]),
        work_dir=out / "work",
        cache_dir=out / "work" / "cache",
        console=console or Console(),
    )
    data = detector_data(ctx, pool, eval_dataset=eval_dataset, eval_split=eval_split, sets=sets)
    torch.manual_seed(cfg["seed"])
    trained = data.record["train"]
    added = f" + {trained['n_synthetic']} synthetic" if sets else ""
    ctx.say(
        f"training the tone detector ({cfg['model']['backbone']}, {cfg['data']['image_size']} px) on "
        f"{trained['n_real']} {name} images{added} (per tone {trained['per_tone_n']}); excluded "
        f"{trained['excluded'] or 'none'}"
    )
    model = ctx.create_model(len(TONE3), seed_name="tone-detector-init")
    model = train_model(ctx, model, data.train, data.val, name="tone-detector")
    val_scores = tone_scores(data.val.labels, predict_proba(ctx, model, data.val).argmax(1))
    scores = tone_scores(data.evaluation.labels, predict_proba(ctx, model, data.evaluation).argmax(1))

    t = cfg["train"]
    info = {
        "backbone": cfg["model"]["backbone"],
        "image_size": int(cfg["data"]["image_size"]),
        "classes": list(TONE3),
        "trained_on": name,
        "evaluated_on": f"{eval_dataset}:{eval_split}",
        **{
            k: scores[k]
            for k in ("n", "accuracy", "balanced_accuracy", "per_tone_f1", "per_tone_n", "confusion")
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "validation": {"split": data.record["val"]["split"], **val_scores},
        "synthetic": [s.entry for s in sets],
        "data": data.record,
        "training": {
            "recipe": recipe,
            "epochs": t["epochs"],
            "seed": cfg["seed"],
            "pretrained": cfg["model"]["pretrained"],
            "loss": t["loss"],
            "focal_alpha": t["focal_alpha"],
            "focal_gamma": t["focal_gamma"],
            "select_metric": t["select_metric"],
            "optimizer": t["optimizer"],
            "lr": t["lr"],
            "momentum": t["momentum"] if t["optimizer"] == "sgd" else None,
            "batch_size": t["batch_size"],
            "history": getattr(model, "train_history", None),
        },
        "dermbench": __version__,
    }
    _save_weights(model, out / WEIGHTS_FILE)
    write_json(out / DETECTOR_FILE, info)
    shutil.rmtree(out / "work", ignore_errors=True)
    ctx.say(
        f"tone detector saved in {out}: accuracy {scores['accuracy']:.3f} on {info['evaluated_on']} "
        f"(n={scores['n']}), F1 " + ", ".join(f"{k} {_fmt(v)}" for k, v in scores["per_tone_f1"].items())
    )
    return info


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"
