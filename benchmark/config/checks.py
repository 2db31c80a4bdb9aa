"""Value checks on a resolved config, run before any data is loaded, so a bad setting stops a
run in a second with a message naming it, not after an epoch (or, worse, produces a record:
`train.epochs=0` used to finish with an untrained model that the leaderboard listed).

Types are already checked against the defaults by `merge`; this module checks ranges and
choices. Settings owned by other layers are checked where they live but also called up front
by the runner: the threshold rule (`dermbench.evaluation.thresholds.parse_rule`) and the device
(`dermbench.context.choose_device`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from dermbench.errors import ConfigError

#: (section, key) -> (lowest, lowest allowed?, highest, highest allowed?, whole number?)
RANGES: dict[tuple[str, ...], tuple[float | None, bool, float | None, bool, bool]] = {
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
    ("train", "augment"): ("none", "flip", "standard"),
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


def check_values(config: dict) -> None:
    """Raise a ConfigError naming the first setting outside its range or choices."""
    for path, (low, low_in, high, high_in, whole) in RANGES.items():
        value = setting_at(config, path)
        if value is None:
            continue
        name = ".".join(path)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"setting {name!r} must be a finite number, got {value!r}")
        if whole and value != int(value):
            raise ConfigError(f"setting {name!r} must be a whole number, got {value!r}")
        too_low = low is not None and (value < low or (value == low and not low_in))
        too_high = high is not None and (value > high or (value == high and not high_in))
        if too_low or too_high:
            raise ConfigError(f"setting {name!r} must be {_interval(low, low_in, high, high_in)}, got {value!r}")
    for path, allowed in CHOICES.items():
        value = setting_at(config, path)
        if value is not None and value not in allowed:
            raise ConfigError(f"setting {'.'.join(path)!r} must be one of {', '.join(allowed)}, got {value!r}")
    if config.get("data", {}).get("tone") == "detector" and not config["data"].get("tone_detector"):
        raise ConfigError("data.tone is 'detector' but data.tone_detector names no folder "
                          "(train one with `dermbench tone train` and pass its folder)")
