"""FEDD (Carrion & Norouzi, "FEDD - Fair, Efficient, and Diverse Diffusion-based Lesion Segmentation
and Malignancy Classification", MICCAI 2023): a frozen unconditional diffusion UNet as the feature
extractor, and a small MLP probe trained on its pooled decoder features.

What it does here (docs/fedd.md).
1. Backbone: `fedd.model`, a diffusers `UNet2DModel` (pixel space, unconditional) from a local
   folder or hub id, frozen (`dermbench.diffusion.pixel`). The paper's is the ImageNet-256
   unconditional ADM model (Dhariwal & Nichol): the paper profile's `model: adm-imagenet256-uncond`
   is the folder `dermbench fedd convert-adm` writes (`dermbench.methods.fedd.adm`, under
   $DERMBENCH_CACHE/models); without it the run stops naming the download and convert commands
   (docs/fedd.md, "The paper backbone: ADM"). `model: tiny`
   (the tiny profile) is the small unconditional pixel DDPM shipped in the package, pretrained
   outside every protocol split on SynthDerm scenes (`dermbench diffusion pretrain-base`), so the
   features come from a diffusion model that has learned skin images, as ADM learned ImageNet,
   and never saw a protocol image; the record's `methods.fedd.backbone.kind` says which.
2. Features (`dermbench.methods.fedd.features`): the image noised to step `t` with q(x_t|x_0) and a
   fixed noise image (`noise_seed`), one forward pass, the output of decoder block `block` (ADM's
   output-block numbering) captured by a forward hook, max-pooled to a `dim` (512) vector (spatial
   max-pool to a small grid, then 1D channel max-pool). Pooled features of every block at `t` are
   cached per (model, t, noise seed, images), so sweeps and reruns reuse them.
3. Probe: Linear(dim, 64) - BatchNorm - ReLU - Dropout(0.5) - Linear(64, 32) - BatchNorm - ReLU -
   Dropout(0.25) - Linear(32, 1), sigmoid output; BCE; Adam (lr 1e-3, weight decay 1e-5); one
   full-batch step per epoch (the paper's batch = the whole training subset) for at most
   `max_epochs` epochs, early stopping on the validation loss with `patience`; the weights of the
   best validation epoch are kept. The ReLU and the Adam learning rate are not stated in the paper
   (Keras defaults assumed).
4. `predict`: features of the split (cached) then the probe; (n, 2) probabilities.

Binary tasks only (the paper's malignancy task); others are a ConfigError. No fairness loss: the
paper's fairness comes from tone-balanced training subsets, the DDI data-efficiency protocol
(`data.options.fedd_fraction` on `ddi` and on `synthderm`, see datasets/fedd_data_efficiency.py).

Block and t: the paper picks one pair per data fraction from a sweep (blocks 4 / 6 / 12 / 14 at
5 / 10 / 15 / 20 % DDI; small t, exact values only in its Fig. 6). `block: auto` (paper profile)
takes that block for the run's `fedd_fraction` (6 without one) and `t: 50` (our reading of
"small t"). `dermbench fedd ablate` runs the sweep.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from dermbench.data.model import Split
from dermbench.errors import ConfigError, DermbenchError
from dermbench.hookspecs import CLASSIFIER_REPLACED, hookimpl
from dermbench.methods.fedd import adm, commands
from dermbench.methods.fedd.features import decoder_layers
from dermbench.methods.fedd.model import (
    PAPER,
    PAPER_AUC,
    TINY,
    Extractor,
    FeddModel,
    Probe,
    adm_unet,
    backbone,
    check_run_settings,
    check_settings,
    fraction_of,
    name,
    probe_probabilities,
    resolve_block,
    split_features,
    train_probe,
)
from dermbench.methods.fedd.segmentation import segmentation
from dermbench.seeds import seed_for
from dermbench.train.meta_models import BuiltModel, built

#: the paper(s) to cite for this method, as BibTeX (`dermbench cite`; docs/cite.md)
REFERENCES: tuple[str, ...] = (
    r"""@inproceedings{carrion2023fedd,
  author = {Carri{\'o}n, H{\'e}ctor and Norouzi, Narges},
  title = {{FEDD} -- Fair, Efficient, and Diverse Diffusion-based Lesion Segmentation and Malignancy Classification},
  booktitle = {Medical Image Computing and Computer Assisted Intervention -- MICCAI 2023},
  year = {2023},
}""",  # noqa: E501 (a BibTeX title stays on one line)
    # the frozen diffusion backbone (ADM) and the feature method FEDD builds on
    r"""@inproceedings{dhariwal2021diffusion,
  author = {Dhariwal, P. and Nichol, A.},
  title = {Diffusion Models Beat {GANs} on Image Synthesis},
  booktitle = {Advances in Neural Information Processing Systems},
  volume = {34},
  pages = {8780--8794},
  year = {2021},
}""",
    r"""@inproceedings{baranchuk2022label,
  author = {Baranchuk, D. and Rubachev, I. and Voynov, A. and Khrulkov, V. and Babenko, A.},
  title = {Label-Efficient Semantic Segmentation with Diffusion Models},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year = {2022},
}""",
)
#: predict uses the probe fit trains, never the harness's untrained backbone
predict_needs_fit = True


@hookimpl
def dermbench_method_defaults(profile: str) -> dict:
    if profile == "paper":
        return {name: copy.deepcopy(PAPER), "data": {"image_size": 256}}
    return {name: copy.deepcopy(TINY)}


@hookimpl
def dermbench_check_settings(config: dict, fetch: bool) -> list[dict]:
    return check_run_settings(config, fetch=fetch)


@hookimpl
def dermbench_classifier_role() -> str:
    """The probe is the run's classifier."""
    return CLASSIFIER_REPLACED


@hookimpl
def dermbench_models(config: dict) -> list[BuiltModel]:
    """The frozen backbone and the probe, for the dry run."""
    hp = config.get(name) or {}
    source = str(hp.get("model"))
    if source == adm.PAPER_MODEL:
        backbone_row = built(
            "fedd: backbone",
            "ADM ImageNet-256 unconditional as a diffusers UNet2DModel",
            f"converted {adm.CHECKPOINT} ({adm.default_folder()})",
            adm_unet,
            note="frozen",
        )
    else:
        backbone_row = BuiltModel(
            "fedd: backbone",
            source,
            "the tiny pixel base shipped in the package" if source == "tiny" else source,
            note="built when the run starts; frozen",
        )
    probe = built(
        "fedd: probe",
        "MLP",
        "random init",
        lambda: Probe(
            int(hp.get("dim", 512)), list(hp.get("hidden", [64, 32])), list(hp.get("dropout", [0.5, 0.25]))
        ),
    )
    return [backbone_row, probe]


@hookimpl
def fit(ctx, model, train: Split, val: Split) -> FeddModel:
    settings = check_settings(ctx.hparams(name))
    if train.num_classes != 2:
        raise ConfigError(
            f"{name} is a binary (malignancy) probe; task {ctx.config.get('task')!r} has "
            f"{train.num_classes} classes (use task malignant)"
        )
    unet, size = backbone(ctx, settings, train)
    layers = decoder_layers(unet.unet)
    block = resolve_block(settings["block"], ctx.config)
    if not 0 <= block < len(layers):
        raise ConfigError(f"{name}.block={block}: this UNet has decoder blocks 0..{len(layers) - 1}")
    extractor = Extractor(
        unet,
        block=block,
        t=int(settings["t"]),
        noise_seed=int(settings["noise_seed"]),
        dim=int(settings["dim"]),
        image_size=size,
        batch_size=int(settings["feature_batch_size"]),
    )
    train_x, train_entry = split_features(ctx, extractor, train)
    val_x, val_entry = split_features(ctx, extractor, val)
    probe, summary = train_probe(
        train_x, train.labels, val_x, val.labels, settings=settings, seed=seed_for(ctx.seed, f"{name}-probe")
    )
    ctx.say(
        f"{name}: probe on decoder block {block} ({layers[block][0]}) at t={extractor.t}: best validation "
        "loss "
        f"{summary['best_val_loss']:.4f} at epoch {summary['best_epoch']} of {summary['epochs_run']}"
    )
    fitted = FeddModel(probe, extractor)
    fitted.feature_entries = {"train": train_entry, "val": val_entry}
    record: dict[str, Any] = {
        "backbone": unet.source,
        "block": block,
        "layer": layers[block][0],
        "decoder_blocks": len(layers),
        "t": extractor.t,
        "noise_seed": extractor.noise_seed,
        "feature_dim": extractor.dim,
        "image_size": size,
        "settings": settings,
        "probe": summary,
        "train_cells": {
            f"{tone}/{label}": int(n)
            for (tone, label), n in train.table.groupby(["tone3", "label"]).size().items()
        }
        if "tone3" in train.table
        else None,
        "features": dict(fitted.feature_entries),
    }
    fraction = fraction_of(ctx.config)
    if fraction is not None:
        record["fedd_fraction"] = fraction
        if ctx.config.get("dataset") == "ddi" and fraction in PAPER_AUC:
            record["published"] = {
                "roc_auc": PAPER_AUC[fraction],
                "test_set": "ddi (30 images; our reading: the paper's "
                "accuracies on the remaining images are its Table 3)",
                "source": "FEDD supplementary Fig. 2 (as read from the author's thesis chapter; "
                "the main text gives no number)",
            }
    if settings["segmentation"].get("enabled"):
        record.update(segmentation(ctx, settings, unet, size, seed_for(ctx.seed, f"{name}-segmentation")))
    ctx.record(name, record)
    return fitted


@hookimpl
def predict(ctx, model, split: Split) -> np.ndarray:
    if not isinstance(model, FeddModel):
        raise DermbenchError(
            f"{name}: predict needs the model fit returned (a FeddModel), got {type(model).__name__}"
        )
    features, entry = split_features(ctx, model.extractor, split)
    model.feature_entries[split.name] = entry
    ctx.record(name, {"features": dict(model.feature_entries)})
    return probe_probabilities(model.probe, features)


@hookimpl
def dermbench_add_commands(subparsers) -> None:
    """`dermbench fedd ablate|curve|convert-adm` (methods/fedd/commands.py)."""
    commands.register(subparsers)
