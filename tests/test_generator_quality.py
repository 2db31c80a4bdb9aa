"""Generator quality beside the generative rows: read from the records' quality blocks, and each
row's fidelity floors judged against the oracle row of its profile."""

from __future__ import annotations

from dermbench.results.generator_quality import floor_verdict, quality_of, quality_table


def _quality(label_malignant: float, tone: float, tone_c: float, label: float = 0.9) -> dict:
    return {
        "methods": {
            "m": {
                "quality": {
                    "fid": {"domain": {"overall": {"values": {"all": 20.0}}}},
                    "fidelity": {
                        "label": {
                            "overall": {"share": label},
                            "values": {"malignant": {"share": label_malignant}},
                        },
                        "tone": {"overall": {"share": tone}, "values": {"C": {"share": tone_c}}},
                    },
                }
            }
        }
    }


def _run(method: str, seed: int, **values) -> dict:
    return {
        "method": method,
        "profile": "tiny",
        "variant": "v",
        "seed": seed,
        "quality": quality_of(_quality(**values)["methods"]),
    }


def test_quality_is_read_from_the_record_and_missing_values_are_nan():
    assert quality_of(_quality(0.5, 0.6, 0.7)["methods"])["tone C"] == 0.7
    assert quality_of({"erm": {"checkpoint": "x"}}) is None
    partial = quality_of({"classndiff": {"quality": {"fidelity": {"label": {"overall": {"share": 0.5}}}}}})
    assert partial["label"] == 0.5 and partial["tone"] != partial["tone"]  # NaN


def test_floors_are_fractions_of_the_oracles_mean():
    runs = [_run("oracle", s, label_malignant=0.8, tone=0.6, tone_c=0.4) for s in (0, 1)]
    runs += [_run("dermdiff", s, label_malignant=0.7, tone=0.5, tone_c=0.2) for s in (0, 1)]
    runs += [_run("classndiff", s, label_malignant=0.6, tone=0.0, tone_c=0.0) for s in (0, 1)]
    rows = [("oracle", "tiny", "v"), ("dermdiff", "tiny", "v"), ("classndiff", "tiny", "v")]
    table = quality_table(runs, rows, {}).set_index("method")["floors"]
    assert table["oracle"] == "ceiling"
    # 0.7 >= 0.75 x 0.8 = 0.6 and 0.5 >= 0.45, but 0.2 < 0.75 x 0.4 = 0.3
    assert table["dermdiff"] == "below: tone C 0.20 < 0.30"
    assert table["classndiff"] == "met"  # 0.6 >= 0.6
    assert floor_verdict(("dermdiff", "paper", "v"), {("dermdiff", "paper", "v"): {}}) == "–"  # no oracle row
