"""The hook contract, composition order and plugin discovery."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dermbench.errors import DermbenchError, UnknownNameError
from dermbench.plugins import PluginError, make_manager, method_refs, parse_method_spec

WRAPPERS = '''
from dermbench.hookspecs import hookimpl

class Tag:
    """A method whose hooks record the order they ran in."""
    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    @hookimpl
    def dermbench_method_defaults(self, profile):
        return {self.name: {"strength": 1}}

    @hookimpl
    def augment(self, ctx, train):
        self.calls.append(f"augment:{self.name}")
        return f"extra-{self.name}"

    @hookimpl(wrapper=True)
    def fit(self, ctx, model, train, val):
        self.calls.append(f"enter:{self.name}")
        model = yield
        self.calls.append(f"exit:{self.name}")
        return f"{self.name}({model})"

CALLS = []
alpha = Tag("alpha", CALLS)
beta = Tag("beta", CALLS)

class Trainer:
    name = "trainer"
    @hookimpl
    def fit(self, ctx, model, train, val):
        CALLS.append("fit:trainer")
        return "trained"

trainer = Trainer()

class Silent:
    name = "silent"
    def fit(self, ctx, model, train, val):  # not a hookimpl
        return model

silent = Silent()

class Lazy:
    """A method whose fit and predict return None: pluggy would ask ERM instead."""
    name = "lazy"
    @hookimpl
    def fit(self, ctx, model, train, val):
        CALLS.append("fit:lazy")
        return None
    @hookimpl
    def predict(self, ctx, model, split):
        return None

lazy = Lazy()

class Broken:
    """A fit wrapper that fails after the inner fit, and one that forgets to return."""
    name = "broken"
    @hookimpl(wrapper=True)
    def fit(self, ctx, model, train, val):
        model = yield
        raise KeyError("missing layer")

class Forgetful:
    name = "forgetful"
    @hookimpl(wrapper=True)
    def fit(self, ctx, model, train, val):
        yield

broken = Broken()
forgetful = Forgetful()
'''


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    (tmp_path / "tagplugins.py").write_text(WRAPPERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("tagplugins", None)
    import tagplugins

    tagplugins.CALLS.clear()
    yield tagplugins
    sys.modules.pop("tagplugins", None)


LOCAL = (
    "tagplugins:alpha",
    "tagplugins:beta",
    "tagplugins:trainer",
    "tagplugins:silent",
    "tagplugins:lazy",
    "tagplugins:broken",
    "tagplugins:forgetful",
)


def test_erm_is_the_fallback_fit(plugin_module):
    pm, loaded = make_manager("alpha", LOCAL)
    assert [p.name for p in loaded] == ["erm", "alpha"]
    ctx_calls = []

    class Ctx:
        def pretrained_erm(self, train, val):
            ctx_calls.append("erm")
            return "erm-trained"

    assert pm.hook.fit(ctx=Ctx(), model="m", train=None, val=None) == "alpha(erm-trained)"
    assert ctx_calls == ["erm"]


def test_composition_order_wrappers_and_pooled_augment(plugin_module):
    pm, _ = make_manager("trainer+alpha+beta", LOCAL)
    result = pm.hook.fit(ctx=None, model="m", train=None, val=None)
    # the method named last wraps the ones before it; the innermost fit is the non-ERM one
    assert result == "beta(alpha(trained))"
    assert plugin_module.CALLS == ["enter:beta", "enter:alpha", "fit:trainer", "exit:alpha", "exit:beta"]
    assert sorted(pm.hook.augment(ctx=None, train=None)) == ["extra-alpha", "extra-beta"]
    defaults = pm.hook.dermbench_method_defaults(profile="tiny")
    assert {"alpha": {"strength": 1}} in defaults and {"beta": {"strength": 1}} in defaults


def test_the_trace_names_who_answered_and_wrappers_keep_working(plugin_module):
    pm, _ = make_manager("trainer+alpha+beta", LOCAL)
    call = pm.trace.begin("fit")
    assert pm.hook.fit(ctx=None, model="m", train=None, val=None) == "beta(alpha(trained))"
    assert (call.answer, call.wrappers, call.returned_none) == ("trainer", ["alpha", "beta"], [])
    pm.hook.augment(ctx=None, train=None)
    assert sorted(pm.trace.calls["augment"].answered) == ["alpha", "beta"]


def test_a_none_from_a_method_is_refused_before_erm_answers(plugin_module):
    pm, _ = make_manager("lazy", LOCAL)

    class Ctx:
        def train_model(self, *args, **kw):
            raise AssertionError("ERM's fit must not run for a method whose fit returned None")

    with pytest.raises(PluginError, match="method plugin 'lazy': its fit returned None") as info:
        pm.hook.fit(ctx=Ctx(), model="m", train=None, val=None)
    assert (info.value.plugin, info.value.hook) == ("lazy", "fit")
    with pytest.raises(PluginError, match="method plugin 'lazy': its predict returned None"):
        pm.hook.predict(ctx=Ctx(), model="m", split=None)


def test_wrapper_failures_name_the_wrapper(plugin_module):
    pm, _ = make_manager("trainer+broken", LOCAL)
    with pytest.raises(PluginError, match="plugin 'broken' failed in fit: KeyError: 'missing layer'") as info:
        pm.hook.fit(ctx=None, model="m", train=None, val=None)
    assert isinstance(info.value.__cause__, KeyError)  # the CLI prints its traceback under --verbose
    pm, _ = make_manager("trainer+forgetful", LOCAL)
    with pytest.raises(PluginError, match="method plugin 'forgetful': its fit wrapper returned None"):
        pm.hook.fit(ctx=None, model="m", train=None, val=None)


def test_unknown_and_malformed_method_names(plugin_module):
    with pytest.raises(
        UnknownNameError, match=r"unknown method 'ermm'.*Did you mean 'erm'.*Known methods: .*erm"
    ):
        make_manager("ermm")
    with pytest.raises(DermbenchError, match="appears twice"):
        parse_method_spec("erm+erm")
    with pytest.raises(DermbenchError, match="expected NAME"):
        parse_method_spec("erm+")
    with pytest.raises(DermbenchError, match="implements no dermbench hook"):
        make_manager("silent", LOCAL)
    with pytest.raises(DermbenchError, match="cannot import plugin module 'nosuchmodule'"):
        make_manager("erm", ("nosuchmodule:thing",))


def _fake_distribution(site: Path, name: str, version: str, entry: str) -> None:
    """Real entry-point metadata for an installed distribution, without pip or network."""
    pkg = site / f"{name}_plugin"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        textwrap.dedent("""
        from dermbench.hookspecs import hookimpl
        name = "groupbalanced"

        @hookimpl
        def dermbench_method_defaults(profile):
            return {"groupbalanced": {"sampler": "group"}}

        @hookimpl
        def fit(ctx, model, train, val):
            return ctx.train_model(model, train, val, name="groupbalanced",
                                   settings={"sampler": ctx.hparams("groupbalanced")["sampler"]})
        """)
    )
    dist = site / f"{name}_plugin-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}-plugin\nVersion: {version}\n")
    (dist / "entry_points.txt").write_text(f"[dermbench.methods]\ngroupbalanced = {entry}\n")
    (dist / "top_level.txt").write_text(f"{name}_plugin\n")


def test_entry_point_discovery_and_autoload_switch(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "acme", "1.2.3", "acme_plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    refs = method_refs()
    assert refs["groupbalanced"].source == "entry point"
    assert (refs["groupbalanced"].package, refs["groupbalanced"].version) == ("acme-plugin", "1.2.3")
    monkeypatch.setenv("DERMBENCH_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "groupbalanced" not in method_refs()


@pytest.mark.slow  # starts subprocesses
def test_third_party_plugin_through_the_cli(tmp_path):
    site = tmp_path / "site"
    _fake_distribution(site, "acme", "1.2.3", "acme_plugin")
    env = {"PYTHONPATH": str(site), "PATH": "", "COLUMNS": "200"}
    listing = subprocess.run(
        [sys.executable, "-m", "dermbench.cli", "list", "methods", "--hooks"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    line = next(ln for ln in listing.splitlines() if "groupbalanced" in ln)
    assert "acme-plugin" in line and "1.2.3" in line and "fit" in line
    out = tmp_path / "runs"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "dermbench.cli",
            "run",
            "--method",
            "groupbalanced",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--set",
            "data.image_size=16",
            "--set",
            "model.backbone=test_resnet",
            "--set",
            "train.epochs=1",
            "--set",
            "eval.n_boot=0",
            "--set",
            "data.options={n_train: 200, n_val: 60, n_test: 60, n_test_ddi: 60, n_test_dermoscopic: 60}",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    (record,) = out.glob("groupbalanced_synthderm_s0_*/metrics.json")
    import json

    metrics = json.loads(record.read_text())
    assert metrics["plugins"]["groupbalanced"] == "1.2.3"
    assert metrics["config"]["groupbalanced"]["sampler"] == "group"
    assert set(metrics["eval"]) == {"synthderm", "synthderm-ddi", "synthderm-dermoscopic"}


def test_check_settings_is_a_listed_hook():
    """A plugin that implements only dermbench_check_settings is a plugin (issue 26): the hook is
    in HOOK_NAMES, so `dermbench list methods` shows it and its failures are named like the others."""
    import types

    from dermbench.hookspecs import hookimpl
    from dermbench.plugins import HOOK_NAMES, hooks_of

    @hookimpl
    def dermbench_check_settings(config):
        return None

    plugin = types.SimpleNamespace(dermbench_check_settings=dermbench_check_settings)
    assert "dermbench_check_settings" in HOOK_NAMES
    assert hooks_of(plugin) == ["dermbench_check_settings"]


SIBLING_PLUGIN = """
import sibhelper  # a module beside this file, imported when the plugin loads

from dermbench.hookspecs import hookimpl


@hookimpl
def dermbench_method_defaults(profile):
    import siblazy  # and one imported later, inside a hook

    return {"sibplug": {"strength": sibhelper.STRENGTH, "steps": siblazy.STEPS}}
"""


def test_a_plugin_file_imports_the_modules_beside_it(tmp_path, monkeypatch):
    """`--plugin path/to/file.py` put only the file on the import machinery, so `import helper`
    of a module in the same folder failed with ModuleNotFoundError (issue 27)."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "sibplug.py").write_text(SIBLING_PLUGIN)
    (folder / "sibhelper.py").write_text("STRENGTH = 3\n")
    (folder / "siblazy.py").write_text("STEPS = 7\n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # not the plugin's folder
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("sibplug", "sibhelper", "siblazy"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    pm, _ = make_manager("sibplug", ("../plugins/sibplug.py",))
    assert {"sibplug": {"strength": 3, "steps": 7}} in pm.hook.dermbench_method_defaults(profile="tiny")
    assert sys.modules["sibhelper"].__file__ == str(folder / "sibhelper.py")


def test_a_plugin_file_that_fails_to_import_leaves_the_path_as_it_was(tmp_path, monkeypatch):
    (tmp_path / "brokenplug.py").write_text("import sibnothere\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "brokenplug", raising=False)
    before = list(sys.path)
    with pytest.raises(DermbenchError, match=r"No module named 'sibnothere' \(brokenplug\.py imports it"):
        make_manager("brokenplug", (str(tmp_path / "brokenplug.py"),))
    assert sys.path == before
