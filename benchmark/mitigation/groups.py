"""The sensitive groups of a fairness objective and which of them is privileged.

The scheme is a setting (`tone2` light/dark by default, `sex` on ISIC 2019, any scheme the
data has). A training sample whose group is unknown (FST -1, a missing sex) is left out of
the scoring and balancing sets and counted, never put into a group. The privileged group is
by default the one on which the trained ERM model has the higher validation macro-F1 (on
Fitzpatrick17k with 114 conditions the dark group, per the FairQuantize paper), or set by the
user; the record says which and why. With more than two groups, "unprivileged" is every other
group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.metrics import f1_score

from dermbench.data.model import Split
from dermbench.errors import ConfigError, DataError, UnknownNameError, unknown_name
from dermbench.train.trainer import group_codes, group_names

if TYPE_CHECKING:
    from dermbench.context import RunContext

AUTO = "auto"


@dataclass(frozen=True)
class SensitiveGroups:
    """The groups of `scheme` on a training split: each sample's group id (an index into `names`,
    -1 when unknown) and the privileged group with the reason it was chosen."""

    scheme: str
    names: tuple[str, ...]
    codes: np.ndarray
    privileged: str
    reason: str
    val_macro_f1: dict[str, float]

    @property
    def unprivileged(self) -> tuple[str, ...]:
        return tuple(g for g in self.present if g != self.privileged)

    @property
    def present(self) -> tuple[str, ...]:
        return tuple(g for i, g in enumerate(self.names) if (self.codes == i).any())

    @property
    def unknown(self) -> int:
        return int((self.codes < 0).sum())

    def members(self, groups: tuple[str, ...] | str) -> np.ndarray:
        """Positions of the training samples in `groups` (one name or several)."""
        wanted = [self.names.index(g) for g in ((groups,) if isinstance(groups, str) else groups)]
        return np.flatnonzero(np.isin(self.codes, wanted))

    def as_record(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "train_counts": {
                g: int((self.codes == i).sum()) for i, g in enumerate(self.names) if g in self.present
            },
            "unknown_group_excluded": self.unknown,
            "privileged": self.privileged,
            "unprivileged": list(self.unprivileged),
            "privileged_reason": self.reason,
            "val_macro_f1": self.val_macro_f1,
        }


def sensitive_groups(
    ctx: RunContext, model, train: Split, val: Split, *, scheme: str, privileged: str = AUTO
) -> SensitiveGroups:
    """The groups of `scheme` on `train`, with the privileged one chosen on `val` by the trained
    `model`'s macro-F1 per group (or given). Two present groups at least are needed."""
    names = group_names(scheme)
    codes = group_codes(train, scheme)
    present = [g for i, g in enumerate(names) if (codes == i).any()]
    if len(present) < 2:
        raise DataError(
            f"the fairness objective needs two {scheme} groups in the training split {train.name!r}, found "
            f"{present or 'none'} ({int((codes < 0).sum())} of {len(train)} samples have no {scheme} group); "
            "choose another scheme with the method's `groups` setting"
        )
    if privileged != AUTO and privileged not in present:
        raise unknown_name(
            "privileged group", privileged, present, where=f"scheme {scheme} (groups present in training)"
        )
    scores = _val_macro_f1(ctx, model, val, scheme, present, required=privileged == AUTO)
    if privileged == AUTO:
        best = max(present, key=lambda g: (scores[g], -present.index(g)))
        shown = ", ".join(f"{g} {scores[g]:.4f}" for g in present)
        reason = f"auto: highest validation macro-F1 of the ERM model ({shown})"
    else:
        best, reason = privileged, "set by the user"
    return SensitiveGroups(scheme, names, codes, best, reason, scores)


def _val_macro_f1(
    ctx: RunContext, model, val: Split, scheme: str, present: list[str], *, required: bool
) -> dict[str, float]:
    """Validation macro-F1 per group; a group without validation samples is an error when the
    scores choose the privileged group (`required`), else it is left out (the record shows it)."""
    codes = group_codes(val, scheme)
    pred = ctx.predict_proba(model, val).argmax(1)
    y = val.labels
    names = group_names(scheme)
    scores = {}
    for g in present:
        members = codes == names.index(g)
        if not members.any():
            if not required:
                continue
            raise DataError(
                f"the validation split {val.name!r} has no {scheme} group {g!r} sample, so the privileged "
                "group cannot be chosen on validation; set the method's `privileged` setting"
            )
        scores[g] = float(f1_score(y[members], pred[members], average="macro", zero_division=0))
    return scores


def check_scheme(scheme: Any, setting: str) -> str:
    """The scheme name configured as `setting` (e.g. "fairprune.groups"), or a ConfigError naming it."""
    if not isinstance(scheme, str):
        raise ConfigError(f"{setting} must be a group scheme name such as tone2 or sex, got {scheme!r}")
    try:
        group_names(scheme)
    except UnknownNameError as exc:  # it names the closest scheme
        raise ConfigError(f"{setting}: {exc}") from None
    return scheme
