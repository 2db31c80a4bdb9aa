"""Class-N-Diff (Munia & Imran): a label-conditioned latent DiT trained jointly with a classifier that
reads latents, sampled to a class-balanced synthetic set.

`plugin` is the method (its hooks, registered by name in dermbench.plugins.BUILTIN_METHODS), `dit`
its DiT, latent classifier, joint training step and samplers.
"""
