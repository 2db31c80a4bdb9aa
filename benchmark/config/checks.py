"""Value checks on a resolved config, run before any data is loaded, so a bad setting stops a
run in a second with a message naming it, not after an epoch (or, worse, produces a record:
`train.epochs=0` used to finish with an untrained model that the leaderboard listed).

Types are already checked against the defaults by `merge`; this module checks ranges and
choices. Settings owned by other layers are checked where they live but also called up front
by the runner: the threshold rule (`dermbench.evaluation.thresholds.parse_rule`) and the device
(`dermbench.context.choose_device`).

A method checks its own section the same way (`check_ranges` over its own table of ranges,
`check_choice`), in its `dermbench_check_settings` hook, which the runner calls right after these
(`dermbench.runner.check_run`), also before any data loads: a generation count of 0 or an img2img
strength of 1.5 stops the run in a second, not after the diffusion model has trained.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from dermbench.errors import ConfigError

#: (section, key) -> (lowest, lowest allowed?, highest, highest allowed?, whole number?)
RANGES: dict[tuple[str, ...], tuple[float | None, bool, float | None, bool, bool]] = {  # see Range
    ("seed",): (0, True, None, False, True),
    ("data", "image_size"): (8, True, None, False, True),
    ("model", "drop_rate"): (0, True, 1, False, False),
    ("train", "epochs"): (1, True, None, False, True),
    ("train", "batch_size"): (1, True, None, False, True),
    ("train", "lr"): (0, False, None, False, False),
    ("train", "momentum"): (0, True, 1, False, False),
    ("train", "weight_decay"): (0, True, None, False, False),
    ("train", "step_size"): (1, True, None, False, True),
    ("train", "gamma"): (0, False, None, False, False),
    ("train", "focal_gamma"): (0, True, None, False, False),
    ("eval", "n_boot"): (0, True, None, False, True),
    ("augment", "ratio"): (0, False, None, False, False),
}
CHOICES: dict[tuple[str, ...], tuple[str, ...]] = {
    ("data", "on_error"): ("stop", "skip"),
    ("data", "tone"): ("ita", "detector", "annotated"),
    ("train", "optimizer"): ("sgd", "adam", "adamw"),
    ("train", "schedule"): ("cosine", "step", "none"),
    ("train", "loss"): ("ce", "focal"),
    ("train", "sampler"): ("none", "class", "group", "sensitive"),
    ("train", "augment"): ("none", "flip", "standard", "notredame"),
    ("train", "select_metric"): ("auc", "acc", "bacc", "loss"),
    ("augment", "mix"): ("real+syn", "syn", "real"),
}


def setting_at(config: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """The value at `path` (("train", "epochs")) in a nested config, None where it is absent."""
    node: Any = config
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _interval(low, low_in, high, high_in) -> str:
    left = "any value" if low is None else f"{'>=' if low_in else '>'} {low:g}"
    if high is None:
        return left
    return f"{left} and {'<=' if high_in else '<'} {high:g}"


#: a RANGES entry: (lowest, lowest allowed?, highest, highest allowed?, whole number?)
Range = tuple[float | None, bool, float | None, bool, bool]
#: the common kinds of method setting, for the tables of `check_ranges`
COUNT: Range = (1, True, None, False, True)  # a positive whole number (steps, batch sizes, images per cell)
POSITIVE: Range = (0, False, None, False, False)  # a learning rate, a scale
NON_NEGATIVE: Range = (0, True, None, False, False)  # a weight, a guidance scale
PROBABILITY: Range = (0, True, 1, True, False)  # a rate in [0, 1]
FRACTION: Range = (0, False, 1, True, False)  # a share in (0, 1]: img2img strength, a pruning ratio


def check_range(name: str, value: Any, limits: Range, *, null: bool = False) -> None:
    """A ConfigError naming setting `name` when `value` is not a finite number within `limits`
    (None passes only where `null` allows it: "null" settings that mean "choose for me")."""
    low, low_in, high, high_in, whole = limits
    if value is None:
        if null:
            return
        raise ConfigError(f"setting {name!r} must be {_interval(low, low_in, high, high_in)}, got null")
    suffix = " or null" if null else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"setting {name!r} must be a finite number{suffix}, got {value!r}")
    if whole and value != int(value):
        raise ConfigError(f"setting {name!r} must be a whole number{suffix}, got {value!r}")
    too_low = low is not None and (value < low or (value == low and not low_in))
    too_high = high is not None and (value > high or (value == high and not high_in))
    if too_low or too_high:
        raise ConfigError(
            f"setting {name!r} must be {_interval(low, low_in, high, high_in)}{suffix}, got {value!r}"
        )


def check_ranges(
    section: Mapping[str, Any],
    ranges: Mapping[tuple[str, ...], Range],
    *,
    prefix: str,
    nullable: tuple[tuple[str, ...], ...] = (),
) -> None:
    """`check_range` for every path of `ranges` in a method's settings `section` (defaults merged
    in: an absent or null setting is an error unless its path is in `nullable`); messages name
    the setting as `prefix.path` (`dermdiff.finetune.steps`), like the shared settings'."""
    for path, limits in ranges.items():
        check_range(".".join((prefix, *path)), setting_at(section, path), limits, null=path in nullable)


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    """A ConfigError naming setting `name` when `value` is none of `allowed`."""
    if value not in allowed:
        raise ConfigError(f"setting {name!r} must be one of {', '.join(map(str, allowed))}, got {value!r}")


def check_values(config: dict) -> None:
    """Raise a ConfigError naming the first setting outside its range or choices."""
    for path, limits in RANGES.items():
        value = setting_at(config, path)
        if value is not None:  # absent: a section this config does not have
            check_range(".".join(path), value, limits)
    for path, allowed in CHOICES.items():
        value = setting_at(config, path)
        if value is not None:
            check_choice(".".join(path), value, allowed)
    if config.get("data", {}).get("tone") == "detector" and not config["data"].get("tone_detector"):
        raise ConfigError(
            "data.tone is 'detector' but data.tone_detector names no folder "
            "(train one with `dermbench tone train` and pass its folder)"
        )
