"""check_method, the conformance check third-party plugins run in their own tests."""

import sys

import pytest

from dermbench.conformance import check_method
from dermbench.errors import DermbenchError

PLUGIN = """
from dermbench.hookspecs import hookimpl

name = "badref"
REFERENCES = ("@article{nokey2024, title = {A title}, year = {2024}}",)  # no author


@hookimpl
def dermbench_method_defaults(profile):
    return {}
"""


def test_a_malformed_reference_fails_before_any_training(tmp_path, monkeypatch):
    (tmp_path / "badref.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("badref", None)
    with pytest.raises(DermbenchError, match=r"badref: its REFERENCES: .*nokey2024.*author"):
        check_method("badref", out=tmp_path / "runs", plugins=("badref",))
    assert not (tmp_path / "runs").exists()  # refused before the run started
