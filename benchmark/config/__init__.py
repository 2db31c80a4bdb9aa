"""Run configuration: YAML defaults, profiles, method defaults, a user file and --set overrides.

Precedence, lowest first: profiles/base.yaml < profiles/<profile>.yaml < the selected methods'
`dermbench_method_defaults(profile)` < the user's --config file < --set key.sub=value < explicit
CLI flags (--seed, --device, ...). Only keys that exist in the merged defaults may be set; a
typo names the closest valid key. YAML is read with yaml.safe_load only.

Owns settings resolution, the packaged profiles (profiles/*.yaml), the packaged experiment
configs (experiments/*.yaml, found by `catalog`) and the run id. Imports only `dermbench.errors`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from dermbench.config.checks import check_values, setting_at
from dermbench.errors import ConfigError, closest

PROFILES = ("tiny", "paper")
#: keys whose value may hold any sub-keys (validated by the dataset or method that reads them)
FREE_FORM = {("data", "options")}
#: keys that do not change results, so they stay out of the run id. The device does change
#: them (mixed precision and channels-last on CUDA), so the runner stores the resolved device
#: type in the config before the id is taken. `train.num_workers` is no setting any more (the
#: image cache made loader workers pointless); it is still dropped because older records
#: (the committed ones among them) carry it, and their ids and config variants must not move.
NOT_IN_RUN_ID = (("out",), ("data", "root"), ("train", "num_workers"))
#: what a profile set before it changed, newest last: a record whose settings match an earlier
#: revision ran under that revision, and leaderboards label it `<profile>@<revision>`, so its
#: rows are never read as the current profile's (`profile_label`). tiny was 64 px and 6 epochs
#: until 2026-12 (docs/speed.md).
PROFILE_REVISIONS: dict[str, tuple[tuple[str, dict[tuple[str, ...], Any]], ...]] = {
    "tiny": (("2026-11", {("data", "image_size"): 64, ("train", "epochs"): 6}),),
}


def load_yaml(path: Path) -> dict:
    """A YAML mapping from `path`, with errors that name the file and line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
            f"{exc.start}); save it as UTF-8"
        ) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, not {type(data).__name__}")
    return data


def profile_label(profile: str, config: Mapping[str, Any]) -> str:
    """`profile`, or `profile@revision` when `config` has every setting of an earlier revision of it."""
    for revision, settings in reversed(PROFILE_REVISIONS.get(profile, ())):
        if all(setting_at(config, path) == expected for path, expected in settings.items()):
            return f"{profile}@{revision}"
    return profile


def _packaged_profile(name: str) -> dict:
    text = (
        resources.files("dermbench.config").joinpath("profiles", f"{name}.yaml").read_text(encoding="utf-8")
    )
    return yaml.safe_load(text) or {}


def merge(base: dict, override: dict, *, strict: bool, where: str, path: tuple[str, ...] = ()) -> dict:
    """Deep-merge `override` into a copy of `base`. With strict=True an unknown key is a
    ConfigError naming it and the closest known key, and a value of the wrong type is refused."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        key_path = (*path, str(key))
        dotted = ".".join(key_path)
        if key not in out:
            if strict and path not in FREE_FORM:
                guess = closest(str(key), [str(k) for k in out])
                hint = f"; did you mean {'.'.join((*path, guess))!r}?" if guess else ""
                raise ConfigError(f"unknown setting {dotted!r} in {where}{hint}")
            out[key] = copy.deepcopy(value)
            continue
        current = out[key]
        if isinstance(current, dict) and isinstance(value, dict) and key_path in FREE_FORM:
            # free keys, still merged: `--set data.options.x=1` keeps a config file's other options
            out[key] = merge(current, value, strict=False, where=where, path=key_path)
        elif isinstance(current, dict) and key_path not in FREE_FORM:
            if not isinstance(value, dict):
                raise ConfigError(f"setting {dotted!r} in {where} must be a mapping, got {value!r}")
            out[key] = merge(current, value, strict=strict, where=where, path=key_path)
        else:
            out[key] = copy.deepcopy(_checked(dotted, current, value, where) if strict else value)
    return out


def _checked(dotted: str, current: Any, value: Any, where: str) -> Any:
    """`value` if it fits the setting's default `current`, converted where YAML is too literal
    (it reads 1e-3 as a string); otherwise a ConfigError naming the setting."""
    if current is None or value is None:
        return value
    if isinstance(current, bool) or isinstance(value, bool):
        ok = isinstance(current, bool) == isinstance(value, bool) or isinstance(value, str)
    elif isinstance(current, float):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float))
    elif isinstance(current, int):
        ok = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        value = int(value) if ok else value
    elif isinstance(current, str):
        ok = isinstance(value, (str, int, float))  # e.g. eval.threshold "youden" -> 0.5
    else:
        ok = isinstance(value, type(current)) or isinstance(value, (list, float, int, str))
    if not ok:
        raise ConfigError(f"setting {dotted!r} in {where}: expected a value like {current!r}, got {value!r}")
    return value


def parse_set(item: str) -> dict:
    """'train.lr=0.01' -> {"train": {"lr": 0.01}}; the value is read as YAML (numbers, lists, null)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"bad --set {item!r}: expected KEY.SUB=VALUE, e.g. train.lr=0.01")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"bad --set {item!r}: value is not valid YAML ({exc})") from exc
    nested: dict = value
    for part in reversed(key.strip().split(".")):
        if not part:
            raise ConfigError(f"bad --set {item!r}: empty key part")
        nested = {part: nested}
    return nested


def requested(*, file: Path | None = None, sets: Sequence[str] = (), flags: dict | None = None) -> dict:
    """The settings as the user gave them over profiles/base.yaml, merged loosely (no key checked
    yet): enough to know the method, profile and dataset whose defaults `resolve` needs. An unknown
    profile stops here, naming the closest."""
    return _head(load_yaml(file) if file else {}, [parse_set(item) for item in sets], _given(flags))


def _given(flags: dict | None) -> dict:
    """The command-line flags the user set (None: not given)."""
    return {k: v for k, v in (flags or {}).items() if v is not None}


def _head(user: dict, overrides: list[dict], given: dict) -> dict:
    """`requested` from the already read file and parsed --set items."""
    head = merge(_packaged_profile("base"), user, strict=False, where="")
    for override in overrides:
        head = merge(head, override, strict=False, where="")
    head.update(given)
    profile = head.get("profile")
    if profile not in PROFILES:
        guess = closest(str(profile), PROFILES)
        raise ConfigError(
            f"unknown profile {profile!r}; known: {', '.join(PROFILES)}"
            + (f"; did you mean {guess!r}?" if guess else "")
        )
    return head


def resolve(
    *,
    file: Path | None = None,
    sets: Sequence[str] = (),
    flags: dict | None = None,
    method_defaults: Sequence[tuple[str, dict]] = (),
) -> dict:
    """The fully resolved config.

    `method_defaults` are the selected methods' defaults for the `requested` method, profile and
    dataset, as (plugin name, dict) pairs in registration order (the runner asks its plugin manager
    for them), so validation knows every key a method adds.
    """
    user = load_yaml(file) if file else {}
    overrides = [parse_set(item) for item in sets]
    given = _given(flags)
    profile = _head(user, overrides, given)["profile"]
    config = merge(
        _packaged_profile("base"), _packaged_profile(profile), strict=True, where=f"profile {profile!r}"
    )
    for method, defaults in method_defaults:
        config = merge_method_defaults(config, defaults, method=method)
    if user:
        config = merge(config, user, strict=True, where=f"config file {file}")
    for item, override in zip(sets, overrides):
        config = merge(config, override, strict=True, where=f"--set {item}")
    config = merge(config, given, strict=True, where="command line")
    check_values(config)
    return config


def merge_method_defaults(config: dict, defaults: dict, *, method: str) -> dict:
    """Merge one method's defaults. Its own section, named after it, is free (the method defines
    those keys); shared sections merge strictly, so a plugin's `{"train": {"epoch": 10}}` is an
    error naming `train.epochs` instead of a setting nothing reads."""
    where = f"the defaults of method {method!r}"
    if not isinstance(defaults, dict):
        raise ConfigError(f"{where} must be a mapping of settings, not {type(defaults).__name__}")
    for key, value in defaults.items():
        if key == method:
            config = merge(config, {key: value}, strict=False, where=where)
        elif key in config:
            config = merge(config, {key: value}, strict=True, where=where)
        else:
            guess = closest(str(key), [str(k) for k in config])
            hint = f"; did you mean {guess!r}?" if guess else ""
            raise ConfigError(
                f"unknown setting {key!r} in {where}{hint} (a method's own settings go under "
                f"its name, {method!r})"
            )
    return config


def settings_digest(
    config: dict, *, leave_out: tuple[tuple[str, ...], ...] = (), algorithm: str = "sha256", length: int = 12
) -> str:
    """A hex hash of every setting that can change results: the config without NOT_IN_RUN_ID
    and `leave_out`, as sorted JSON. One function, so the run id and the leaderboard's grouping
    of seeds (leave_out seed) strip and serialise alike; the algorithm and length stay
    parameters because both ids are already in committed files (run ids, leaderboard CSVs)."""
    hashed = copy.deepcopy(config) if isinstance(config, dict) else {}
    for path in (*NOT_IN_RUN_ID, *leave_out):
        node = hashed
        for part in path[:-1]:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(path[-1], None)
    text = json.dumps(hashed, sort_keys=True, default=str)
    return hashlib.new(algorithm, text.encode("utf-8")).hexdigest()[:length]


#: where the data fingerprint goes in the hashed material (a space, so no setting can be named so)
DATA_KEY = "data fingerprint"


def data_digests(fingerprints: Mapping[str, Mapping[str, Any] | None]) -> dict[str, str | None]:
    """{dataset: digest} from the full fingerprints a run records ({dataset: {"digest", ...} or None})."""
    return {name: fp["digest"] if fp is not None else None for name, fp in fingerprints.items()}


def with_data(config: dict, fingerprint: Mapping[str, str | None] | None) -> dict:
    """The material the run id (and the leaderboard variant) hash: the config and, when given,
    the data's digests ({dataset: digest}) under a key no setting can have."""
    return config if fingerprint is None else {**config, DATA_KEY: dict(sorted(fingerprint.items()))}


def run_id(config: dict, fingerprint: Mapping[str, str | None] | None = None) -> str:
    """A readable id whose suffix is a hash of every setting that can change results and of the
    data: `fingerprint` is {dataset: content digest, or None when unreadable} for every dataset
    the run uses (the runner's data_fingerprints), so the same settings on changed data are
    another run, while the same data under another root is the same run. Without a fingerprint
    the id covers the settings alone (tools that compare configs, not runs)."""
    digest = settings_digest(with_data(config, fingerprint))
    method = str(config["method"]).replace("+", "-")
    return f"{method}_{config['dataset']}_s{config['seed']}_{digest}"


def dump(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False)
