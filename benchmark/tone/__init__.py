"""Skin tone for samples without a tone label: the individual typology angle (ITA) and a
trained tone detector.

Two estimators, both recorded per sample in `tone_source` so every report says where a tone
came from:

* ITA (`tone_source = "ita"`): the median ITA of the image's skin pixels, mapped to a
  Fitzpatrick-like type with the ITA skin-colour categories (see `fst_from_ita`).
* The tone detector (`tone_source = "detector"`): a timm classifier of tone3 (A = FST I-II,
  B = III-IV, C = V-VI) trained with the reusable trainer on a dataset with annotated FST
  (Fitzpatrick17k) and scored on one with ground-truth tone3 (DDI). Its accuracy and per-tone
  F1 on that set are stored next to its weights in detector.json and copied into every split
  it annotates (`Split.meta["tone_estimation"]`), so a report shows how far to trust it.

Commands: `dermbench tone train` (also on real + generated images, `--synthetic`),
`dermbench tone annotate` and `dermbench tone compare` (ITA vs detectors per tone group, the
DermDiff paper's Table 3); see docs/tone.md.

Owns ita.py (the angle), detector.py (training and loading the detector), filling.py (tones
for a split), sources.py (every source's tones of a split, for tone-source scoring) and
compare.py (estimators scored per tone group). Imports data/, train/ (the detector is trained
with the shared trainer) and evaluation/ (the ToneViews that tone-source scoring takes), never
anything above.
"""

from dermbench.tone.filling import fill_missing_tones

__all__ = ["fill_missing_tones"]
