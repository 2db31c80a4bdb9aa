"""Plugin discovery and the per-run PluginManager.

Methods and datasets come from three places: built-ins, entry points of installed
distributions (groups `dermbench.methods` and `dermbench.datasets`; off when
DERMBENCH_DISABLE_PLUGIN_AUTOLOAD=1), and `--plugin module:object` references (the module may
also be a file path, `--plugin path/to/mine.py[:object]`, or a `NAME.py` in the current folder; a
file's folder goes first on sys.path, so it imports the modules beside it). Only the methods a run
selects are imported, and every run gets a fresh manager.

The manager traces its hooks (`HookTrace`): which plugin answered `fit` and `predict`, which
`fit` wrappers ran, whose `augment` returned samples. A plain `fit`/`predict` that returns None
is refused at once (pluggy would otherwise fall through to ERM's and the record would name a
method that never ran), and an exception other than DermbenchError escaping a hook becomes a
`PluginError` naming the plugin and the hook.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from importlib.metadata import entry_points, packages_distributions, version
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from dermbench import __version__, hookspecs
from dermbench.errors import DermbenchError, unknown_name

METHOD_GROUP = "dermbench.methods"
DATASET_GROUP = "dermbench.datasets"
HOOK_NAMES = (
    "dermbench_method_defaults",
    "dermbench_check_settings",
    "augment",
    "fit",
    "predict",
    "dermbench_add_commands",
    "dermbench_models",
    "dermbench_classifier_role",
)
#: hooks where pluggy takes the first non-None answer: None from a plain implementation is refused
FIRSTRESULT_HOOKS = ("fit", "predict")

BUILTIN_METHODS: dict[str, str] = {
    "erm": "dermbench.methods.erm",
    "resampling": "dermbench.methods.resampling",
    "fairprune": "dermbench.methods.fairprune",
    "fairquantize": "dermbench.methods.fairquantize",
    "mfd": "dermbench.methods.mfd",
    "dermdiff": "dermbench.methods.dermdiff",
    "majority2minority": "dermbench.methods.majority2minority.plugin",
    "classndiff": "dermbench.methods.classndiff.plugin",
    "fedd": "dermbench.methods.fedd.plugin",
    "oracle": "dermbench.methods.oracle",
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
                    f"{ep.name!r}, which is a built-in name; rename it (or set "
                    "DERMBENCH_DISABLE_PLUGIN_AUTOLOAD=1)"
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
            raise DermbenchError(
                f"--plugin {target} is named {name!r}, which is a built-in name; give it another name"
            )
        package, ver = _package_of(obj)
        refs[name] = PluginRef(name, target, "--plugin", package, ver)
    return refs


def method_refs(local: tuple[str, ...] = ()) -> dict[str, PluginRef]:
    """Every method that can be selected, by name (nothing imported but `--plugin` targets)."""
    return _refs(METHOD_GROUP, BUILTIN_METHODS, local)


def dataset_refs(local: tuple[str, ...] = ()) -> dict[str, PluginRef]:
    """Every dataset that can be selected, by name."""
    return _refs(DATASET_GROUP, BUILTIN_DATASETS, local)


def is_file_target(module_part: str) -> bool:
    """Whether a --plugin target's module part is a file path (`mine.py`, `./mine.py`, `dir/mine`)."""
    return module_part.endswith(".py") or "/" in module_part or os.sep in module_part


def _how_to_import(module_name: str) -> str:
    return (
        f"make it importable: give its file (--plugin path/to/{module_name}.py), run from the folder "
        f"that holds {module_name}.py, add that folder to PYTHONPATH (PYTHONPATH=path/to/folder dermbench "
        "run ...), or install its package (pip install -e path/to/package)"
    )


def _import_failed(what: str, target: str, exc: Exception, *, importer: str) -> DermbenchError:
    """The error of a plugin whose own import failed; a missing dependency is named as one."""
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        detail += f" ({importer} imports it: install it, or make it importable)"
    return DermbenchError(f"cannot import plugin {what} ({target}): {detail}")


def _import_file(path: Path, target: str) -> ModuleType:
    """Import the plugin file `path` as a module named after it (kept in sys.modules, so a run that
    asks for the target again, and pickling, find the same module)."""
    path = path.expanduser()
    if path.suffix != ".py" and not path.is_file() and path.with_suffix(".py").is_file():
        path = path.with_suffix(".py")
    path = path.resolve()
    if not path.is_file():
        raise DermbenchError(f"plugin file {path} does not exist (--plugin {target})")
    name = path.stem
    existing = sys.modules.get(name)
    if existing is not None:
        where = getattr(existing, "__file__", None)
        if where is not None and Path(where).resolve() == path:
            return existing
        raise DermbenchError(
            f"--plugin {target}: a module named {name!r} is already imported "
            f"({where or 'built in'}); rename {path.name}"
        )
    if not name.isidentifier():
        raise DermbenchError(
            f"--plugin {target}: {path.name} cannot be a module name; rename it to a Python "
            "identifier (letters, digits, underscores), e.g. my_method.py"
        )
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise DermbenchError(f"--plugin {target}: {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    added = _put_folder_on_path(path.parent)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a plugin's import may fail in any way; name it instead of a traceback
        sys.modules.pop(name, None)
        if added:
            sys.path.remove(str(path.parent))
        raise _import_failed(f"file {path}", target, exc, importer=path.name) from exc
    return module


def _put_folder_on_path(folder: Path) -> bool:
    """Put a plugin file's folder first on sys.path, as `python folder/file.py` would, so that the
    file can import the modules beside it, at import time or later inside a hook (so it stays for
    the process). Returns whether it was added (it may be there already)."""
    entry = str(folder)
    if entry in sys.path:
        return False
    sys.path.insert(0, entry)
    importlib.invalidate_caches()  # a folder made after the last import would otherwise look empty
    return True


def _import_module(module_name: str, target: str) -> ModuleType:
    """Import a plugin by module name; a dotless name that is not importable but is a file NAME.py in
    the current folder is imported from there (README's example: `--plugin groupbalanced`)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        itself = exc.name is not None and (module_name == exc.name or module_name.startswith(f"{exc.name}."))
        if not itself:
            raise _import_failed(
                f"module {module_name!r}", target, exc, importer=f"module {module_name!r}"
            ) from exc
        local = Path.cwd() / f"{module_name}.py"
        if module_name.isidentifier() and local.is_file():
            return _import_file(local, target)
        raise DermbenchError(
            f"cannot import plugin module {module_name!r} ({target}): no module named {exc.name!r} "
            f"on the Python path; {_how_to_import(module_name.split('.')[-1])}"
        ) from exc
    except Exception as exc:  # a plugin's import may fail in any way; name it instead of a traceback
        raise _import_failed(
            f"module {module_name!r}", target, exc, importer=f"module {module_name!r}"
        ) from exc


def load_target(target: str) -> Any:
    """Import "module" or "module:attr.path" (the module may be a file path: "dir/mine.py:Mine"); a
    class is instantiated with no arguments (method plugins) unless it is a dataset class, which the
    caller instantiates."""
    module_name, _, attr = target.partition(":")
    if not module_name:
        raise DermbenchError(
            f"--plugin {target!r}: expected MODULE, MODULE:OBJECT or path/to/file.py[:OBJECT]"
        )
    obj: Any = (
        _import_file(Path(module_name), target)
        if is_file_target(module_name)
        else _import_module(module_name, target)
    )
    for part in filter(None, attr.split(".")):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise DermbenchError(
                f"plugin {target!r}: module {module_name!r} has no attribute {part!r}"
            ) from exc
    return obj


def plugin_name(obj: Any, target: str) -> str:
    """A plugin's name: its `name` attribute, else the last part of its import path."""
    name = getattr(obj, "name", None)
    if isinstance(name, str) and name:
        return name
    module_name, _, attr = target.partition(":")
    if is_file_target(module_name) and not attr:
        return Path(module_name).name.removesuffix(".py").lower()
    return target.replace(":", ".").rsplit(".", 1)[-1].lower()


@functools.cache
def _distributions_by_package(search_path: tuple[str, ...]) -> dict[str, list[str]]:
    """packages_distributions() for one sys.path: it reads every installed distribution's file
    list (seconds), and a run asks for each --plugin target more than once."""
    return packages_distributions()


def _package_of(obj: Any) -> tuple[str, str]:
    module = inspect.getmodule(obj)
    top = (module.__name__ if module else "").split(".")[0]
    dists = _distributions_by_package(tuple(sys.path)).get(top, [])
    if dists:
        return dists[0], version(dists[0])
    return top or "?", str(getattr(module, "__version__", "local"))


def hooks_of(obj: Any) -> list[str]:
    """Names of the dermbench hooks `obj` implements."""
    return [
        h for h in HOOK_NAMES if getattr(getattr(obj, h, None), f"{hookspecs.PROJECT}_impl", None) is not None
    ]


def _instantiate(obj: Any) -> Any:
    return obj() if inspect.isclass(obj) else obj


def parse_method_spec(spec: str) -> list[str]:
    """ "dermdiff+fairquantize" -> ["dermdiff", "fairquantize"]; order is registration order."""
    if not isinstance(spec, str):
        raise DermbenchError(f"bad method {spec!r}: expected NAME or NAME+NAME+... (a method name, e.g. erm)")
    names = [part.strip() for part in spec.split("+")]
    if not spec.strip() or any(not n for n in names):
        raise DermbenchError(f"bad method {spec!r}: expected NAME or NAME+NAME+...")
    if len(set(names)) != len(names):
        raise DermbenchError(f"bad method {spec!r}: a method appears twice")
    return names


class PluginError(DermbenchError):
    """A plugin broke the hook contract: it raised (the original exception is `__cause__`, whose
    traceback the CLI prints under --verbose) or returned what its hook cannot accept."""

    def __init__(self, message: str, *, plugin: str, hook: str) -> None:
        super().__init__(message)
        self.plugin, self.hook = plugin, hook

    def __reduce__(self) -> tuple:
        """Picklable with its keyword arguments (a sweep's worker process sends errors back)."""
        return (_plugin_error, (str(self), self.plugin, self.hook))


def _plugin_error(message: str, plugin: str, hook: str) -> PluginError:
    return PluginError(message, plugin=plugin, hook=hook)


@dataclass
class HookCall:
    """One call of a hook: who answered, who returned None, which wrappers ran."""

    hook: str
    answered: list[str] = field(
        default_factory=list
    )  # plain implementations with a non-None result, in call order
    returned_none: list[str] = field(default_factory=list)
    wrappers: list[str] = field(default_factory=list)  # in the order they finished: innermost first
    result_types: dict[str, type] = field(default_factory=dict)  # what each answer and wrapper returned

    @property
    def answer(self) -> str | None:
        """The plugin whose result a firstresult hook returned."""
        return self.answered[0] if self.answered else None


@dataclass
class HookTrace:
    """The latest call of each hook. A caller starts a call with `begin`; calls nobody began (the
    data layer calls each `augment` implementation itself) accumulate into one."""

    calls: dict[str, HookCall] = field(default_factory=dict)

    def begin(self, hook: str) -> HookCall:
        self.calls[hook] = HookCall(hook)
        return self.calls[hook]

    def current(self, hook: str) -> HookCall:
        return self.calls.setdefault(hook, HookCall(hook))


class Manager(pluggy.PluginManager):
    """A PluginManager that remembers the plugins a run selected and traces their hooks."""

    def __init__(self, selected: list[str]) -> None:
        super().__init__(hookspecs.PROJECT)
        self.selected = list(selected)
        self.trace = HookTrace()


def _plugin_failed(exc: Exception, plugin: str, hook: str) -> PluginError:
    err = PluginError(
        f"plugin {plugin!r} failed in {hook}: {type(exc).__name__}: {exc}", plugin=plugin, hook=hook
    )
    err.__cause__ = exc
    return err


def _traced_plain(
    function: Callable[..., Any], trace: HookTrace, plugin: str, hook: str
) -> Callable[..., Any]:
    """`function` reporting its result to `trace`; None from a firstresult hook is refused here,
    before pluggy moves on to the next implementation (ERM's, which would then train for it)."""

    @functools.wraps(function)
    def traced(*args: Any, **kwargs: Any) -> Any:
        try:
            result = function(*args, **kwargs)
        except DermbenchError:
            raise
        except Exception as exc:  # a plugin may fail in any way: name it instead of a bare traceback
            raise _plugin_failed(exc, plugin, hook) from exc
        call = trace.current(hook)
        if result is None:
            call.returned_none.append(plugin)
            if hook in FIRSTRESULT_HOOKS:
                raise PluginError(returned_none_message(plugin, hook), plugin=plugin, hook=hook)
        else:
            call.answered.append(plugin)
            call.result_types[plugin] = type(result)
        return result

    return traced


def _traced_wrapper(
    function: Callable[..., Generator], trace: HookTrace, plugin: str, hook: str, *, new_style: bool
) -> Callable[..., Generator]:
    """A `wrapper=True` (or old-style hookwrapper) generator, delegated to with `yield from` so
    pluggy's send/throw reach it unchanged; its failures are named like a plain hook's. A
    new-style wrapper's return value is the hook's result: None from it is refused too."""

    @functools.wraps(function)
    def traced(*args: Any, **kwargs: Any) -> Generator:
        try:
            result = yield from function(*args, **kwargs)
        except DermbenchError:
            raise
        except Exception as exc:
            raise _plugin_failed(exc, plugin, hook) from exc
        call = trace.current(hook)
        call.wrappers.append(plugin)
        if new_style:
            if result is None and hook in FIRSTRESULT_HOOKS:
                raise PluginError(
                    f"method plugin {plugin!r}: its {hook} wrapper returned None; a wrapper must "
                    f"return the result (the value its `yield` gave it, or its edited form)",
                    plugin=plugin,
                    hook=hook,
                )
            call.result_types[plugin] = type(result)
        return result

    return traced


def returned_none_message(plugin: str, hook: str) -> str:
    what = "the trained model" if hook == "fit" else "class probabilities"
    return (
        f"method plugin {plugin!r}: its {hook} returned None; pluggy would fall back to another plugin's "
        f"{hook} (ERM's) and the record would carry {plugin!r} for a method that did not run. {hook} must "
        f"return {what}"
    )


def _trace_hooks(pm: Manager) -> None:
    """Replace every registered implementation's function by its traced form (pluggy calls
    `hook_impl.function(*args)`; argument names were read at registration, so they stay)."""
    for hook in HOOK_NAMES:
        for impl in getattr(pm.hook, hook).get_hookimpls():
            if impl.wrapper or impl.hookwrapper:
                traced = _traced_wrapper(
                    impl.function, pm.trace, impl.plugin_name, hook, new_style=impl.wrapper
                )
            else:
                traced = _traced_plain(impl.function, pm.trace, impl.plugin_name, hook)
            impl.function = traced  # type: ignore[misc]


def predict_needs_fit(pm: pluggy.PluginManager) -> list[str]:
    """The plugins whose `predict` needs a fitted model (attribute `predict_needs_fit = True`):
    the harness then skips its check of `predict` on the untrained model before training."""
    return [
        impl.plugin_name
        for impl in pm.hook.predict.get_hookimpls()
        if getattr(impl.plugin, "predict_needs_fit", False) is True
    ]


def implementers(pm: pluggy.PluginManager, hook: str) -> list[str]:
    """Plugins with a plain (non-wrapper) implementation of `hook`."""
    return [
        impl.plugin_name
        for impl in getattr(pm.hook, hook).get_hookimpls()
        if not (impl.wrapper or impl.hookwrapper)
    ]


@dataclass
class LoadedPlugin:
    name: str
    ref: PluginRef
    obj: Any


def make_manager(method: str, local: tuple[str, ...] = ()) -> tuple[Manager, list[LoadedPlugin]]:
    """A fresh manager with ERM (the fallback fit/predict) and the methods in `method`, its
    hooks traced (see `HookTrace`)."""
    refs = method_refs(local)
    names = parse_method_spec(method)
    for name in names:
        if name not in refs:
            raise unknown_name("method", name, refs)
    pm = Manager(names)
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
    _trace_hooks(pm)
    return pm, loaded


def add_plugin_commands(subparsers, command: str | None) -> None:
    """Let the method plugins add their CLI commands to `subparsers` (hook `dermbench_add_commands`):
    the method named `command` first, the others only when it adds no command of that name, so
    `dermbench fedd ...` imports FEDD alone. A method that cannot be imported adds nothing here
    (`dermbench list methods --hooks` names its error). No run uses this manager."""
    refs = method_refs()
    first = [command] if command in refs else []
    for group in (first, [name for name in refs if name not in first]):
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        for name in group:
            try:
                pm.register(_instantiate(load_target(refs[name].target)), name=name)
            except DermbenchError:
                continue
        pm.hook.dermbench_add_commands(subparsers=subparsers)
        if command in subparsers.choices:
            return


def make_dataset(name: str, *, root, options: dict, local: tuple[str, ...] = ()):
    """Instantiate dataset `name` (a `dermbench.data.Dataset` subclass)."""
    refs = dataset_refs(local)
    if name not in refs:
        raise unknown_name("dataset", name, refs)
    cls = load_target(refs[name].target)
    return cls(root=root, **options)
