"""What the diffusion methods share: models, their fine-tuning, generation, caches and quality.

DermDiff, majority-to-minority, Class-N-Diff and FEDD build on these modules instead of each
writing its own: `components` (a Stable Diffusion model from a local folder or hub id, or a
tiny one built from configs for CPU runs and tests), `store` (content-addressed cache entries
under the cache root: fine-tuned weights and generated sets), `training` (noise-prediction
fine-tuning of whichever parameters a method unfreezes), `generation` (batched text-to-image and
image-to-image sampling into the generation cache) and `quality` (FID with a domain feature
extractor, MS-SSIM diversity, tone and label fidelity, a sample grid).

Importing this package imports diffusers and transformers; the default job never does (only the
diffusion methods import it, and the harness imports a method only when a run selects it).
"""
