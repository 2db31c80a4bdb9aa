"""Majority-to-minority: a Stable Diffusion model adapted to the minority tone, then image-to-image
translation of majority-tone training images.

`plugin` is the method (its hooks, registered by name in dermbench.plugins.BUILTIN_METHODS),
`adapters` its textual-inversion and LoRA adapters of the UNet.
"""
