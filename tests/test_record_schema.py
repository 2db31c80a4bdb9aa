"""The run record schema: write/read round trip, schema versions, errors that name file and field,
and the committed records (written before `schema_version` existed) read as version 1."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pytest

from dermbench.config import data_digests, run_id
from dermbench.evaluation.metrics import fairness_report
from dermbench.results.leaderboard import config_variant
from dermbench.results.record_schema import SCHEMA_VERSION, Record, RecordError, encode_record
from dermbench.results.records import METRICS_FILE, RunDir, read_record, write_record

COMMITTED = Path(__file__).resolve().parents[1] / "leaderboards" / "records"
COMMITTED_CSV = COMMITTED.parent / "synthderm-malignant.csv"


def test_eval(*, multiclass: bool = False, n_boot: int = 20) -> dict:
    """An eval entry as the runner records it: fairness_report's output plus the tone facts."""
    rng = np.random.default_rng(0)
    n, k = 90, 3 if multiclass else 2
    y = rng.integers(0, k, n)
    prob = rng.dirichlet(np.ones(k), n) if multiclass else rng.random(n)
    tone3 = np.array(["A", "B", "C"] * (n // 3), dtype=object)
    fst = np.array(["1", "3", "5"] * (n // 3), dtype=object)
    entry = fairness_report(
        y_true=y,
        y_prob=prob,
        groups={"tone3": tone3, "fst": fst},
        threshold=None if multiclass else 0.4,
        n_boot=n_boot,
        seed=0,
        class_names=[f"c{i}" for i in range(k)],
    )
    entry["tone_source"] = {"annotated": 60, "ita": 30}
    entry["tone_estimation"] = {
        "source": "ita",
        "n_missing": 30,
        "n_estimated": 30,
        "n_unresolved": 0,
        "method": "mask skin class",
        "thresholds": {"1": "very light (ITA > 55)"},
        "note": "ITA is not FST",
        "agreement_on_annotated": {"n": 60, "n_no_skin": 1, "tone3_accuracy": 0.8},
    }
    entry["excluded"]["images"] = {"unreadable image": 2}
    entry["excluded"]["dataset (all splits)"] = {"no label": 5}
    return entry


test_eval.__test__ = False  # a fixture builder, not a test


def runner_dict(**top) -> dict:
    """The dict the runner builds (without schema_version, which write_record adds)."""
    cfg = {
        "method": "erm",
        "dataset": "synthderm",
        "task": "malignant",
        "seed": 0,
        "profile": "tiny",
        "device": "cpu",
        "out": "runs",
        "eval": {"threshold": "youden", "n_boot": 20},
    }
    return {
        "run_id": run_id(cfg),
        "method": "erm",
        "dataset": "synthderm",
        "task": "malignant",
        "seed": 0,
        "profile": "tiny",
        "config": cfg,
        "plugins": {"erm": "0.1.0"},
        "device": "cpu",
        "timing": {"total_s": 12.5, "resumed": False},
        "threshold_rule": "youden",
        "skipped_test_sets": {"isic2018": "no data"},
        "train_history": [{"epoch": 1, "loss": 0.5, "val_auc": 0.7}],
        "eval": {"synthderm": test_eval(), "fitz17k": test_eval(multiclass=True, n_boot=0)},
        **top,
    }


def test_round_trip_write_then_read(tmp_path):
    data = runner_dict()
    written = write_record(tmp_path, data)
    assert written.schema_version == SCHEMA_VERSION
    on_disk = json.loads((tmp_path / METRICS_FILE).read_text())
    assert on_disk == {
        "schema_version": SCHEMA_VERSION,
        **json.loads(json.dumps(data)),
    }  # same keys, same nesting
    assert list(on_disk) == ["schema_version", *data]  # and the runner's key order
    record = read_record(tmp_path / METRICS_FILE)
    assert record == written
    assert isinstance(record, Record)
    ev = record.eval["synthderm"]
    assert ev.fairness["tone3"].eodd_groups is not None and len(ev.fairness["tone3"].eodd_groups) == 2
    assert ev.excluded == {
        "tone3": {"missing group": 0},
        "fst": {"missing group": 0},
        "images": {"unreadable image": 2},
        "dataset (all splits)": {"no label": 5},
    }
    assert record.eval["fitz17k"].per_class is not None and record.eval["fitz17k"].ci is None
    assert "ci" not in on_disk["eval"]["fitz17k"] and "per_class" not in on_disk["eval"]["synthderm"]
    assert "synthetic" not in on_disk  # optional: absent unless augment added samples
    assert RunDir(tmp_path.parent, tmp_path.name).metrics() == on_disk


def test_numpy_values_from_the_runner_are_plain_json(tmp_path):
    data = runner_dict()
    data["eval"]["synthderm"]["tone_source"] = {"annotated": np.int64(60), "ita": np.int64(30)}
    data["timing"]["total_s"] = np.float64(12.5)
    record = write_record(tmp_path, data)
    assert record.eval["synthderm"].tone_source == {"annotated": 60, "ita": 30}
    assert json.loads((tmp_path / METRICS_FILE).read_text())["timing"]["total_s"] == 12.5


def test_synthetic_counts_round_trip(tmp_path):
    synthetic = {
        "n": 12,
        "by_plugin": {"dermdiff": 12},
        "by_group_label": {"A": {"benign": 2, "malignant": 2}, "C": {"benign": 4, "malignant": 4}},
    }
    write_record(tmp_path, runner_dict(synthetic=synthetic))
    record = read_record(tmp_path)
    assert record.synthetic is not None and record.synthetic.by_group_label["C"]["malignant"] == 4
    assert json.loads((tmp_path / METRICS_FILE).read_text())["synthetic"] == synthetic
    write_record(tmp_path, runner_dict(synthetic=None))
    assert "synthetic" not in json.loads((tmp_path / METRICS_FILE).read_text())


def test_record_without_schema_version_reads_as_version_1(tmp_path):
    data = json.loads(encode_record(write_record(tmp_path, runner_dict())))
    del data["schema_version"]
    (tmp_path / METRICS_FILE).write_text(json.dumps(data))
    assert read_record(tmp_path / METRICS_FILE).schema_version == 1


def test_newer_schema_version_names_file_and_field(tmp_path):
    data = json.loads(encode_record(write_record(tmp_path, runner_dict())))
    data["schema_version"] = SCHEMA_VERSION + 1
    path = tmp_path / METRICS_FILE
    path.write_text(json.dumps(data))
    with pytest.raises(RecordError) as info:
        read_record(path)
    assert str(path) in str(info.value)
    assert "$.schema_version" in str(info.value) and f"schema version {SCHEMA_VERSION + 1}" in str(info.value)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda r: r["eval"]["synthderm"]["overall"].update(auc="0.9"), "$.eval.synthderm.overall.auc"),
        (
            lambda r: r["eval"]["synthderm"]["groups"]["fst"]["5"].update(acc=[1]),
            "$.eval.synthderm.groups.fst.5.acc",
        ),
        (
            lambda r: r["eval"]["synthderm"]["fairness"]["tone3"].update(eodd_groups="A-C"),
            "$.eval.synthderm.fairness.tone3.eodd_groups",
        ),
        (
            lambda r: r["eval"]["synthderm"]["ci"]["fairness"]["tone3"].update(eodd={"lo": 0, "hi": 1}),
            "$.eval.synthderm.ci.fairness.tone3.eodd",
        ),
        (lambda r: r["eval"]["synthderm"].update(excluded={"tone3": 3}), "$.eval.synthderm.excluded.tone3"),
        (lambda r: r["eval"]["fitz17k"]["flags"].append("a flag"), "$.eval.fitz17k.flags[0]"),
        (lambda r: r["eval"]["synthderm"].update(surprise=1), "$.eval.synthderm"),
        (lambda r: r.update(plugins={"erm": {"version": "0.1.0"}}), "$.plugins.erm"),
    ],
)
def test_malformed_field_names_file_and_field(tmp_path, edit, field):
    data = json.loads(encode_record(write_record(tmp_path, runner_dict())))
    edit(data)
    path = tmp_path / METRICS_FILE
    path.write_text(json.dumps(data))
    with pytest.raises(RecordError) as info:
        read_record(path)
    assert str(info.value).startswith(f"{path}: {field}: ")


def test_write_refuses_a_record_off_the_schema(tmp_path):
    data = runner_dict()
    data["eval"]["synthderm"]["overall"]["auc"] = "high"
    with pytest.raises(RecordError, match=r"\$\.eval\.synthderm\.overall\.auc"):
        write_record(tmp_path, data)
    assert not (tmp_path / METRICS_FILE).exists()


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", ""])
def test_foreign_files_are_record_errors(tmp_path, text):
    path = tmp_path / METRICS_FILE
    path.write_text(text)
    with pytest.raises(RecordError, match=str(path)):
        read_record(path)


def test_every_committed_record_reads_as_its_version_and_keeps_its_content():
    paths = sorted(COMMITTED.glob(f"*/{METRICS_FILE}"))
    assert paths
    variants = set(pd.read_csv(COMMITTED_CSV)["variant"])
    for path in paths:
        raw = json.loads(path.read_text())  # with schema_version 1 or 2, or (older records) without it
        record = read_record(path)
        assert record.schema_version == raw.get("schema_version", 1) in (1, SCHEMA_VERSION)
        assert json.loads(encode_record(record)) == {"schema_version": record.schema_version, **raw}
        # the shared settings digest keeps run ids and leaderboard variants as committed
        digests = data_digests(record.data_fingerprint)
        assert run_id(record.config, digests) == record.run_id == path.parent.name
        assert config_variant(record.config, digests) in variants


def test_schema_is_documented_in_the_struct_order():
    """Field order is the order the runner writes: schema_version first, then the fields every
    record has, then the optional ones added since (so older records still read)."""
    fields = Record.__struct_fields__
    assert fields[0] == "schema_version" and fields.index("eval") < fields.index("synthetic")
    assert msgspec.json.decode(encode_record(read_record(sorted(COMMITTED.glob(f"*/{METRICS_FILE}"))[0])))
