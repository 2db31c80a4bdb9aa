"""Fuzz tests (issue 27, item 7): whatever a user hands the metadata readers, the config loader or
the record reader, the answer is a result or a dermbench error with a message, never another
exception (a traceback).

Hypothesis runs a fixed, derandomized set of examples so CI is fast and repeatable; the numbers
run in CI are the `max_examples` below (EXAMPLES: metadata CSVs 150 raw + 150 per dataset, config
150 --set items + 150 YAML files, records 200 edited + 60 raw). Set DERMBENCH_FUZZ=N to run N
times as many, with fresh random draws, when hunting for bugs.
"""

from __future__ import annotations

import csv
import io
import json
import os
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dermbench.errors import DermbenchError

SCALE = max(1, int(os.environ.get("DERMBENCH_FUZZ", "1") or 1))
ROOT = Path(__file__).resolve().parents[1]


def fuzz(examples: int):
    """Settings: `examples` per run (times DERMBENCH_FUZZ), derandomized unless hunting."""
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        derandomize=SCALE == 1,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def answered(call) -> object:
    """The call's result, or None when it raised a dermbench error with a message; any other
    exception fails the test (with its traceback)."""
    try:
        return call()
    except DermbenchError as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        return None


# --------------------------------------------------------------------------- metadata CSVs

#: cell text a user's spreadsheet could hold: empty, spaces, numbers, booleans, quotes, delimiters,
#: newlines, non-ASCII, very long
CELL = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "nan",
            "NaN",
            "-1",
            "0",
            "1",
            "2",
            "3",
            "4",
            "5",
            "6",
            "7",
            "12",
            "34",
            "56",
            "1.5",
            "True",
            "False",
            "true",
            "yes",
            "no",
            "None",
            "null",
            "benign",
            "malignant",
            "non-neoplastic",
            "melanoma",
            "psoriasis",
            '"',
            ",",
            ";",
            "\t",
            "\n",
            "é",
            "\x00",
            "1e400",
            "x" * 300,
        ]
    ),
    st.text(alphabet=string.printable + "éü中", max_size=12),
)


def csv_text(header: list[str], rows: list[list[str]], delimiter: str = ",") -> str:
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=delimiter, lineterminator="\n").writerows([header, *rows])
    return buffer.getvalue()


@st.composite
def metadata_files(draw, columns: tuple[str, ...]) -> bytes:
    """A metadata CSV: mostly the expected columns (sometimes one dropped, repeated or renamed, extra
    ones, another delimiter) and fuzzed cells; sometimes raw bytes or a cut-off file."""
    kind = draw(st.sampled_from(["table", "table", "table", "raw", "cut"]))
    if kind == "raw":
        return draw(st.binary(max_size=300))
    header = list(columns)
    if draw(st.booleans()):
        edit = draw(st.sampled_from(["drop", "repeat", "rename", "extra", "pad"]))
        i = draw(st.integers(0, len(header) - 1))
        if edit == "drop":
            header.pop(i)
        elif edit == "repeat":
            header.insert(draw(st.integers(0, len(header))), header[i])
        elif edit == "rename":
            header[i] = draw(CELL)
        elif edit == "extra":
            header.append(draw(CELL))
        else:
            header[i] = f" {header[i]} "
    n_rows = draw(st.integers(0, 6))
    rows = [
        [draw(CELL) for _ in header] + ([draw(CELL)] if draw(st.integers(0, 9)) == 0 else [])
        for _ in range(n_rows)
    ]
    delimiter = draw(st.sampled_from([",", ",", ",", ";", "\t"]))
    text = csv_text(header, rows, delimiter)
    if draw(st.booleans()):
        text = "\ufeff" + text
    data = text.encode("utf-8")
    if kind == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    return data


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@fuzz(150)
@given(
    data=metadata_files(("sample_id", "label", "fst")),
    required=st.lists(st.sampled_from(["sample_id", "label", "fst"]), max_size=3),
)
def test_read_csv_gives_a_table_or_a_data_error(data, required):
    from dermbench.data.metadata import read_csv

    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder), "meta.csv", data)
        frame = answered(lambda: read_csv(path, required=required))
    if frame is not None:
        assert all(c in frame.columns for c in required) and len(frame) > 0
        assert len(set(frame.columns)) == len(frame.columns)  # a repeated column never reaches a reader


def _ddi(folder: Path, data: bytes, on_error: str):
    from dermbench.datasets.ddi import DDI

    write(folder, "ddi_metadata.csv", data)
    return DDI(folder, on_error=on_error).table("malignant")


def _fitz17k(folder: Path, data: bytes, on_error: str):
    from dermbench.datasets.fitz17k import Fitz17k

    write(folder, "fitzpatrick17k.csv", data)
    return Fitz17k(folder, on_error=on_error).table("partition3")


@fuzz(150)
@given(
    data=metadata_files(("", "DDI_ID", "DDI_file", "skin_tone", "malignant", "disease")),
    on_error=st.sampled_from(["stop", "skip"]),
)
def test_the_ddi_reader_gives_a_table_or_a_data_error(data, on_error):
    with tempfile.TemporaryDirectory() as folder:
        answered(lambda: _ddi(Path(folder), data, on_error))


@fuzz(150)
@given(
    data=metadata_files(
        (
            "md5hash",
            "fitzpatrick_scale",
            "fitzpatrick_centaur",
            "label",
            "nine_partition_label",
            "three_partition_label",
            "qc",
            "url",
            "url_alphanum",
        )
    ),
    on_error=st.sampled_from(["stop", "skip"]),
)
def test_the_fitzpatrick17k_reader_gives_a_table_or_a_data_error(data, on_error):
    with tempfile.TemporaryDirectory() as folder:
        answered(lambda: _fitz17k(Path(folder), data, on_error))


# --------------------------------------------------------------------------- the config loader

#: setting paths a user may write (real ones, near misses and nonsense)
KEYS = st.sampled_from(
    [
        "train.lr",
        "train.epochs",
        "train.batch_size",
        "train.optimizer",
        "train.sampler",
        "train.momentum",
        "train.augment",
        "data.image_size",
        "data.options",
        "data.test_sets",
        "data.on_error",
        "data.tone",
        "eval.threshold",
        "eval.n_boot",
        "model.backbone",
        "model.pretrained",
        "seed",
        "method",
        "dataset",
        "task",
        "profile",
        "device",
        "train",
        "train.lr.x",
        "trian.lr",
        "x",
        ".",
        "a..b",
        "",
        " ",
        "train.",
        "erm.x",
        "data.options.n_train",
    ]
)
#: YAML values: scalars of every kind, odd strings, nested lists and maps
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True),
    st.text(max_size=10),
    st.sampled_from(
        [
            "1e-3",
            ".nan",
            ".inf",
            "-.inf",
            "0x10",
            "~",
            "[1,",
            "{a: 1",
            "youden",
            "tpr@0.9",
            "tpr@2",
            "auto",
            "cpu",
            "tiny",
            "paper",
            "erm",
            "synthderm",
            "malignant",
            "!!python/none",
        ]
    ),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


#: values that often pass the checks, so that examples reach the later stages of resolving
PLAUSIBLE = st.one_of(
    st.integers(-2, 300),
    st.floats(-0.5, 2.0),
    st.sampled_from(
        [
            "youden",
            "tpr@0.9",
            "cpu",
            "tiny",
            "erm",
            "resampling",
            "synthderm",
            "malignant",
            "sgd",
            "adam",
            "group",
            "none",
            "flip",
            "stop",
            "skip",
            "test_resnet",
            "true",
            "false",
            "null",
            "[synthderm]",
            "{n_train: 40}",
        ]
    ),
)


def _yaml_value(value) -> str:
    return json.dumps(value, default=str, allow_nan=True)  # JSON is YAML (NaN and Infinity read as strings)


@fuzz(150)
@given(
    items=st.lists(
        st.one_of(
            st.builds(
                lambda k, v: f"{k}={v}", KEYS, PLAUSIBLE.map(str)
            ),  # a third of the items: likely to pass
            st.builds(lambda k, v: f"{k}={v}", KEYS, st.one_of(SCALARS.map(str), VALUES.map(_yaml_value))),
            st.text(max_size=20),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_set_items_give_a_config_or_a_config_error(items):
    from dermbench.runner import resolve_config

    config = answered(lambda: resolve_config(sets=items, flags={"device": "cpu"}))
    assert config is None or isinstance(config, dict)


@st.composite
def yaml_files(draw) -> bytes:
    kind = draw(st.sampled_from(["nested", "nested", "text", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "text":
        return draw(st.text(alphabet=string.printable + "é:-[]{}!&*|>", max_size=200)).encode("utf-8")
    config: dict = {}
    for key, value in draw(st.lists(st.tuples(KEYS, st.one_of(PLAUSIBLE, VALUES)), max_size=4)):
        node = config
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return json.dumps(config, default=str).encode("utf-8")


@fuzz(150)
@given(data=yaml_files())
def test_a_config_file_gives_a_config_or_a_config_error(data):
    from dermbench.runner import resolve_config

    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder), "config.yaml", data)
        config = answered(lambda: resolve_config(file=path, flags={"device": "cpu"}))
    assert config is None or isinstance(config, dict)


# --------------------------------------------------------------------------- the record reader

RECORD = json.loads(
    (ROOT / "leaderboards" / "records" / "erm_synthderm_s0_d9efca5817c6" / "metrics.json").read_text()
)


def _paths(node, prefix=()):
    """Every path into a JSON value (lists and dicts), the value itself included."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


#: paths into the record; the blocks readers use most get half the draws, so that short runs hit them
ALL_PATHS = list(_paths(RECORD))
MAIN_PATHS = [
    p
    for p in ALL_PATHS
    if len(p) > 2
    and p[0] == "eval"
    and p[2] in ("overall", "groups", "fairness", "n", "excluded", "tone_source")
]
PATHS = st.one_of(st.sampled_from(MAIN_PATHS), st.sampled_from(ALL_PATHS))
JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**30), 10**30),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=6),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=5,
)


def _edited(record, path, value, delete: bool):
    record = json.loads(json.dumps(record))
    if not path:
        return value
    node = record
    for step in path[:-1]:
        node = node[step]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return record


@fuzz(200)
@given(edits=st.lists(st.tuples(PATHS, JSON_VALUES, st.integers(0, 9)), min_size=1, max_size=3))
def test_an_edited_record_gives_a_record_or_a_record_error(edits):
    from dermbench.results.record_schema import Record
    from dermbench.results.records import read_record

    record = RECORD
    for path, value, roll in edits:
        try:
            record = _edited(record, path, value, delete=roll == 0)
        except (KeyError, IndexError, TypeError):  # an earlier edit removed or replaced the path
            continue
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder), "metrics.json", json.dumps(record).encode("utf-8"))
        result = answered(lambda: read_record(path))
    assert result is None or isinstance(result, Record)


@fuzz(60)
@given(data=st.one_of(st.binary(max_size=200), JSON_VALUES.map(lambda v: json.dumps(v).encode("utf-8"))))
def test_any_bytes_give_a_record_or_a_record_error(data):
    from dermbench.results.records import read_record

    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder), "metrics.json", data)
        answered(lambda: read_record(path))


@pytest.mark.parametrize(
    "done",
    [
        "",
        "{}",
        "[1, 2]",
        '{"format": 1, "files": [], "fields": {}}',
        '{"format": 1, "files": {"metrics.json": 5}, "fields": {}}',
        '{"format": 1, "files": {"../../etc/passwd": "x"}, "fields": {}}',
        "\udcff",
    ],
)
def test_a_malformed_done_marker_is_a_record_error(tmp_path, done):
    from dermbench.results.record_schema import RecordError
    from dermbench.results.records import read_record

    (tmp_path / "metrics.json").write_text(json.dumps(RECORD))
    (tmp_path / "done").write_bytes(done.encode("utf-8", "surrogateescape"))
    with pytest.raises(RecordError):
        read_record(tmp_path)
