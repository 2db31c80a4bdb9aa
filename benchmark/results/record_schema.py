"""The run record's schema, `metrics.json`: its typed shape, its possible values and its versions.

The record's shape is the `Record` struct below (docs/architecture.md, "The run record"), typed
with msgspec so that a reader gets the shape the writer wrote or a `RecordError` that names the
file and the field path (e.g. `$.eval.synthderm.groups.tone3.A.auc`). Open-ended levels (test
sets, schemes, groups, metric names, exclusion reasons) are `dict[str, ...]` with precise value
types; fixed blocks (fairness gaps with their `<gap>_groups` pair, flags, CIs, bootstrap
settings, tone estimation) are structs. Reading and writing the file in a run folder, and
sealing it, is results/records.py's job.

Schema versions:
    1   the shape written since the record existed. Records written before the
        `schema_version` field was added have no such field and are read as version 1 (none
        is committed any more: every record under leaderboards/ is version 2). A record with a
        newer version than SCHEMA_VERSION is refused with a RecordError: this dermbench
        cannot know its shape.
    2   adds two optional fields per test set: `eval.<set>.tone_sources` (the same predictions
        scored with each tone source's groups, or the estimators' misassignment propagated into
        the gaps' intervals) and `eval.<set>.ita_curve` (AUC and TPR per equal-count ITA bin).
        Version 1 records have neither and still read; reports and leaderboards say the
        sections are absent. `tone_sources.misassignment_tone2` (the tone2 gaps' propagated
        intervals) was added later, optional: version 2 records without it still read.
Extending the record means adding a field here (optional, so older records still read);
renaming or changing a field means a new schema version.

Checked on write and on read (issue 27): besides the shape, every value must be possible
(`check_values`): rates, AUC, accuracy, ECE in [0, 1]; counts non-negative integers; each gap
and worst-group value of a binary task what the group values it names give.
"""

from __future__ import annotations

import math
import re
import types
import typing
from typing import Any, Literal, Union

import msgspec

from dermbench import __version__
from dermbench.errors import DataError
from dermbench.files import to_json_value

#: the version new records are written with, and the newest this module reads
SCHEMA_VERSION = 2


class RecordError(DataError):
    """A missing, malformed or unusable run record; the message names the file (and the field)."""


# --------------------------------------------------------------------------- the schema

#: a metric value: counts are integers, rates floats, undefined values null
Number = int | float | None
#: {METRIC: value} for one group or overall (n, acc, bacc, precision, tpr, tnr, fpr, f1, auc,
#: ece; binary tasks add positives and negatives)
MetricBlock = dict[str, Number]
#: a bootstrap percentile interval [low, high]; null where the value is undefined
Interval = tuple[float, float] | None


class _Struct(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Base of the record's structs. A field with a default is optional and left out of the
    JSON when it has its default; an unknown field is an error, so nothing is dropped silently."""


class Timing(_Struct):
    total_s: float
    resumed: bool


class Fairness(_Struct):
    """One scheme's gaps (lower is better) and worst-group values. With more than two groups a
    gap is that of the worst pair, named in `<gap>_groups`; `<worst>_group` names the group.
    Undefined values are null (the reason is in `missing.fairness`)."""

    groups: list[str]
    eopp0: float | None
    eopp0_groups: list[str] | None
    eopp1: float | None
    eopp1_groups: list[str] | None
    eodd: float | None
    eodd_groups: list[str] | None
    eodd_net: float | None
    eodd_net_groups: list[str] | None
    eodd_fairlearn: float | None
    eodd_fairlearn_groups: list[str] | None
    dp_diff: float | None
    dp_diff_groups: list[str] | None
    gap_acc: float | None
    gap_acc_groups: list[str] | None
    gap_auc: float | None
    gap_auc_groups: list[str] | None
    gap_f1: float | None
    gap_f1_groups: list[str] | None
    gap_fnr: float | None
    gap_fnr_groups: list[str] | None
    worst_acc: float | None
    worst_acc_group: str | None
    worst_auc: float | None
    worst_auc_group: str | None
    worst_f1: float | None
    worst_f1_group: str | None
    worst_fnr: float | None
    worst_fnr_group: str | None

    def value(self, name: str) -> float | None:
        """A gap or worst value by name (None for an unknown name)."""
        return getattr(self, name, None) if name in FAIRNESS_VALUES else None

    def which(self, name: str) -> list[str] | None:
        """The groups a gap or worst value refers to: the worst pair, or the one worst group."""
        if name not in FAIRNESS_VALUES:
            return None
        pair = getattr(self, f"{name}_groups", None)
        if pair is not None:
            return pair
        single = getattr(self, f"{name}_group", None)
        return [single] if single is not None else None


#: the numeric fields of Fairness, in record order
FAIRNESS_VALUES = tuple(
    f for f in Fairness.__struct_fields__ if f != "groups" and not f.endswith(("_groups", "_group"))
)


class Flag(_Struct):
    """Something to distrust, e.g. where "tone3/C", code "small_group"."""

    where: str
    code: str
    message: str


class Missing(_Struct):
    """Why values are null: {metric: reason} overall, per scheme and group, per scheme's gaps."""

    overall: dict[str, str]
    groups: dict[str, dict[str, dict[str, str]]]
    fairness: dict[str, dict[str, str]]


class ClassRates(_Struct):
    """One-vs-rest rates per class (multi-class tasks), in class order."""

    support: list[int]
    tpr: list[float | None]
    tnr: list[float | None]
    fpr: list[float | None]
    precision: list[float | None]
    f1: list[float | None]
    auc: list[float | None]


class PerClass(_Struct):
    overall: ClassRates
    groups: dict[str, dict[str, ClassRates]]


class Intervals(_Struct):
    """Bootstrap CIs mirroring overall / groups / fairness."""

    overall: dict[str, Interval]
    groups: dict[str, dict[str, dict[str, Interval]]]
    fairness: dict[str, dict[str, Interval]]


class Bootstrap(_Struct):
    n_boot: int
    seed: int
    level: float
    method: str
    resampling: str


class ToneAgreement(_Struct):
    """How an estimator's tones match the test set's own annotated ones."""

    n: int
    n_no_skin: int | None = None
    n_fst: int | None = None
    fst_exact: float | None = None
    fst_within_one: float | None = None
    tone3_accuracy: float | None = None


class DetectorInfo(_Struct):
    """The tone detector used and its scores from its detector.json (null where not recorded)."""

    path: str
    backbone: str | None
    trained_on: str | None
    evaluated_on: str | None
    n: int | None
    accuracy: float | None
    balanced_accuracy: float | None
    per_tone_f1: dict[str, float | None] | None
    per_tone_n: dict[str, int] | None


class ToneEstimation(_Struct):
    """Where tones were estimated (source "annotated", "ita" or "detector") and how far to trust them."""

    source: str
    n_missing: int
    n_estimated: int
    n_unresolved: int | None = None
    method: str | None = None
    thresholds: dict[str, str] | None = None
    note: str | None = None
    detector: DetectorInfo | None = None
    agreement_on_annotated: ToneAgreement | None = None


class SignedGaps(_Struct, kw_only=True):
    """value(pair[0]) - value(pair[1]) per metric (tpr, fpr, tnr, auc, acc): the lightest minus the
    darkest group, so the sign says which group is better off; `reason` when a pair group is empty."""

    pair: list[str]
    values: dict[str, float | None]
    ci: dict[str, Interval] | None = None
    reason: str | None = None


class ToneAgreementMatrix(_Struct):
    """An estimator's tone3 against the annotated one: counts[i][j] = rows annotated groups[i] and
    estimated estimates[j] ("none": no estimate)."""

    n: int
    n_no_estimate: int
    tone3_accuracy: float | None
    groups: list[str]
    estimates: list[str]
    counts: list[list[int]]


class SourceScores(_Struct, kw_only=True):
    """One tone source's scores of a test set's predictions (the shape of the main entry's blocks)."""

    n_assigned: dict[str, int]
    groups: dict[str, dict[str, MetricBlock]]
    fairness: dict[str, Fairness]
    signed: dict[str, SignedGaps]
    ci: dict[str, dict[str, Interval]] | None = None
    agreement: ToneAgreementMatrix | None = None


class MeasuredConfusion(_Struct):
    """An estimator's confusion in one scheme (tone3 or tone2) pooled over the run's annotated test
    sets: counts[i][j] = rows annotated groups[i] and estimated groups[j]."""

    measured_on: list[str]
    n: int
    groups: list[str]
    counts: list[list[int]]


class PropagatedValue(_Struct, kw_only=True):
    """A gap with its interval from resampling alone and with tone misassignment added; for a signed
    gap, the share of replicates with the opposite sign."""

    value: float | None
    ci_sampling: Interval = None
    ci_propagated: Interval = None
    opposite_sign_sampling: float | None = None
    opposite_sign_propagated: float | None = None


class Misassignment(_Struct, kw_only=True):
    """A test set without annotated tones: its gaps in `scheme` with the estimators' measured confusion
    propagated (evaluation/tone_sources.propagate_misassignment); `reason` when nothing could be."""

    scheme: str
    pair: list[str]
    seed: int
    replicates: int
    redrawn: dict[str, int]
    kept: int
    confusion: dict[str, MeasuredConfusion]
    gaps: dict[str, PropagatedValue] | None = None
    signed: dict[str, PropagatedValue] | None = None
    reason: str | None = None


class ToneSources(_Struct, kw_only=True):
    """Tone-source sensitivity of one test set (schema 2). annotated: whether it has annotated tones;
    then `sources` ({source: scores}, "annotated" the reference) and `skipped` ({source: why});
    else `misassignment` (tone3) and, since dermbench 2026-12, `misassignment_tone2`."""

    annotated: bool
    reference: str | None = None
    sources: dict[str, SourceScores] | None = None
    skipped: dict[str, str] | None = None
    misassignment: Misassignment | None = None
    misassignment_tone2: Misassignment | None = None


class ItaBin(_Struct, kw_only=True):
    """One equal-count ITA bin: its ITA range and median (degrees), size, and AUC and TPR."""

    lo: float
    hi: float
    median: float
    n: int
    positives: int | None = None
    auc: float | None
    tpr: float | None
    ci: dict[str, Interval] | None = None


class ItaCurve(_Struct, kw_only=True):
    """AUC and TPR along ITA (schema 2): bins by ascending ITA (darker first); `reason` when none."""

    n_bins: int
    n_unresolved: int
    n_boot: int
    seed: int
    bins: list[ItaBin]
    reason: str | None = None


class TestSetEval(_Struct, kw_only=True):
    """One test set's result (fairness_report's output plus the tone facts the runner adds).

    `excluded` is nested: {SCHEME: {reason: count}} for samples left out of that scheme (a
    sample can leave tone2 but not tone3), plus "images": {reason: count} for samples the
    split dropped and "dataset (all splits)": {reason: count} for rows the loader dropped.
    """

    __test__ = False  # not a pytest test class, despite the name

    task: Literal["binary", "multiclass"]
    n: int
    threshold: float | None
    classes: list[str]
    overall: MetricBlock
    groups: dict[str, dict[str, MetricBlock]]
    fairness: dict[str, Fairness]
    excluded: dict[str, dict[str, int]]
    flags: list[Flag]
    missing: Missing
    per_class: PerClass | None = None
    ci: Intervals | None = None
    bootstrap: Bootstrap | None = None
    tone_source: dict[str, int]
    tone_estimation: ToneEstimation | None = None
    #: schema 2: tone-source sensitivity and AUC/TPR along ITA (absent from version 1 records)
    tone_sources: ToneSources | None = None
    ita_curve: ItaCurve | None = None


class Synthetic(_Struct):
    """Synthetic training samples `augment` added (absent when none): how many, per plugin, and per
    tone3 group ("unknown" for none) and class name."""

    n: int
    by_plugin: dict[str, int]
    by_group_label: dict[str, dict[str, int]]
    #: before `augment.ratio` thinned them; how they were mixed (augment.mix, augment.ratio); how
    #: many the classifier trained on (0 with mix "real")
    generated: int | None = None
    mix: str | None = None
    ratio: float | None = None
    trained_on: int | None = None


class Hooks(_Struct):
    """Which plugin answered each hook: the plain `fit` and `predict` implementations whose result
    was used, the `fit` wrappers that ran (innermost first), and the plugins whose `augment`
    returned a result (not None). A method that is really ERM shows here as "fit": "erm"."""

    fit: str | None
    fit_wrappers: list[str]
    predict: str | None
    augment: list[str]


class Record(_Struct, kw_only=True):
    """metrics.json: one run's identity, settings and results per test set."""

    schema_version: int
    run_id: str
    method: str
    dataset: str
    task: str
    seed: int
    profile: str
    config: dict[str, Any]
    plugins: dict[str, str]
    device: str
    timing: Timing
    threshold_rule: str | int | float
    skipped_test_sets: dict[str, str]
    train_history: list[dict[str, Any]] | None  # per epoch; the keys depend on the method's fit
    eval: dict[str, TestSetEval]
    synthetic: Synthetic | None = None
    #: samples dropped from training and validation, {"train"|"val": {reason: count}} (empty: none),
    #: and "dataset (all splits)" for rows the training dataset's loader dropped before splitting
    excluded: dict[str, dict[str, int]] | None = None
    #: {dataset: its content fingerprint (with "digest"), or null when it could not be read}, for
    #: every dataset the run used; the digests are part of the run id
    data_fingerprint: dict[str, dict[str, Any] | None] | None = None
    #: which plugin answered fit and predict, the fit wrappers that ran, whose augment answered
    #: (absent in records written before it was added)
    hooks: Hooks | None = None
    #: what method plugins report about their own run ({method: {key: value}}, see
    #: RunContext.record): the ERM checkpoint a method started from, the privileged group and why,
    #: per-layer pruning or quantisation shares, a paper profile's published numbers
    methods: dict[str, dict[str, Any]] | None = None
    #: what to cite for this run, as BibTeX entries keyed by what they are for ("dermbench",
    #: "method NAME", "dataset NAME", "backbone NAME"; results/citations.py, `dermbench cite`);
    #: absent in records written before it was added
    references: dict[str, list[str]] | None = None


# --------------------------------------------------------------------------- converting and decoding


def to_record(data: Record | dict[str, Any], *, where: str = "run record") -> Record:
    """`data` checked against the schema; a dict without `schema_version` gets the current one."""
    if isinstance(data, Record):
        return data
    data = {"schema_version": SCHEMA_VERSION, **data}
    try:
        builtins = msgspec.json.decode(msgspec.json.encode(data, enc_hook=to_json_value))
    except TypeError as exc:
        raise RecordError(f"{where}: {exc}") from None
    try:
        return msgspec.convert(builtins, Record)
    except msgspec.ValidationError as exc:
        raise RecordError(f"{where}: {_explain(exc, builtins)}") from None


def encode_record(record: Record) -> bytes:
    """The record as indented JSON text (non-finite floats become null), with a final newline."""
    return msgspec.json.format(msgspec.json.encode(record), indent=2) + b"\n"


def as_json_values(record: Record) -> dict[str, Any]:
    """The record as the plain dicts, lists and numbers its JSON holds (intervals as lists)."""
    return msgspec.json.decode(msgspec.json.encode(record))


def decode_record(text: bytes, *, where: str) -> Record:
    """A record's JSON text checked against the schema and the possible values. A record without
    `schema_version` is version 1; every problem is a RecordError naming `where` and, for a
    malformed record or an impossible value, the path of the field at fault."""
    try:
        raw = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise RecordError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise RecordError(f"{where}: expected a JSON object (a run record), got {type(raw).__name__}")
    found = raw.setdefault("schema_version", 1)
    if isinstance(found, bool) or not isinstance(found, int) or found < 1:
        raise RecordError(f"{where}: $.schema_version: expected a positive integer, got {found!r}")
    if found > SCHEMA_VERSION:
        raise RecordError(
            f"{where}: $.schema_version: record has schema version {found}, newer than the "
            f"version {SCHEMA_VERSION} this dermbench ({__version__}) reads; upgrade dermbench"
        )
    try:
        record = msgspec.convert(raw, Record)
    except msgspec.ValidationError as exc:
        raise RecordError(f"{where}: {_explain(exc, raw)}") from None
    check_values(record, where=where)
    return record


# --------------------------------------------------------------------------- possible values

#: metrics that are shares or probabilities, in [0, 1]
RATES = frozenset(
    {
        "acc",
        "bacc",
        "precision",
        "tpr",
        "tnr",
        "fpr",
        "fnr",
        "f1",
        "auc",
        "ece",
        "sensitivity",
        "specificity",
        "tone3_accuracy",
        "fst_exact",
        "fst_within_one",
        "accuracy",
        "balanced_accuracy",
    }
)
#: metrics that count samples: non-negative integers
COUNTS = frozenset({"n", "positives", "negatives", "support"})
#: for a binary task, each gap as a function of the two group blocks it names
_GAP_OF = {
    "eopp0": (("tnr",), lambda a, b: abs(a["tnr"] - b["tnr"])),
    "eopp1": (("tpr",), lambda a, b: abs(a["tpr"] - b["tpr"])),
    "eodd": (("tpr", "fpr"), lambda a, b: (abs(a["tpr"] - b["tpr"]) + abs(a["fpr"] - b["fpr"])) / 2),
    "eodd_net": (("tpr", "fpr"), lambda a, b: abs((a["tpr"] - b["tpr"]) + (a["fpr"] - b["fpr"])) / 2),
    "eodd_fairlearn": (("tpr", "fpr"), lambda a, b: max(abs(a["tpr"] - b["tpr"]), abs(a["fpr"] - b["fpr"]))),
    "gap_acc": (("acc",), lambda a, b: abs(a["acc"] - b["acc"])),
    "gap_auc": (("auc",), lambda a, b: abs(a["auc"] - b["auc"])),
    "gap_f1": (("f1",), lambda a, b: abs(a["f1"] - b["f1"])),
    "gap_fnr": (("tpr",), lambda a, b: abs(a["tpr"] - b["tpr"])),
}
#: for a binary task, each worst-group value: (metric, the value of a group block)
_WORST_OF = {
    "worst_acc": ("acc", lambda m: m["acc"]),
    "worst_auc": ("auc", lambda m: m["auc"]),
    "worst_f1": ("f1", lambda m: m["f1"]),
    "worst_fnr": ("tpr", lambda m: 1 - m["tpr"]),
}
_TOLERANCE = 1e-6


def _bad(where: str, path: str, message: str) -> RecordError:
    return RecordError(f"{where}: {path}: {message}")


def _check_number(where: str, path: str, name: str, value: Any) -> None:
    if value is None:
        return
    if name in COUNTS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _bad(where, path, f"{value!r} is not a count (a non-negative integer)")
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise _bad(where, path, f"{value!r} is not a finite number")
    if name in RATES and not -_TOLERANCE <= value <= 1 + _TOLERANCE:
        raise _bad(where, path, f"{value!r} lies outside [0, 1]")


def _check_counts(where: str, path: str, counts: dict[str, Any] | None) -> None:
    for key, value in (counts or {}).items():
        if isinstance(value, dict):
            _check_counts(where, f"{path}.{key}", value)
        else:
            _check_number(where, f"{path}.{key}", "n", value)


def _check_block(where: str, path: str, block: dict[str, Any]) -> None:
    for name, value in block.items():
        _check_number(where, f"{path}.{name}", name, value)
    n, pos, neg = block.get("n"), block.get("positives"), block.get("negatives")
    if isinstance(n, int) and isinstance(pos, int) and isinstance(neg, int) and pos + neg != n:
        raise _bad(
            where, f"{path}.n", f"{n} samples, but positives ({pos}) + negatives ({neg}) = {pos + neg}"
        )


def _check_fairness(
    where: str, path: str, fair: Fairness, groups: dict[str, dict[str, Any]] | None, binary: bool
) -> None:
    """Every gap and worst value in [0, 1]; for a binary task, each the value its named groups give,
    and the largest (smallest) over the scheme's groups."""
    for name in FAIRNESS_VALUES:
        _check_number(where, f"{path}.{name}", "acc", fair.value(name))
    if not binary or not groups:
        return
    for gap, (needs, formula) in _GAP_OF.items():
        value, pair = fair.value(gap), fair.which(gap)
        if value is None or not pair or len(pair) != 2 or any(g not in groups for g in pair):
            continue
        blocks = [groups[g] for g in pair]
        if any(b.get(k) is None for b in blocks for k in needs):
            continue
        expected = formula(*blocks)
        if abs(expected - value) > _TOLERANCE:
            raise _bad(
                where,
                f"{path}.{gap}",
                f"{value!r}, but the {' and '.join(needs)} values of groups "
                f"{pair[0]} and {pair[1]} give {expected:.6g}",
            )
        usable = [g for g in fair.groups if g in groups and all(groups[g].get(k) is not None for k in needs)]
        largest = max(
            (formula(groups[a], groups[b]) for i, a in enumerate(usable) for b in usable[i + 1 :]),
            default=value,
        )
        if largest > value + _TOLERANCE:
            raise _bad(
                where,
                f"{path}.{gap}",
                f"{value!r} is not the largest gap over groups {', '.join(usable)} ({largest:.6g})",
            )
    for worst, (metric, of) in _WORST_OF.items():
        value, named = fair.value(worst), fair.which(worst)
        if value is None or not named or named[0] not in groups or groups[named[0]].get(metric) is None:
            continue
        expected = of(groups[named[0]])
        if abs(expected - value) > _TOLERANCE:
            raise _bad(
                where,
                f"{path}.{worst}",
                f"{value!r}, but the {metric} of group {named[0]} gives {expected:.6g}",
            )


def check_values(record: Record, *, where: str) -> None:
    """A RecordError naming `where` and the field when a value is impossible: a rate outside
    [0, 1], a negative or fractional count, a gap or worst-group value that its groups do not give."""
    _check_counts(where, "$.excluded", record.excluded)
    if record.synthetic is not None:
        _check_number(where, "$.synthetic.n", "n", record.synthetic.n)
        _check_counts(where, "$.synthetic.by_plugin", record.synthetic.by_plugin)
        _check_counts(where, "$.synthetic.by_group_label", record.synthetic.by_group_label)
    for name, result in record.eval.items():
        base = f"$.eval.{name}"
        _check_number(where, f"{base}.n", "n", result.n)
        _check_number(where, f"{base}.threshold", "threshold", result.threshold)
        _check_block(where, f"{base}.overall", result.overall)
        for scheme, groups in result.groups.items():
            for group, block in groups.items():
                _check_block(where, f"{base}.groups.{scheme}.{group}", block)
        for scheme, fair in result.fairness.items():
            _check_fairness(
                where, f"{base}.fairness.{scheme}", fair, result.groups.get(scheme), result.task == "binary"
            )
        _check_counts(where, f"{base}.excluded", result.excluded)
        _check_counts(where, f"{base}.tone_source", result.tone_source)
        if result.per_class is not None:
            rates = [(f"{base}.per_class.overall", result.per_class.overall)]
            rates += [
                (f"{base}.per_class.groups.{s}.{g}", r)
                for s, gs in result.per_class.groups.items()
                for g, r in gs.items()
            ]
            for path, block in rates:
                for metric in ("support", "tpr", "tnr", "fpr", "precision", "f1", "auc"):
                    for i, value in enumerate(getattr(block, metric)):
                        _check_number(
                            where, f"{path}.{metric}[{i}]", "n" if metric == "support" else "acc", value
                        )
        sources = (result.tone_sources.sources or {}) if result.tone_sources is not None else {}
        for source, scores in sources.items():
            path = f"{base}.tone_sources.sources.{source}"
            _check_counts(where, f"{path}.n_assigned", scores.n_assigned)
            for scheme, groups in scores.groups.items():
                for group, block in groups.items():
                    _check_block(where, f"{path}.groups.{scheme}.{group}", block)
            for scheme, fair in scores.fairness.items():
                _check_fairness(where, f"{path}.fairness.{scheme}", fair, None, False)


# --------------------------------------------------------------------------- error paths

_AT = re.compile(r"^(?P<message>.*?)(?: - at `(?P<path>\$[^`]*)`)?$", re.S)
_STEP = re.compile(r"\.(?P<field>[A-Za-z_][A-Za-z0-9_]*)|\[(?P<index>\d+)\]|\[\.\.\.\]")


def _explain(exc: BaseException, data: Any) -> str:
    """msgspec's message with its path made concrete: msgspec writes a dict key as `[...]`;
    here it becomes the key, found by validating each entry of that dict."""
    match = _AT.match(str(exc))
    message = match.group("message") if match else str(exc)
    path = match.group("path") if match else None
    if not path:
        return f"$: {message}"
    return f"{_concrete_path(path, data)}: {message}"


def _concrete_path(path: str, data: Any) -> str:
    out, node, kind = "$", data, Record
    for step in _STEP.finditer(path[1:]):
        kind = _container(kind)
        if step.group("field") is not None:
            name = step.group("field")
            out += f".{name}"
            hints = (
                typing.get_type_hints(kind)
                if isinstance(kind, type) and issubclass(kind, msgspec.Struct)
                else {}
            )
            kind = hints.get(name, Any)
            node = node.get(name) if isinstance(node, dict) else None
        elif step.group("index") is not None:
            i = int(step.group("index"))
            out += f"[{i}]"
            args = typing.get_args(kind)
            kind = (
                (args[i] if typing.get_origin(kind) is tuple and i < len(args) else args[0]) if args else Any
            )
            node = node[i] if isinstance(node, list) and i < len(node) else None
        else:
            value_kind = typing.get_args(kind)[1] if typing.get_origin(kind) is dict else Any
            key = _failing_key(node, value_kind)
            out += f".{key}" if key is not None and re.fullmatch(r"[A-Za-z0-9_+-]+", key) else f"[{key!r}]"
            node, kind = (node.get(key) if isinstance(node, dict) else None), value_kind
    return out


def _container(kind: Any) -> Any:
    """The struct, dict, list or tuple member of an optional/union type (the one a path descends into)."""
    if typing.get_origin(kind) in (Union, types.UnionType):
        for member in typing.get_args(kind):
            if member is not type(None):
                return member
    return kind


def _failing_key(node: Any, value_kind: Any) -> str | None:
    """The first key of `node` whose value does not fit `value_kind` (msgspec checks in order)."""
    if not isinstance(node, dict):
        return None
    for key, value in node.items():
        try:
            msgspec.convert(value, value_kind)
        except msgspec.ValidationError:
            return str(key)
    return None
