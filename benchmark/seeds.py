"""Every seed derivation of the project, in one place, so a reader can see how each random
stream follows from the run seed.

`seed_for` is the derivation for anything new: the trainer, model initialisation and plugins
(`ctx.rng`, `ctx.torch_generator`). Two older derivations are kept as they were because the
committed SynthDerm records depend on them (changing them would change the images or the
bootstrap resamples): `spawned_rng` for the metrics bootstrap and `stream_rng` / `split_seed` for
SynthDerm's generator.
"""

from __future__ import annotations

import hashlib
import zlib

import numpy as np


def seed_for(seed: int, name: str) -> int:
    """A stable 63-bit seed for the stream `name` of a run seeded with `seed`."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def spawned_rng(seed: int, *tags: str) -> np.random.Generator:
    """An independent stream per `tags` (the bootstrap's scheme and group): adding a tag elsewhere
    never changes another stream. Kept for the committed records' confidence intervals."""
    key = tuple(zlib.crc32(t.encode("utf-8")) for t in tags)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def stream_rng(seed: int, stream: int, *extra: int) -> np.random.Generator:
    """SynthDerm's per-stream generator (numbered streams); kept for the committed records."""
    return np.random.default_rng([seed, stream, *extra])


def split_seed(data_seed: int, split: str) -> int:
    """SynthDerm's seed of one split, from its data seed and the split's name only."""
    return int(np.random.SeedSequence([data_seed, zlib.crc32(split.encode())]).generate_state(1)[0])
