"""Plugin discovery and the per-run PluginManager.

Methods and datasets come from three places: built-ins, entry points of installed
distributions (groups `dermbench.methods` and `dermbench.datasets`; off when
DERMBENCH_DISABLE_PLUGIN_AUTOLOAD=1), and `--plugin module:object` references. Only the
methods a run selects are imported, and every run gets a fresh manager.
"""

from __future__ import annotations

import importlib
import inspect
import os
from dataclasses import dataclass
from importlib.metadata import entry_points, packages_distributions, version
from typing import Any

import pluggy

from dermbench import __version__, hookspecs
from dermbench.errors import DermbenchError, unknown_name

METHOD_GROUP = "dermbench.methods"
DATASET_GROUP = "dermbench.datasets"
HOOK_NAMES = ("dermbench_method_defaults", "augment", "fit", "predict")

BUILTIN_METHODS: dict[str, str] = {
    "erm": "dermbench.methods.erm",
}
BUILTIN_DATASETS: dict[str, str] = {
    "synthderm": "dermbench.datasets.synthderm:SynthDerm",
    "fitz17k": "dermbench.datasets.fitz17k:Fitz17k",
    "ddi": "dermbench.datasets.ddi:DDI",
    "derm7pt-derm": "dermbench.datasets.derm7pt:Derm7ptDerm",
    "derm7pt-clinic": "dermbench.datasets.derm7pt:Derm7ptClinic",
    "mclass-derm": "dermbench.datasets.mclass:MClassDerm",
    "mclass-clinic": "dermbench.datasets.mclass:MClassClinic",
    "isic2018": "dermbench.datasets.isic:ISIC2018",
    "isic2019": "dermbench.datasets.isic:ISIC2019",
    "pad-ufes-20": "dermbench.datasets.pad_ufes:PadUfes20",
}


@dataclass(frozen=True)
class PluginRef:
    """Where a plugin comes from, before it is imported."""

    name: str
    target: str  # "module" or "module:attribute"
    source: str  # "builtin", "entry point" or "--plugin"
    package: str
    version: str


def _autoload_enabled() -> bool:
    return os.environ.get("DERMBENCH_DISABLE_PLUGIN_AUTOLOAD", "") not in ("1", "true", "yes")


def _is_dataset(obj: Any) -> bool:
    """Whether `obj` subclasses `dermbench.data.Dataset`, read from its MRO: the data layer sits
    above this module (it asks it for dataset names), so this module cannot import it."""
    return inspect.isclass(obj) and any(
        (c.__module__, c.__qualname__) == ("dermbench.data.model", "Dataset") for c in obj.__mro__
    )


def _refs(group: str, builtins: dict[str, str], local: tuple[str, ...]) -> dict[str, PluginRef]:
    refs = {n: PluginRef(n, t, "builtin", "dermbench", __version__) for n, t in builtins.items()}
    if _autoload_enabled():
        for ep in entry_points(group=group):
            dist = ep.dist
            if ep.name in builtins:
                raise DermbenchError(
                    f"the installed package {dist.name if dist else '?'} registers a {group} plugin named "
                    f"{ep.name!r}, which is a built-in name; rename it (or set DERMBENCH_DISABLE_PLUGIN_AUTOLOAD=1)"
                )
            refs[ep.name] = PluginRef(
                ep.name, ep.value, "entry point", dist.name if dist else "?", dist.version if dist else "?"
            )
    for target in local:
        obj = load_target(target)
        if _is_dataset(obj) != (group == DATASET_GROUP):
            continue
        name = plugin_name(obj, target)
        if name in builtins:
            raise DermbenchError(f"--plugin {target} is named {name!r}, which is a built-in name; give it another name")
        package, ver = _package_of(obj)
        refs[name] = PluginRef(name, target, "--plugin", package, ver)
    return refs


def method_refs(local: tuple[str, ...] = ()) -> dict[str, PluginRef]:
    """Every method that can be selected, by name (nothing imported but `--plugin` targets)."""
    return _refs(METHOD_GROUP, BUILTIN_METHODS, local)


def dataset_refs(local: tuple[str, ...] = ()) -> dict[str, PluginRef]:
    """Every dataset that can be selected, by name."""
    return _refs(DATASET_GROUP, BUILTIN_DATASETS, local)


def load_target(target: str) -> Any:
    """Import "module" or "module:attr.path"; a class is instantiated with no arguments
    (method plugins) unless it is a dataset class, which the caller instantiates."""
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # a plugin's import may fail in any way; name it instead of a traceback
        raise DermbenchError(f"cannot import plugin module {module_name!r} ({target}): "
                             f"{type(exc).__name__}: {exc}") from exc
    for part in filter(None, attr.split(".")):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise DermbenchError(f"plugin {target!r}: module {module_name!r} has no attribute {part!r}") from exc
    return obj


def plugin_name(obj: Any, target: str) -> str:
    """A plugin's name: its `name` attribute, else the last part of its import path."""
    name = getattr(obj, "name", None)
    if isinstance(name, str) and name:
        return name
    return target.replace(":", ".").rsplit(".", 1)[-1].lower()


def _package_of(obj: Any) -> tuple[str, str]:
    module = inspect.getmodule(obj)
    top = (module.__name__ if module else "").split(".")[0]
    dists = packages_distributions().get(top, [])
    if dists:
        return dists[0], version(dists[0])
    return top or "?", str(getattr(module, "__version__", "local"))


def hooks_of(obj: Any) -> list[str]:
    """Names of the dermbench hooks `obj` implements."""
    return [h for h in HOOK_NAMES if getattr(getattr(obj, h, None), f"{hookspecs.PROJECT}_impl", None) is not None]


def _instantiate(obj: Any) -> Any:
    return obj() if inspect.isclass(obj) else obj


def parse_method_spec(spec: str) -> list[str]:
    """"dermdiff+fairquantize" -> ["dermdiff", "fairquantize"]; order is registration order."""
    names = [part.strip() for part in spec.split("+")]
    if not spec.strip() or any(not n for n in names):
        raise DermbenchError(f"bad method {spec!r}: expected NAME or NAME+NAME+...")
    if len(set(names)) != len(names):
        raise DermbenchError(f"bad method {spec!r}: a method appears twice")
    return names


@dataclass
class LoadedPlugin:
    name: str
    ref: PluginRef
    obj: Any


def make_manager(method: str, local: tuple[str, ...] = ()) -> tuple[pluggy.PluginManager, list[LoadedPlugin]]:
    """A fresh manager with ERM (the fallback fit/predict) and the methods in `method`."""
    refs = method_refs(local)
    names = parse_method_spec(method)
    for name in names:
        if name not in refs:
            raise unknown_name("method", name, refs)
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    loaded: list[LoadedPlugin] = []
    for name in ["erm", *[n for n in names if n != "erm"]]:
        ref = refs[name]
        obj = _instantiate(load_target(ref.target))
        if not hooks_of(obj):
            raise DermbenchError(
                f"plugin {name!r} ({ref.target}) implements no dermbench hook; decorate functions with "
                "dermbench.hookspecs.hookimpl"
            )
        pm.register(obj, name=name)
        loaded.append(LoadedPlugin(name, ref, obj))
    pm.check_pending()
    return pm, loaded


def make_dataset(name: str, *, root, options: dict, local: tuple[str, ...] = ()):
    """Instantiate dataset `name` (a `dermbench.data.Dataset` subclass)."""
    refs = dataset_refs(local)
    if name not in refs:
        raise unknown_name("dataset", name, refs)
    cls = load_target(refs[name].target)
    return cls(root=root, **options)
