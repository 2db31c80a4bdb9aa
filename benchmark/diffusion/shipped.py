"""The tiny diffusion bases shipped inside the package (`tiny_base/`, built by
`dermbench diffusion pretrain-base`, see `dermbench.diffusion.pretraining`) and their checksums.

`verify` checks every file against `checksums.json` before a model is loaded from the folder, so a
damaged or edited weight file stops the run with a message instead of silently changing every
generative and FEDD row; its digest of `checksums.json` is the bases' identity in cache keys and
records.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from dermbench.data.metadata import sha256_file
from dermbench.errors import DermbenchError

#: where the shipped bases live inside the package
SHIPPED = Path(__file__).with_name("tiny_base")
CHECKSUMS = "checksums.json"
#: the text-to-image latent model (diffusers layout) and the unconditional pixel DDPM (unet/, scheduler/)
LATENT, PIXEL = "latent", "pixel"
_HOW = (
    "reinstall dermbench, or rebuild the bases with `dermbench "
    "diffusion pretrain-base --out DIR` (docs/diffusion.md)"
)


def files(folder: Path) -> Iterable[Path]:
    """Every file of a bases folder but its checksum listing, in a fixed order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS)


def verify(folder: Path = SHIPPED) -> str:
    """Check every file of `folder` against its checksums.json and return that file's digest (the
    bases' identity). A changed, missing or unlisted file is refused with what to do."""
    listing = folder / CHECKSUMS
    if not listing.is_file():
        raise DermbenchError(f"the tiny diffusion bases in {folder} have no {CHECKSUMS}: {_HOW}")
    try:
        expected = json.loads(listing.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DermbenchError(f"{listing} is unreadable ({exc}): {_HOW}") from exc
    present = {p.relative_to(folder).as_posix() for p in files(folder)}
    missing, extra = sorted(set(expected) - present), sorted(present - set(expected))
    if missing or extra:
        raise DermbenchError(
            f"the tiny diffusion bases in {folder} lack {missing} or hold unlisted files {extra}: {_HOW}"
        )
    for name, digest in sorted(expected.items()):
        found = sha256_file(folder / name)
        if found != digest:
            raise DermbenchError(
                f"{folder / name} fails its checksum (sha256 {found[:16]}..., expected {digest[:16]}...): "
                f"the file is damaged or was changed; {_HOW}"
            )
    return sha256_file(listing)[:20]
