"""FEDD (Carrion & Norouzi, MICCAI 2023): a probe on a frozen diffusion model's decoder features.

`plugin` is the method (its hooks, registered by name in dermbench.plugins.BUILTIN_METHODS),
`features` the decoder-feature taps and their cache, `commands` the `dermbench fedd` commands it
adds to the CLI through the `dermbench_add_commands` hook, `adm` the converter of the paper's ADM
checkpoint to a diffusers folder (`dermbench fedd convert-adm`).
"""
