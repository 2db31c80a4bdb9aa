"""Majority-to-minority augmentation (Wang, Chung, Ding, Hamm; ISIC workshop at MICCAI 2024):
translate training images, mostly of light skin, to dark skin with a Stable Diffusion model
taught the conditions (Textual Inversion) and the tone-aware captions (LoRA), and train the
ordinary classifier on the real images plus the translations.

Tone groups (the paper's): light = FST I-II (majority), dark = FST V-VI (minority); FST III-IV
and unknown tones take no part in the augmentation (counted in the record); the classifier still
trains on every real image of the split (the named protocols restrict the split itself).

Stages, each switchable (the paper's Table 5 ablation):
1. Textual Inversion (`textual_inversion`): one new token per condition ("{first 3 letters}-class",
   e.g. "mal-class"), initialised from "skin", learned from that condition's source images with
   "An image of {token}" (the paper's template; the authors' code used object templates such as
   "a photo of a {}"). Only the new embedding rows change.
2. LoRA (`lora`): rank 8, alpha 8 adapters on the UNet attention projections (to_q, to_k, to_v,
   to_out.0), trained with "An image of {concept} on the skin of {a very light-skinned | a
   light-skinned | a dark-skinned | a very dark-skinned} individual" (FST 1/2/5/6), where
   {concept} is the learned token, or the condition's name without Textual Inversion.
3. Translation (`mode: img2img`): every source image becomes `per_image` images (paper 5) with
   its prompt's tone set to dark: a random choice of `target_fst` (5 or 6) for a light image,
   its own FST for a dark one; `strength` 0.5, 100 steps, guidance 2.0 (the authors' notebook;
   it notes that strength >= 0.75 is needed to change skin colour visibly). `mode: txt2img`
   samples the same prompts from noise (Table 5's txt2img rows). Translations are labelled with
   the source's class and the target FST, and name their source image in the manifest.

The adapted model (TI embeddings and LoRA weights) and the generated set are cached, so a run with
another classifier reuses both. Paper profile: SD 2.1-base at 512 px; TI 500 steps, batch 4 x
grad-accum 4 (here batch 16), lr 5e-4 scaled as the authors' `--scale_lr` does (x 16: 8e-3);
LoRA 3,000 steps, batch 4, lr 5e-6; classifier VGG-16 with Adam lr 1e-3, class-balanced
sampler, StepLR (epochs // 3, 0.1), 30 epochs, batch 256, selected on validation (the authors'
code selected on the test set).

The paper profile's classifier (`model.backbone: vgg16_frozen_head`, registered with timm by
`dermbench.train.models`) is the authors' (`scripts/train_classifier.py`; the paper says only
"pre-trained VGG-16"): ImageNet VGG-16 (`model.pretrained: true`: timm `vgg16.tv_in1k`,
torchvision's weights, read from the local cache) with every pretrained weight frozen, the features and the
classifier up to its 4096-d layer (with its two dropouts of 0.5: `model.drop_rate: 0.5`), under a
new trainable head Linear(4096 -> 256) -> ReLU -> Dropout(0.4) -> Linear(256 -> classes). The
authors end the head with LogSoftmax and NLL loss; here the head gives logits to the cross-entropy
loss, the same objective. The tiny profile trains the whole shared backbone (ERM's fit). Tiny
profile: the shipped pretrained tiny base (`dermbench.diffusion.base`), a few hundred steps,
`max_sources` source images drawn at random, 2 outputs each, translated at strength 0.9 with
guidance 7.5 where the paper uses 0.5 and 2.0 (the paper profile keeps those). At the paper's values
the tiny base kept the source's skin: ITA found 23 % of the translations in FST V-VI, below the
fidelity floor, and still 21 % at strength 0.75 and 45 % at 0.75 with guidance 7.5; at 0.9 with 7.5,
87 % (seed 0; leaderboards/notes/synthderm-malignant.md). The authors' own notebook notes that
strength 0.75 or more is needed to change skin colour visibly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dermbench.config.checks import COUNT, FRACTION, NON_NEGATIVE, POSITIVE, check_choice, check_ranges
from dermbench.data.model import content_digest
from dermbench.data.requests import DARK, LIGHT, TRANSLATION, check_targets, translation_plan
from dermbench.data.requests import translation_sources as sources
from dermbench.diffusion.architectures import sd_parts
from dermbench.diffusion.augmenting import measure_quality, split_at, synthetic_split
from dermbench.diffusion.base import TINY as TINY_MODEL
from dermbench.diffusion.base import base_components
from dermbench.diffusion.generation import cached_generation
from dermbench.diffusion.generation import check_settings as check_sampler
from dermbench.diffusion.prerequisites import model_source
from dermbench.diffusion.store import cached_entry
from dermbench.diffusion.training import train_denoiser
from dermbench.errors import ConfigError, DataError
from dermbench.hookspecs import hookimpl
from dermbench.methods.majority2minority.adapters import (
    add_concept_tokens,
    add_lora,
    load_concepts,
    load_lora,
    save_concepts,
    save_lora,
    train_textual_inversion,
)
from dermbench.seeds import seed_for
from dermbench.train.meta_models import BuiltModel
from dermbench.train.models import FROZEN_VGG16
from dermbench.train.pretrained import split_digest

name = "majority2minority"
#: the paper(s) to cite for this method, as BibTeX (`dermbench cite`; docs/cite.md)
REFERENCES: tuple[str, ...] = (
    r"""@inproceedings{wang2024majority,
  author = {Wang, Janet and Chung, Yunsung and Ding, Zhengming and Hamm, Jihun},
  title = {From Majority to Minority: A Diffusion-based Augmentation for Underrepresented Groups in Skin Lesion Analysis},
  booktitle = {ISIC Workshop at MICCAI 2024},
  year = {2024},
}""",  # noqa: E501 (a BibTeX title stays on one line)
)

SKIN_WORDS = {1: "a very light-skinned", 2: "a light-skinned", 5: "a dark-skinned", 6: "a very dark-skinned"}

TINY = {
    "model": "tiny",
    "revision": None,
    "image_size": None,
    "mode": "img2img",
    "textual_inversion": True,
    "lora": True,
    "ti": {
        "steps": 150,
        "batch_size": 16,
        "lr": 5e-3,
        "init_word": "skin",
        "template": "An image of {concept}",
    },
    "lora_settings": {
        "rank": 8,
        "alpha": 8,
        "steps": 300,
        "batch_size": 32,
        "lr": 1e-3,
        "template": "An image of {concept} on the skin of {skin} individual",
    },
    "strength": 0.9,
    "steps": 20,
    "guidance": 7.5,
    "sampler": "ddim",
    "batch_size": 32,
    **TRANSLATION["tiny"],
    "target_fst": list(TRANSLATION["tiny"]["target_fst"]),
    "quality": {"pairs": 200, "inception": None},
}
PAPER = {
    **TINY,
    "model": "stabilityai/stable-diffusion-2-1-base",
    "image_size": 512,
    # the authors ran diffusers' textual_inversion.py once per condition: `per_concept` learns each
    # class's token in its own run of `steps` on that class's images (the tiny profile learns all
    # tokens in one run, as its committed records were made)
    "ti": {**TINY["ti"], "steps": 500, "batch_size": 16, "lr": 8e-3, "per_concept": True},
    "lora_settings": {**TINY["lora_settings"], "steps": 3000, "batch_size": 4, "lr": 5e-6},
    "strength": 0.5,
    "guidance": 2.0,
    "steps": 100,
    "batch_size": 16,
    **TRANSLATION["paper"],
    "target_fst": list(TRANSLATION["paper"]["target_fst"]),
}
PAPER_TRAIN = {
    "epochs": 30,
    "batch_size": 256,
    "optimizer": "adam",
    "lr": 1e-3,
    "schedule": "step",
    "step_size": 10,
    "gamma": 0.1,
    "sampler": "class",
    "augment": "standard",
}  # nearest to train_classifier.py's crop/rotate/jitter/flip (docs/majority2minority.md)


@hookimpl
def dermbench_method_defaults(profile: str) -> dict:
    if profile == "paper":
        return {
            name: PAPER,
            "model": {"backbone": FROZEN_VGG16, "pretrained": True, "drop_rate": 0.5},
            "data": {"image_size": 224},
            "train": PAPER_TRAIN,
        }
    return {name: TINY}


MODES = ("img2img", "txt2img")
#: the numeric settings and their ranges (`dermbench.config.checks`); null allowed for NULLABLE
RANGES = {
    ("per_image",): COUNT,
    ("max_sources",): COUNT,
    ("image_size",): (8, True, None, False, True),
    ("strength",): FRACTION,
    ("steps",): COUNT,
    ("guidance",): NON_NEGATIVE,
    ("batch_size",): COUNT,
    ("ti", "steps"): COUNT,
    ("ti", "batch_size"): COUNT,
    ("ti", "lr"): POSITIVE,
    ("lora_settings", "rank"): COUNT,
    ("lora_settings", "alpha"): POSITIVE,
    ("lora_settings", "steps"): COUNT,
    ("lora_settings", "batch_size"): COUNT,
    ("lora_settings", "lr"): POSITIVE,
}
NULLABLE = (("max_sources",), ("image_size",))


def check_settings(hp: dict, *, fetch: bool = False) -> list[dict]:
    """The settings checked before any data loads (a ConfigError naming the setting), and where
    the base model comes from (a hub model absent offline: the download command)."""
    s = {**TINY, **hp}
    check_choice(f"{name}.mode", s["mode"], MODES)
    check_ranges(s, RANGES, prefix=name, nullable=NULLABLE)
    check_targets(s["target_fst"], setting=f"{name}.target_fst")
    check_sampler({k: s[k] for k in ("sampler", "steps", "guidance", "batch_size", "strength")})
    for key in ("textual_inversion", "lora"):
        if not isinstance(s[key], bool):
            raise ConfigError(f"setting '{name}.{key}' must be true or false, got {s[key]!r}")
    if s["model"] == TINY_MODEL:
        return []
    return [model_source(s["model"], setting=f"{name}.model", revision=s["revision"], fetch=fetch)]


@hookimpl
def dermbench_check_settings(config: dict, fetch: bool) -> list[dict]:
    return check_settings(config.get(name) or {}, fetch=fetch)


@hookimpl
def dermbench_models(config: dict) -> list[BuiltModel]:
    """The Stable Diffusion parts `model` names, for the dry run."""
    return sd_parts(name, str((config.get(name) or {}).get("model")))


def concept_token(class_name: str) -> str:
    """The placeholder of a condition: its first three letters and "-class" (as the authors')."""
    letters = "".join(ch for ch in class_name.lower() if ch.isalnum())[:3] or "cls"
    return f"{letters}-class"


def concepts(classes: tuple[str, ...], *, learned: bool) -> list[str]:
    """What prompts call each class: its learned token, or its plain name without TI."""
    if not learned:
        return list(classes)
    tokens = [concept_token(c) for c in classes]
    if len(set(tokens)) != len(tokens):
        tokens = [f"{t[:-6]}{i}-class" for i, t in enumerate(tokens)]
    return tokens


def tone_prompts(labels: np.ndarray, fst: np.ndarray, words: list[str], template: str) -> list[str]:
    try:
        return [template.format(concept=words[int(y)], skin=SKIN_WORDS[int(f)]) for y, f in zip(labels, fst)]
    except KeyError as exc:
        raise ConfigError(f"{name}: a prompt template may only use {{concept}} and {{skin}} ({exc})") from exc


def translation_requests(real, rows: np.ndarray, words: list[str], *, hp: dict, seed: int) -> pd.DataFrame:
    """`per_image` requests per source row, each toward a dark FST: a random `target_fst` for a
    light source, its own FST for a dark one (planned by `dermbench.data.requests.translation_plan`,
    which the oracle shares), with each one's class name and tone-aware prompt."""
    plan = translation_plan(
        real.table, rows, per_image=hp["per_image"], target_fst=hp["target_fst"], seed=seed, method=name
    )
    plan.insert(2, "class_name", [real.classes[int(y)] for y in plan["label"]])
    plan.insert(
        5,
        "prompt",
        tone_prompts(
            plan["label"].to_numpy(), plan["fst"].to_numpy(), words, hp["lora_settings"]["template"]
        ),
    )
    return plan.drop(columns="k")


def adapt(ctx, c, real, rows: np.ndarray, hp: dict) -> tuple[list[str], dict]:
    """Textual Inversion then LoRA as `hp` switches them, cached; returns each class's prompt word
    and the record of the adapted model. `c` is adapted in place."""
    words = concepts(real.classes, learned=hp["textual_inversion"])
    if not (hp["textual_inversion"] or hp["lora"]):
        return words, {"identity": c.source["identity"], "textual_inversion": False, "lora": False}
    part = real.subset(rows)
    labels, fst = part.labels, pd.to_numeric(part.table["fst"]).astype(int).to_numpy()
    ti, lora = hp["ti"], hp["lora_settings"]
    material = {
        "method": name,
        "base": c.source["identity"],
        "data": split_digest(part),
        "seed": ctx.seed,
        "device": ctx.device.type,
        "ti": ti if hp["textual_inversion"] else None,
        "lora": lora if hp["lora"] else None,
        "words": words,
    }

    def train(folder):
        if hp["textual_inversion"]:
            learn_concepts(ctx, c, part.images, labels, words, ti)
            save_concepts(c, words, folder / "concepts.safetensors")
        if hp["lora"]:
            params = add_lora(c, rank=lora["rank"], alpha=lora["alpha"])
            train_denoiser(
                c,
                part.images,
                tone_prompts(labels, fst, words, lora["template"]),
                params=params,
                steps=lora["steps"],
                batch_size=lora["batch_size"],
                lr=lora["lr"],
                seed=seed_for(ctx.seed, f"{name}-lora"),
                device=ctx.device,
                console=ctx.console,
                label=f"{name}: LoRA",
            )
            save_lora(c, folder / "lora.safetensors")

    entry = cached_entry("adapted", material, train, say=ctx.say)
    if entry.hit:  # a fresh model: load what was learned
        if hp["textual_inversion"]:
            load_concepts(c, entry.path / "concepts.safetensors", tokens=words)
        if hp["lora"]:
            load_lora(c, entry.path / "lora.safetensors", rank=lora["rank"], alpha=lora["alpha"])
    c.freeze()
    c.to(ctx.device)
    return words, {
        "identity": f"{c.source['identity']}+{name}:{entry.key}",
        "entry": entry.info(),
        "textual_inversion": hp["textual_inversion"],
        "lora": hp["lora"],
        "prompt_words": words,
    }


def learn_concepts(ctx, c, images: np.ndarray, labels: np.ndarray, words: list[str], ti: dict) -> None:
    """Textual Inversion of one token per class: in one run over every image (`per_concept` false),
    or, as the authors did, one run of `ti.steps` per class on that class's images alone. A class
    without images keeps its token at the initial word's embedding, and the log says so."""
    ids = add_concept_tokens(c, words, init_word=ti["init_word"])
    prompts = np.array([ti["template"].format(concept=words[int(y)]) for y in labels], dtype=object)
    if not ti.get("per_concept", False):
        train_textual_inversion(
            c,
            images,
            list(prompts),
            ids,
            steps=ti["steps"],
            batch_size=ti["batch_size"],
            lr=ti["lr"],
            seed=seed_for(ctx.seed, f"{name}-ti"),
            device=ctx.device,
            console=ctx.console,
        )
        return
    for k, (word, token_id) in enumerate(zip(words, ids)):
        mine = np.flatnonzero(labels == k)
        if not len(mine):
            ctx.say(f"{name}: no training image of class {k} ({word}); its token keeps the initial embedding")
            continue
        train_textual_inversion(
            c,
            images[mine],
            list(prompts[mine]),
            [token_id],
            steps=ti["steps"],
            batch_size=ti["batch_size"],
            lr=ti["lr"],
            seed=seed_for(ctx.seed, f"{name}-ti-{k}"),
            device=ctx.device,
            console=ctx.console,
        )


@hookimpl
def augment(ctx, train):
    hp = ctx.hparams(name)
    check_choice(f"{name}.mode", hp["mode"], MODES)
    size = int(hp["image_size"] or train.images.shape[1])
    real = split_at(ctx, train, size)
    rows = sources(real.table, max_sources=hp["max_sources"], rng=ctx.rng(f"{name}-sources"))
    if not len(rows):
        raise DataError(f"{name}: no training image has FST I, II, V or VI to translate")
    light = int(pd.to_numeric(real.table["fst"].iloc[rows]).isin(LIGHT).sum())
    ctx.say(f"{name}: {len(rows)} source images ({light} light FST I-II, {len(rows) - light} dark FST V-VI)")
    c = base_components(hp["model"], revision=hp["revision"])
    words, adapted = adapt(ctx, c, real, rows, hp)
    requests = translation_requests(real, rows, words, hp=hp, seed=ctx.seed)
    img2img = hp["mode"] == "img2img"
    sampler = {k: hp[k] for k in ("sampler", "steps", "guidance", "batch_size")} | {
        "strength": hp["strength"] if img2img else None
    }
    generation = cached_generation(
        c,
        requests,
        weights=adapted["identity"],
        settings=sampler,
        image_size=size,
        device=ctx.device,
        console=ctx.console,
        say=ctx.say,
        label=f"{name}: {hp['mode']} of {len(requests)} images",
        init_images=real.images if img2img else None,
        init_rows=requests["row"].to_numpy() if img2img else None,
        sources=content_digest({"split": split_digest(real), "rows": requests["row"].tolist()})
        if img2img
        else None,
    )
    synthetic = synthetic_split(ctx, generation, train, name=name)
    fst = pd.to_numeric(real.table["fst"], errors="coerce")
    ctx.record(
        name,
        {
            "base": c.source,
            "adapted": adapted,
            "mode": hp["mode"],
            "sources": {
                "n": len(rows),
                "light": light,
                "dark": len(rows) - light,
                "not_used_fst_3_4_or_unknown": int((~fst.isin(LIGHT + DARK)).sum()),
                "left_out_by_max_sources": int(fst.isin(LIGHT + DARK).sum()) - len(rows),
            },
            "generation": {
                **generation.info(),
                "n": len(requests),
                "per_image": hp["per_image"],
                "image_size": size,
                **sampler,
            },
            "quality": measure_quality(ctx, name, train=train, synthetic=synthetic),
        },
    )
    return synthetic
