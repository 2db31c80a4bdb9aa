"""Oracle augmentation (SynthDerm only): SynthDerm's own procedural renderer makes the synthetic
samples a generative method asks for, so every sample is of the requested tone and label by
construction. Its row is the ceiling of what augmentation can give on this data, with
resampling as the floor: a generative row reads between the two.

What it does.
1. Request (`oracle.request`). `dermdiff` (default): DermDiff's balanced request, planned by the
   same code DermDiff uses (`dermbench.data.requests.balanced_cells`): `per_cell` samples for every
   tone3 group x label (150 in the tiny profile, the paper's 10,000; null = the largest real
   cell). `majority2minority`: the sources majority-to-minority would translate (its source
   selection, `translation_sources` on its own seeded stream, and its count, `max_sources`), each
   `per_image` times toward the target FST it would ask for (`translation_plan`: a random
   `target_fst` for a light source, its own FST for a dark one).
2. Rendering. `dermdiff` cells: new lesions of the cell's label on skin of the cell's tone group,
   the FSTs within the group in the training split's proportions, drawn by SynthDerm's own
   generator with the training split's settings (acquisition, `spurious`). `majority2minority`:
   the same lesion re-rendered on the target tone, since SynthDerm can do that exactly: a new
   skin colour is drawn for the target FST, and the source's lesion (severity, ABCD features,
   pigment, shape, position), skin texture, artifacts and lighting are kept; what depends on the
   skin colour (the lesion's colour and contrast, the mottling of dark skin) follows the
   generator's own model. So the masks of a translation equal its source's (`retoned_scenes`).
3. Seeds. Every SynthDerm split is drawn from one 32-bit seed per generation (`split_seed` of
   data_seed and the split's name), and every random stream of a render is
   `default_rng([seed, stream, ...])`. The oracle renders in batches of at most BATCH samples,
   each with its own 32-bit seed that is none of the protocol generations' seeds (train, val,
   test, test_ddi, test_dermoscopic, from which every protocol's splits are drawn) and none of
   another batch's (`oracle_seeds`), so no oracle stream is a stream of any protocol split and no
   image of a training, validation or test split is regenerated. The record lists both sets
   (`methods.oracle.seeds`), and `check_disjoint` checks them. A majority-to-minority
   translation's lesion is its source's by design (what the method's img2img keeps); its new
   skin colour and its sensor noise come from the oracle's seed.
4. The set is stored like a diffusion method's generation (`images.npy` + `manifest.csv`, cache
   kind `generations`, model "synthderm-oracle"), at the classifier's image size, and pooled with
   the real split by the harness as `augment.mix` / `augment.ratio` say.
5. Quality: the same numbers as the generative methods (`methods.oracle.quality`: FID with the
   run's ERM features, label fidelity by the run's ERM model, tone fidelity by ITA or the tone
   detector), so a perfect generator's scores, bounded below 1 by the ERM model's own errors and
   ITA's misassignments, are the yardstick for theirs.

On any dataset without SynthDerm's renderer the run stops with a ConfigError (a built-in one when
the settings are resolved, before any data is read); it never falls back to ERM. Needs the
`diffusion` extra, as the generative methods do (the quality numbers and the generation store
live in `dermbench.diffusion`). The classifier is the ordinary ERM fit on real + rendered samples (the shared
`train` section in both profiles, so the row differs from ERM's only by the added samples).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from dermbench.data.generated import IMAGES, MANIFEST, MANIFEST_COLUMNS
from dermbench.data.model import content_digest
from dermbench.data.requests import (
    DERMDIFF,
    DERMDIFF_PER_CELL,
    MAJORITY2MINORITY,
    TRANSLATION,
    balanced_cells,
    cell_count,
    check_targets,
    translation_plan,
    translation_sources,
)
from dermbench.datasets.synthderm import GENERATOR_VERSION, SPLITS, SynthDerm
from dermbench.datasets.synthderm_params import FITZ17K_TONE_MIX
from dermbench.datasets.synthderm_render import Scenes, render, sample_scenes, sample_skin
from dermbench.datasets.synthderm_render import with_skin as scenes_with_skin
from dermbench.diffusion.augmenting import measure_quality, synthetic_split
from dermbench.diffusion.store import cached_entry
from dermbench.errors import ConfigError, DataError, DermbenchError
from dermbench.hookspecs import hookimpl
from dermbench.plugins import BUILTIN_DATASETS
from dermbench.results.backbone_refs import DERMBENCH
from dermbench.seeds import seed_for

name = "oracle"
#: this project's own construction: dermbench itself (SynthDerm, whose renderer it uses, is cited as the
#: run's dataset)
REFERENCES: tuple[str, ...] = (DERMBENCH,)

REQUESTS = (DERMDIFF, MAJORITY2MINORITY)
#: samples rendered from one seed (bounded memory at the paper's 224 px)
BATCH = 1024
#: bump when what the oracle renders for the same plan changes (part of the cache key)
VERSION = 1
#: the tone3 groups' FSTs
GROUP_FST = {"A": (1, 2), "B": (3, 4), "C": (5, 6)}
_IMAGE_REF = re.compile(r"^synthderm://([a-z_]+)/(\d+)$")

TINY = {
    "request": DERMDIFF,
    "per_cell": DERMDIFF_PER_CELL["tiny"],
    **TRANSLATION["tiny"],
    "target_fst": list(TRANSLATION["tiny"]["target_fst"]),
    "quality": {"pairs": 200, "inception": None},
}
PAPER = {
    **TINY,
    "per_cell": DERMDIFF_PER_CELL["paper"],
    **TRANSLATION["paper"],
    "target_fst": list(TRANSLATION["paper"]["target_fst"]),
}


@hookimpl
def dermbench_method_defaults(profile: str, dataset: str) -> dict:
    if dataset in BUILTIN_DATASETS and dataset != SynthDerm.name:  # stop before any data is read
        raise ConfigError(no_renderer(dataset))
    return {name: PAPER if profile == "paper" else TINY}


# ------------------------------------------------------------------------------------ settings


def _count(value: Any, key: str, *, null: bool = False) -> int | None:
    """A positive integer (integral floats from YAML accepted), or None where `null` allows it."""
    if value is None and null:
        return None
    whole = isinstance(value, (int, np.integer)) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole or value < 1:
        allowed = "a positive integer" + (" or null" if null else "")
        raise ConfigError(f"{name}.{key} must be {allowed}, got {value!r}")
    return int(value)


def check_settings(hp: Mapping[str, Any]) -> dict[str, Any]:
    """The oracle's settings, checked (a ConfigError naming the setting and its value), before
    anything is rendered."""
    if hp.get("request") not in REQUESTS:
        raise ConfigError(f"{name}.request must be one of {', '.join(REQUESTS)}, got {hp.get('request')!r}")
    quality = hp.get("quality") or {}
    return {
        "request": hp["request"],
        "per_cell": _count(hp.get("per_cell"), "per_cell", null=True),
        "per_image": _count(hp.get("per_image"), "per_image"),
        "max_sources": _count(hp.get("max_sources"), "max_sources", null=True),
        "target_fst": check_targets(hp.get("target_fst"), setting=f"{name}.target_fst"),
        "quality": {**quality, "pairs": _count(quality.get("pairs", 200), "quality.pairs")},
    }


@hookimpl
def dermbench_check_settings(config: dict) -> None:
    check_settings(config.get(name) or {})


def synthderm_of(ctx) -> SynthDerm:
    """The run's training dataset, which must have SynthDerm's renderer."""
    dataset = ctx.config["dataset"]
    found = ctx.datasets.get(dataset) if ctx.datasets is not None else None
    if not isinstance(found, SynthDerm):
        raise ConfigError(no_renderer(dataset))
    return found


def no_renderer(dataset: str) -> str:
    return (
        f"method {name!r} renders its synthetic samples with SynthDerm's procedural "
        f"generator, and dataset {dataset!r} has no renderer (its images are files, "
        f"with no model to draw new ones from); run {name} with --dataset synthderm, "
        f"or a generative method (dermdiff, majority2minority) on {dataset!r}"
    )


# --------------------------------------------------------------------------------------- seeds


def protocol_seeds(ds: SynthDerm) -> dict[str, int]:
    """{generation: seed} of every SynthDerm generation the protocols draw their splits from
    (train, val, test, test_ddi, test_dermoscopic; the majority-to-minority scenarios and FEDD's
    protocol reassign these generations' rows)."""
    return {split: int(ds.scenes(split).seed) for split in SPLITS}


def oracle_seeds(keys: Iterable[str], *, seed: int, data_seed: int, taken: Iterable[int]) -> dict[str, int]:
    """A 32-bit render seed per batch key, from the run seed, that is none of `taken` (the
    protocol generations' seeds) and none of another key's: a derived candidate that collides is
    replaced by the next one of its stream. 32-bit, as SynthDerm's split seeds are, so a seed is
    one word of `default_rng([seed, stream, ...])` and distinct seeds give distinct streams."""
    used = {int(s) for s in taken}
    out: dict[str, int] = {}
    for key in keys:
        attempt = 0
        while True:
            candidate = seed_for(seed, f"{name}-render-{data_seed}-{key}-{attempt}") & 0xFFFF_FFFF
            if candidate not in used:
                break
            attempt += 1
        used.add(candidate)
        out[key] = candidate
    return out


def check_disjoint(oracle: Mapping[str, int], protocol: Mapping[str, int]) -> None:
    """A DermbenchError unless the oracle's render seeds are pairwise distinct, 32-bit, and none
    of the protocol generations' seeds."""
    values = [int(v) for v in oracle.values()]
    shared = sorted(set(values) & {int(v) for v in protocol.values()})
    if shared or len(set(values)) != len(values) or any(not 0 <= v < 2**32 for v in values):
        raise DermbenchError(
            f"{name}: render seeds {values} are not distinct 32-bit seeds disjoint from the protocol "
            f"generations' {dict(protocol)} (shared: {shared})"
        )


# -------------------------------------------------------------------------------------- plans


def group_mix(table: pd.DataFrame, tone3: str) -> tuple[float, ...]:
    """FST I..VI weights within tone group `tone3`: the training split's proportions of the group's
    FSTs, or (none in the split) Fitzpatrick17k's, as SynthDerm draws its clinical splits."""
    fst = pd.to_numeric(table["fst"], errors="coerce")
    counts = np.array([float((fst == f).sum()) if f in GROUP_FST[tone3] else 0.0 for f in range(1, 7)])
    if counts.sum() == 0:
        counts = np.array(
            [w if f in GROUP_FST[tone3] else 0.0 for f, w in zip(range(1, 7), FITZ17K_TONE_MIX)]
        )
    return tuple(float(c) for c in counts / counts.sum())


def _batches(groups: pd.Series, keys: pd.Series) -> pd.Series:
    """The batch key of each row: its group's key and its part (BATCH rows per part)."""
    part = groups.groupby(groups).cumcount() // BATCH
    return keys.astype(str) + "-" + part.astype(str)


def dermdiff_plan(
    train_table: pd.DataFrame, classes: tuple[str, ...], *, per_cell: int | None
) -> pd.DataFrame:
    """One row per sample of DermDiff's request, in its order: sample_id, label, class_name, tone3,
    batch; and the batch's FST mix (`mix`)."""
    cells = balanced_cells(classes, per_cell=cell_count(per_cell, train_table))
    cell = cells["tone3"] + "-" + cells["label"].astype(str)
    return cells.assign(
        sample_id=[f"{name}-{t}-{y}-{k}" for t, y, k in zip(cells["tone3"], cells["label"], cells["k"])],
        fst=np.nan,
        source_id="",
        generation="",
        index=-1,
        batch=_batches(cell, cell),
        mix=[group_mix(train_table, t) for t in cells["tone3"]],
    )


def position(ref: str) -> tuple[str, int]:
    """(generation, index) of a SynthDerm image reference `synthderm://SPLIT/INDEX`."""
    match = _IMAGE_REF.match(str(ref))
    if not match or match.group(1) not in SPLITS:
        raise DataError(f"{name}: {ref!r} is not a SynthDerm image reference (synthderm://SPLIT/INDEX)")
    return match.group(1), int(match.group(2))


def translation_oracle_plan(
    train_table: pd.DataFrame,
    classes: tuple[str, ...],
    *,
    hp: Mapping[str, Any],
    rng: np.random.Generator,
    seed: int,
) -> pd.DataFrame:
    """One row per translation majority-to-minority would ask for (its sources, drawn with `rng`,
    which must be its own stream; its targets, from the run `seed`): sample_id, label, class_name,
    tone3 "C", fst (the target), source_id, generation and index (the source's scene), batch."""
    rows = translation_sources(train_table, max_sources=hp["max_sources"], rng=rng)
    if not len(rows):
        raise DataError(
            f"{name}: no training image has FST I, II, V or VI to re-render (request majority2minority)"
        )
    plan = translation_plan(
        train_table, rows, per_image=hp["per_image"], target_fst=hp["target_fst"], seed=seed
    )
    where = [position(ref) for ref in train_table["image"].iloc[plan["row"].to_numpy()]]
    generation = pd.Series([g for g, _ in where])
    key = generation + "-" + plan["k"].astype(str)
    return pd.DataFrame(
        {
            "sample_id": [f"{name}-{s}-{k}" for s, k in zip(plan["source_id"], plan["k"])],
            "label": plan["label"].to_numpy(),
            "class_name": [classes[int(y)] for y in plan["label"]],
            "tone3": "C",
            "fst": plan["fst"].to_numpy(dtype=float),
            "source_id": plan["source_id"].to_numpy(),
            "generation": generation.to_numpy(),
            "index": np.array([i for _, i in where], dtype=np.int64),
            "batch": _batches(key, key).to_numpy(),
            "mix": None,
        }
    )


# ------------------------------------------------------------------------------------ rendering


def retoned_scenes(base: Scenes, index: np.ndarray, fst: np.ndarray, *, seed: int) -> Scenes:
    """The lesions `base[index]` on new skin of FST `fst`: the skin colour (ITA and CIELAB) drawn
    from `seed` as SynthDerm draws any skin of that FST, and everything else of the scene kept:
    the lesion's draws (severity, features, pigment, shape, position) are made again from the
    source generation's own streams with the new skin, so only what SynthDerm's model ties to the
    skin colour changes; artifacts and lighting are the source's. The sensor noise of a render
    comes from `seed` (the returned scenes' seed)."""
    index, fst = np.asarray(index, dtype=np.int64), np.asarray(fst, dtype=np.int64)
    ita, skin = sample_skin(seed, fst)
    return with_skin(base, index, fst=fst, ita=ita, skin=skin, seed=seed)


def with_skin(
    base: Scenes, index: np.ndarray, *, fst: np.ndarray, ita: np.ndarray, skin: np.ndarray, seed: int
) -> Scenes:
    """`base[index]` on the given skin (FST, ITA, CIELAB), the rest kept as `retoned_scenes` says:
    SynthDerm's own `with_skin` (dermbench.datasets.synthderm_render), which redraws the lesion and texture
    given the skin with the generator's own streams, so a re-rendered lesion follows the generator's
    model exactly; with a scene's own skin and seed it gives back that scene unchanged
    (tests/test_oracle.py checks both)."""
    if len(np.unique(index)) != len(index):
        raise DermbenchError(f"{name}: a batch re-renders one source scene twice")
    return scenes_with_skin(base, index, fst=fst, ita=ita, skin=skin, seed=seed)


def render_plan(
    ds: SynthDerm,
    plan: pd.DataFrame,
    seeds: Mapping[str, int],
    *,
    image_size: int,
    dermoscopic: bool,
    spurious: float,
    out: np.ndarray,
) -> np.ndarray:
    """Render every batch of `plan` into `out` (n, S, S, 3) at the plan's positions; returns the FST
    of each rendered sample."""
    fst = np.zeros(len(plan), dtype=np.int64)
    for key, rows in plan.groupby("batch", sort=False).indices.items():
        first = plan.iloc[rows[0]]
        if first["generation"]:
            scenes = retoned_scenes(
                ds.scenes(first["generation"]),
                plan["index"].to_numpy()[rows],
                plan["fst"].to_numpy()[rows].astype(np.int64),
                seed=seeds[key],
            )
        else:
            scenes = sample_scenes(
                len(rows),
                seed=seeds[key],
                tone_mix=first["mix"],
                malignant_rate=float(first["class_name"] == "malignant"),
                dermoscopic=dermoscopic,
                spurious=spurious,
            )
        images, _ = render(scenes, image_size=image_size)
        out[rows] = images
        fst[rows] = scenes.table["fst"].to_numpy()
    return fst


def build_plan(ctx, ds: SynthDerm, train, hp: Mapping[str, Any]) -> pd.DataFrame:
    if hp["request"] == DERMDIFF:
        return dermdiff_plan(train.table, train.classes, per_cell=hp["per_cell"])
    return translation_oracle_plan(
        train.table, train.classes, hp=hp, rng=ctx.rng(f"{MAJORITY2MINORITY}-sources"), seed=ctx.seed
    )


def _plan_digest(plan: pd.DataFrame, seeds: Mapping[str, int]) -> str:
    cols = ["sample_id", "label", "tone3", "fst", "source_id", "generation", "index", "batch", "mix"]
    return content_digest({"rows": plan[cols].astype(str).to_numpy().tolist(), "seeds": dict(seeds)})


# ---------------------------------------------------------------------------------------- hook


@hookimpl
def augment(ctx, train):
    hp = check_settings(ctx.hparams(name))
    ds = synthderm_of(ctx)
    if tuple(train.classes) != ("benign", "malignant"):
        raise DataError(
            f"{name}: SynthDerm's renderer draws benign and malignant lesions, not classes {train.classes}"
        )
    size = int(train.images.shape[1])
    plan = build_plan(ctx, ds, train, hp)
    protocol = protocol_seeds(ds)
    seeds = oracle_seeds(
        plan["batch"].unique().tolist(),
        seed=ctx.seed,
        data_seed=int(ds.options["data_seed"]),
        taken=protocol.values(),
    )
    check_disjoint(seeds, protocol)
    domain = str(train.table["domain"].mode().iloc[0])
    dermoscopic = domain == "dermoscopic"
    spurious = float(ds.options["spurious"]) if ds.fedd_setting is None else 0.0
    material = {
        "model": "synthderm-oracle",
        "version": VERSION,
        "generator": GENERATOR_VERSION,
        "data": ds.fingerprint()["digest"],
        "request": hp["request"],
        "plan": _plan_digest(plan, seeds),
        "n": len(plan),
        "image_size": size,
        "dermoscopic": dermoscopic,
        "spurious": spurious,
    }

    def build(folder):
        out = np.lib.format.open_memmap(
            folder / IMAGES, mode="w+", dtype=np.uint8, shape=(len(plan), size, size, 3)
        )
        fst = render_plan(
            ds, plan, seeds, image_size=size, dermoscopic=dermoscopic, spurious=spurious, out=out
        )
        out.flush()
        del out
        manifest = plan.assign(
            fst=fst,
            seed=plan["batch"].map(seeds),
            domain=domain,
            prompt=[f"SynthDerm render: {c} lesion, FST {f}" for c, f in zip(plan["class_name"], fst)],
        )
        manifest[list(MANIFEST_COLUMNS)].to_csv(folder / MANIFEST, index=False)

    ctx.say(
        f"{name}: rendering {len(plan)} SynthDerm samples for the {hp['request']} request "
        f"({len(seeds)} batch(es), seeds disjoint from the protocol generations')"
    )
    entry = cached_entry("generations", material, build, say=ctx.say)
    synthetic = synthetic_split(ctx, entry, train, name=name)
    requested = (
        {"per_cell": cell_count(hp["per_cell"], train.table)}
        if hp["request"] == DERMDIFF
        else {
            "per_image": hp["per_image"],
            "max_sources": hp["max_sources"],
            "target_fst": hp["target_fst"],
            "sources": int(plan["source_id"].nunique()),
            "lesions": "the sources' own, re-rendered on the target tone",
        }
    )
    ctx.record(
        name,
        {
            "request": hp["request"],
            "requested": requested,
            "renderer": {
                "dataset": ds.name,
                "generator": GENERATOR_VERSION,
                "data_seed": int(ds.options["data_seed"]),
                "spurious": spurious,
                "domain": domain,
            },
            "seeds": {"protocol": protocol, "render": seeds, "batch_size": BATCH, "disjoint": True},
            "generation": {**entry.info(), "n": len(plan), "image_size": size},
            "quality": measure_quality(ctx, name, train=train, synthetic=synthetic),
        },
    )
    return synthetic
