"""`dermbench cite`, the plugins' REFERENCES, the list in docs/cite.md, LICENSE and CITATION.cff."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import timm
import yaml
from torch import nn

from dermbench import __version__
from dermbench.cli import main
from dermbench.plugins import BUILTIN_DATASETS, BUILTIN_METHODS, dataset_refs, load_target, method_refs
from dermbench.results.backbone_refs import DERMBENCH_TITLE, backbone_family, backbone_references
from dermbench.results.bibtex import BibtexError, check_entry, entry_key, fields, one_line
from dermbench.results.citations import (
    all_references,
    as_markdown,
    model_backbones,
    plugin_references,
    run_references,
)
from dermbench.results.records import write_done

ROOT = Path(__file__).resolve().parents[1]
KEY = re.compile(r"^@\w+\{([^,]+),", re.M)


def cite(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["cite", *args])
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())  # the error console wraps long lines


def keys(bib: str) -> set[str]:
    return set(KEY.findall(bib))


@pytest.mark.slow
def test_a_fairquantize_run_cites_its_paper_its_datasets_and_backbone_and_nothing_else(
    make_data_home, tmp_path, monkeypatch, capsys
):
    """Fitzpatrick17k with DDI beside it (Derm7pt, MClass, ISIC absent, so skipped): the record
    and `dermbench cite RUN_DIR` name exactly FairQuantize, Fitzpatrick17k, DDI, ResNet, timm and
    dermbench."""
    home = make_data_home(n_fitz=300, include=("ddi",), size=16)
    monkeypatch.setenv("DERMBENCH_DATA", str(home))
    out = tmp_path / "runs"
    code = main(
        [
            "run",
            "--method",
            "fairquantize",
            "--dataset",
            "fitz17k",
            "--profile",
            "tiny",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--set",
            "data.image_size=16",
            "--set",
            "model.backbone=resnet18",
            "--set",
            "train.epochs=1",
            "--set",
            "eval.n_boot=0",
            "--set",
            "fairquantize.step=0.1",
            "--set",
            "fairquantize.target=0.1",
            "--set",
            "fairquantize.score_samples=16",
        ]
    )
    assert code == 0
    capsys.readouterr()
    (run_dir,) = out.glob("fairquantize_fitz17k_s0_*")
    record = json.loads((run_dir / "metrics.json").read_text())
    assert set(record["eval"]) == {"fitz17k", "ddi"} and "derm7pt-derm" in record["skipped_test_sets"]
    assert set(record["references"]) == {
        "dermbench",
        "method fairquantize",
        "dataset fitz17k",
        "dataset ddi",
        "backbone resnet18",
    }

    code, bib, _ = cite(capsys, str(run_dir))
    assert code == 0
    expected = {
        "dermbench",
        "guo2024fairquantize",
        "groh2021evaluating",
        "daneshjou2022disparities",
        "he2016deep",
        "rw2019timm",
    }
    assert keys(bib) == expected  # nothing it did not use: no Derm7pt, MClass, ISIC, FairPrune, ...
    assert "FairQuantize}: Achieving Fairness Through Weight Quantization" in bib
    assert "with the {Fitzpatrick} 17k Dataset" in bib and "Deep Residual Learning" in bib

    # a record written before references were stored: gathered from its method, datasets, backbone
    del record["references"]
    (run_dir / "metrics.json").write_text(json.dumps(record))
    write_done(run_dir)  # as such a run was finished (an edit alone is refused: it changes a finished record)
    code, derived, err = cite(capsys, str(run_dir))
    assert code == 0 and keys(derived) == expected and "predates stored references" in err


def test_cite_before_a_run_takes_the_backbone_from_the_profile(capsys):
    code, bib, _ = cite(capsys, "--method", "fairquantize", "--dataset", "fitz17k")
    assert code == 0
    assert keys(bib) == {"dermbench", "guo2024fairquantize", "groh2021evaluating", "he2016deep", "rw2019timm"}
    code, bib, _ = cite(capsys, "--method", "fairquantize", "--dataset", "fitz17k", "--profile", "paper")
    assert keys(bib) == {
        "dermbench",
        "guo2024fairquantize",
        "groh2021evaluating",
        "simonyan2015very",
        "rw2019timm",
    }
    code, bib, _ = cite(
        capsys,
        "--method",
        "dermdiff+fairprune",
        "--dataset",
        "isic2019",
        "--backbone",
        "vit_base_patch16_224",
    )
    assert keys(bib) == {
        "dermbench",
        "munia2025dermdiff",
        "wu2022fairprune",
        "tschandl2018ham10000",
        "codella2018skin",
        "combalia2019bcn20000",
        "dosovitskiy2021image",
        "rw2019timm",
    }


def test_bad_input_gets_an_error_naming_the_value(tmp_path, capsys):
    code, out, err = cite(capsys, str(tmp_path))
    assert code == 2 and out == "" and "metrics.json" in err and "missing" in err
    code, _, err = cite(capsys, str(tmp_path / "nope"))
    assert code == 2 and "nope" in err and "not a run folder" in err
    code, _, err = cite(capsys, "--method", "fairquantise", "--dataset", "fitz17k")
    assert code == 2 and "'fairquantise'" in err and "Did you mean 'fairquantize'" in err
    code, _, err = cite(capsys, "--method", "erm", "--dataset", "fitz17")
    assert code == 2 and "'fitz17'" in err and "Did you mean 'fitz17k'" in err
    code, _, err = cite(capsys, "--method", "erm")
    assert code == 2 and "--dataset" in err
    code, _, err = cite(capsys)
    assert code == 2 and "exactly one of" in err


def test_every_builtin_plugin_carries_well_formed_references():
    """Each built-in method and dataset cites at least one paper (ERM: Vapnik's risk minimisation;
    SynthDerm: the datasets and tone categories it mimics); every entry parses, has title, author
    and year, and one key never names two different entries."""
    by_key: dict[str, str] = {}
    for kind, refs in (("method", method_refs()), ("dataset", dataset_refs())):
        builtins = BUILTIN_METHODS if kind == "method" else BUILTIN_DATASETS
        for name in builtins:
            entries = plugin_references(load_target(refs[name].target), what=f"{kind} {name}")
            assert entries, f"{kind} {name} declares no references"
            for entry in entries:
                assert by_key.setdefault(entry_key(entry), entry) == entry, entry_key(entry)


def test_the_docs_cite_list_is_the_generated_list():
    text = (ROOT / "docs" / "cite.md").read_text()
    match = re.search(r"<!-- cite:start[^\n]*-->\n(.*?)<!-- cite:end -->", text, re.S)
    assert match, "docs/cite.md lacks the cite:start/cite:end markers"
    assert match.group(1) == as_markdown(all_references()), (
        "docs/cite.md's list is stale: paste `dermbench cite --all --markdown`"
    )


def test_backbone_families_and_unknown_backbones():
    assert backbone_family("resnet50") == "resnet" and backbone_family("resnext50_32x4d") == "resnext"
    assert backbone_family("vgg11_bn") == "vgg" and backbone_family("tf_efficientnet_b0") == "tf_efficientnet"
    assert [entry_key(e) for e in backbone_references("test_resnet")] == [
        "rw2019timm"
    ]  # timm alone, no guess
    refs = run_references(method="erm", datasets=["synthderm"], backbones=[])
    assert set(refs) == {"dermbench", "method erm", "dataset synthderm"}
    assert [entry_key(e) for e in refs["method erm"]] == ["vapnik1992principles", "vapnik1998statistical"]
    assert [entry_key(e) for e in refs["dataset synthderm"]] == [
        "groh2021evaluating",
        "daneshjou2022disparities",
        "chardon1991skin",
        "delbino2006relationship",
    ]


def test_the_backbones_cited_are_those_inside_the_fitted_model():
    resnet = timm.create_model("resnet18", num_classes=2)
    assert model_backbones(resnet, "vgg11_bn") == ["resnet18"]  # what the model holds, not the setting
    probe = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))  # FEDD-like: no timm network
    assert model_backbones(probe, "resnet18") == []
    joint = nn.ModuleDict({"a": resnet, "b": timm.create_model("test_resnet", num_classes=2), "c": resnet})
    assert model_backbones(joint, "resnet18") == ["resnet18", "test_resnet"]
    assert model_backbones(object(), "resnet18") == ["resnet18"]  # not inspectable: the configured one


def test_bibtex_reading_and_its_errors():
    entry = '@article{k1, title = {A {B} c}, author = "X, Y and Z, W", year = 2020, note = {n}}'
    assert entry_key(entry) == "k1"
    assert fields(entry) == {"title": "A {B} c", "author": "X, Y and Z, W", "year": "2020", "note": "n"}
    assert one_line(entry) == "X and Z, *A B c*, 2020 [`k1`]"
    with pytest.raises(BibtexError, match="'k2' lacks author"):
        check_entry("@misc{k2, title = {T}, year = {2000}}")
    with pytest.raises(BibtexError, match="'k3'.*unbalanced"):
        fields("@misc{k3, title = {T, year = {2000}}")
    with pytest.raises(BibtexError, match="not a BibTeX entry"):
        entry_key("Groh et al. 2021")
    with pytest.raises(BibtexError, match="macros"):
        fields("@misc{k4, title = jan}")


def test_a_plugin_with_malformed_references_is_refused_by_name():
    class Plugin:
        REFERENCES = ("@misc{bad, title = {T}}",)

    with pytest.raises(BibtexError, match="'bad' lacks author, year"):
        plugin_references(Plugin, what="method x")
    with pytest.raises(TypeError, match="method y: REFERENCES must be a tuple"):
        plugin_references(type("P", (), {"REFERENCES": "@misc{a, title={t}}"}), what="method y")


def test_license_and_citation_file_agree_with_the_package():
    pyproject = (ROOT / "pyproject.toml").read_text()  # (tomllib is Python 3.11+; dermbench supports 3.10)
    project = {
        "license": re.search(r"^license = (.*)$", pyproject, re.M).group(1),
        "version": re.search(r'^version = "(.*)"$', pyproject, re.M).group(1),
    }
    license_text = (ROOT / "LICENSE").read_text()
    assert project["license"] == '{ text = "MIT" }'
    assert license_text.startswith("MIT License\n") and "dermbench contributors" in license_text
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in license_text
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    # the CFF 1.2.0 required keys and types (the full schema: `cffconvert --validate` where installed)
    assert cff["cff-version"] == "1.2.0"
    assert isinstance(cff["message"], str) and cff["message"].strip()
    assert cff["title"] == DERMBENCH_TITLE
    assert isinstance(cff["authors"], list) and cff["authors"]
    for person in cff["authors"]:
        assert set(person) & {"name", "family-names", "given-names"}, person
    assert cff["version"] == project["version"] == __version__
    assert cff["license"] == "MIT" and cff["type"] == "software"


@pytest.mark.skipif(
    shutil.which("cffconvert") is None, reason="cffconvert is not installed (it pins jsonschema<4)"
)
def test_citation_file_validates_against_the_cff_schema():
    result = subprocess.run(
        ["cffconvert", "--validate", "-i", str(ROOT / "CITATION.cff")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_list_cite_prints_every_listed_plugin_and_flags_one_without_references(tmp_path, monkeypatch, capsys):
    (tmp_path / "plainmethod.py").write_text(
        "from dermbench.hookspecs import hookimpl\n\nname = 'plainmethod'\n\n\n"
        "@hookimpl\ndef dermbench_method_defaults(profile):\n    return None\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["list", "methods", "--cite", "--plugin", "plainmethod"]) == 0
    bib = capsys.readouterr().out
    for name in BUILTIN_METHODS:
        assert f"% method {name}:" in bib
    assert "% method plainmethod: (declares no references)" in bib
    assert keys(bib) == {
        "idrissi2022simple",
        "zong2023medfair",
        "wu2022fairprune",
        "guo2024fairquantize",
        "jung2021fair",
        "munia2025dermdiff",
        "wang2024majority",
        "munia2025classndiff",
        "carrion2023fedd",
        "dhariwal2021diffusion",
        "baranchuk2022label",
        "vapnik1992principles",
        "vapnik1998statistical",
        "dermbench",
    }
    code, bib, _ = cite(
        capsys,
        "--method",
        "plainmethod",
        "--dataset",
        "synthderm",
        "--backbone",
        "resnet18",
        "--plugin",
        "plainmethod",
    )
    assert code == 0 and keys(bib) == {
        "dermbench",
        "he2016deep",
        "rw2019timm",
        "groh2021evaluating",
        "daneshjou2022disparities",
        "chardon1991skin",
        "delbino2006relationship",
    }
    assert "% method plainmethod: (declares no references)" in bib
