"""`dermbench new-method NAME`: scaffold an installable method plugin package with an entry
point and a conformance test, so a researcher starts from something that already runs."""

from __future__ import annotations

import argparse
import keyword
import re
from pathlib import Path

from rich.console import Console

from dermbench.errors import DermbenchError

PYPROJECT = """[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "dermbench-{name}"
version = "0.1.0"
description = "{name}: a dermbench method plugin"
requires-python = ">=3.10"
dependencies = ["dermbench"]

[project.entry-points."dermbench.methods"]
{name} = "dermbench_{module}.plugin"

[tool.setuptools]
package-dir = {{"" = "src"}}
packages = ["dermbench_{module}"]

[tool.pytest.ini_options]
addopts = "--import-mode=importlib"
"""

PLUGIN = '''"""{name}: a dermbench method plugin.

Implement only the hooks your method changes; ERM supplies the rest. This starting point
re-weights training toward rare (label, skin tone) cells, which is a real, if simple,
mitigation: replace it with yours.
"""

from dermbench.hookspecs import hookimpl

name = "{name}"


@hookimpl
def dermbench_method_defaults(profile):
    # Your hyperparameters, per profile; users change them with --set {name}.KEY=VALUE.
    return {{"{name}": {{"sampler": "group"}}}}


@hookimpl
def fit(ctx, model, train, val):
    settings = {{"sampler": ctx.hparams("{name}")["sampler"]}}
    return ctx.train_model(model, train, val, name="{name}", settings=settings)


# Optional hooks:
# @hookimpl
# def augment(ctx, train):  -> a dermbench.data.Split of extra samples, or None
# @hookimpl
# def predict(ctx, model, split):  -> numpy array (n, num_classes) of probabilities
'''

TEST = '''"""Conformance: the plugin is discovered through its entry point and completes a tiny run."""

from dermbench.conformance import check_method
from dermbench.plugins import method_refs


def test_entry_point_registered():
    assert "{name}" in method_refs()


def test_conformance(tmp_path):
    metrics = check_method("{name}", out=tmp_path)
    assert metrics["method"] == "{name}"
    assert "synthderm" in metrics["eval"]
'''

README = """# dermbench-{name}

A [dermbench](https://pypi.org/project/dermbench/) method plugin.

```bash
pip install -e .                      # registers the entry point
dermbench list methods                # {name} is listed
dermbench run --method {name}         # tiny SynthDerm run
pytest tests                          # conformance test
```
"""


def scaffold(name: str, directory: Path) -> Path:
    """Write the package for method `name` under `directory`; returns its folder."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or keyword.iskeyword(name):
        raise DermbenchError(
            f"method name {name!r} must be lower-case letters, digits and _, starting with a letter"
        )
    root = directory / f"dermbench-{name}"
    if root.exists():
        raise DermbenchError(f"{root} already exists; choose another name or directory")
    files = {
        "pyproject.toml": PYPROJECT,
        f"src/dermbench_{name}/__init__.py": '"""{name}: a dermbench method plugin."""\n',
        f"src/dermbench_{name}/plugin.py": PLUGIN,
        "tests/test_conformance.py": TEST,
        "README.md": README,
    }
    for rel, template in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(name=name, module=name), encoding="utf-8")
    return root


def cmd_new_method(args: argparse.Namespace) -> int:
    root = scaffold(args.name, Path(args.dir))
    Console().print(f"created {root}\nnext: [bold]pip install -e {root}[/] then [bold]pytest {root}/tests[/]")
    return 0


def register(sub) -> None:
    p = sub.add_parser("new-method", help="scaffold an installable method plugin package")
    p.add_argument("name", help="the method's name (lower case)")
    p.add_argument("--dir", default=".", help="where to create dermbench-NAME/")
    p.set_defaults(func=cmd_new_method)
