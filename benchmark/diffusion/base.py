"""The model a diffusion method starts from: a Stable Diffusion checkpoint, or the tiny base.

Paper profiles name a checkpoint (`model`: a local folder or a hub id). With `model: tiny` the
method starts from the tiny text-to-image model shipped in the package (`tiny_base/latent`),
pretrained once by `dermbench diffusion pretrain-base` on SynthDerm scenes outside every protocol
split, captioned with their skin tone and the lesion's look but never its diagnosis: what SD's web
pretraining is to the papers (`dermbench.diffusion.pretraining`). Its checksums are verified before
it is loaded. Methods then fine-tune or adapt it as they would Stable Diffusion.
"""

from __future__ import annotations

from dermbench.diffusion.components import Components, components_from_folder, load_components
from dermbench.diffusion.shipped import LATENT, SHIPPED, verify

TINY = "tiny"


def base_components(model: str, *, revision: str | None) -> Components:
    """The starting model, frozen: `model` loaded (a folder or hub id), or for "tiny" the shipped
    pretrained base. `source` says which."""
    if model != TINY:
        return load_components(model, revision=revision)
    return tiny_base()


def tiny_base() -> Components:
    """The shipped tiny text-to-image model, its checksums verified."""
    identity = verify(SHIPPED)
    return components_from_folder(
        SHIPPED / LATENT,
        {
            "kind": "tiny",
            "identity": f"tiny-base:{identity}",
            "pretrained": "dermbench diffusion pretrain-base",
        },
    )
