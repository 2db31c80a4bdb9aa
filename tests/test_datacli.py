"""`dermbench data check | summary | fetch | split | list` on fake dataset trees."""

import json

import pytest

import dermbench.cli.data as data_cli
import dermbench.data.splits as splits_module
from dermbench.cli import main
from dermbench.data.fetch import FetchResult
from dermbench.datasets.ddi import TONE2_EXCLUDED


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setattr(splits_module, "committed_dir", lambda: tmp_path / "no-committed-splits")
    monkeypatch.setenv("DERMBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DERMBENCH_DATA", raising=False)


def summary(capsys, *args):
    capsys.readouterr()
    assert main(["data", "summary", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# ----- summary --------------------------------------------------------------------------------


def test_summary_json_fitz17k_counts_every_row(make_fitz17k, capsys):
    tree = make_fitz17k(missing=1)  # the last row (fitzpatrick_scale -1, partition malignant) has no image
    assert summary(capsys, "fitz17k", "--root", str(tree.root)) == {
        "dataset": "fitz17k",
        "n": 56,
        "by_fst": {"1": 9, "2": 9, "3": 9, "4": 9, "5": 9, "6": 9, "missing": 2},
        "by_tone3": {"A": 18, "B": 18, "C": 18, "missing": 2},
        "by_label": {"0": 38, "1": 18},
        "excluded": {"missing image file": 1},
    }
    assert not (tree.root / "splits").exists()  # a summary never writes a split file


def test_summary_json_ddi_uses_annotated_tone3(make_ddi, capsys):
    tree = make_ddi()
    assert summary(capsys, "ddi", "--root", str(tree.root)) == {
        "dataset": "ddi",
        "n": 12,
        "by_fst": {"missing": 12},
        "by_tone3": {"A": 4, "B": 4, "C": 4},
        "by_label": {"0": 9, "1": 3},
        "excluded": {TONE2_EXCLUDED: 4},
    }


def test_summary_json_derm7pt_counts_all_splits(make_derm7pt, capsys):
    tree = make_derm7pt()
    out = summary(capsys, "derm7pt-clinic", "--root", str(tree.root))
    assert out == {
        "dataset": "derm7pt-clinic",
        "n": 20,
        "by_fst": {"missing": 20},
        "by_tone3": {"missing": 20},
        "by_label": {"0": 10, "1": 10},
        "excluded": {},
    }


def test_summary_finds_the_dataset_under_dermbench_data(make_data_home, capsys, monkeypatch):
    home = make_data_home(n_fitz=54, include=("ddi", "derm7pt"))
    monkeypatch.setenv("DERMBENCH_DATA", str(home))
    assert summary(capsys, "fitz17k")["n"] == 57
    assert summary(capsys, "ddi")["n"] == 12
    assert summary(capsys, "derm7pt-derm")["n"] == 20


def test_summary_table_and_on_error_stop_option(make_fitz17k, capsys):
    tree = make_fitz17k(missing=1)
    assert main(["data", "summary", "fitz17k", "--root", str(tree.root)]) == 0
    out = capsys.readouterr().out
    assert "fitz17k: 56 samples" in out and "excluded 1: missing image file" in out
    assert main(["data", "summary", "fitz17k", "--root", str(tree.root), "--option", "on_error=stop"]) == 2
    assert "1 row(s)" in capsys.readouterr().err


def test_without_a_root_the_error_says_how_to_give_one(capsys):
    assert main(["data", "summary", "ddi", "--json"]) == 2
    assert "pass --root DIR" in capsys.readouterr().err


def test_unknown_dataset_name_suggests_the_closest(capsys, tmp_path):
    assert main(["data", "check", "fitz17", "--root", str(tmp_path)]) == 2
    assert "Did you mean 'fitz17k'" in capsys.readouterr().err


# ----- check ----------------------------------------------------------------------------------


def test_check_ok(make_ddi, capsys):
    tree = make_ddi()
    assert main(["data", "check", "ddi", "--root", str(tree.root)]) == 0
    out = capsys.readouterr().out
    assert (
        "present ddi_metadata.csv" in out and "decoded all 12 images" in out and out.rstrip().endswith("ok")
    )


def test_check_lists_missing_and_unreadable_images(make_fitz17k, capsys):
    tree = make_fitz17k(missing=2, truncated=1)
    assert main(["data", "check", "fitz17k", "--root", str(tree.root)]) == 1
    out = capsys.readouterr().out
    assert "missing image files: 2" in out
    for md5 in tree.missing:
        assert f"images/{md5}.jpg" in out
    assert (
        "unreadable images: 1" in out
        and f"images/{tree.truncated[0]}.jpg (corrupt or truncated image)" in out
    )
    assert "no split file yet" in out and "3 problem row(s)" in out
    assert not (tree.root / "splits").exists()


def test_check_reports_case_mismatched_names(make_derm7pt, capsys):
    tree = make_derm7pt()
    assert main(["data", "check", "derm7pt-clinic", "--root", str(tree.root)]) == 0
    out = capsys.readouterr().out
    assert "names matched ignoring letter case (metadata -> disk): 2" in out
    assert "images/NEL/NEL000.JPG -> images/NEL/Nel000.jpg" in out
    assert "official split of the release" in out


def test_check_unusable_dataset_exits_2(tmp_path, make_ddi, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["data", "check", "ddi", "--root", str(tmp_path / "empty")]) == 2
    assert "MISSING ddi_metadata.csv" in capsys.readouterr().out
    tree = make_ddi()
    tree.meta.drop(columns=["malignant"]).to_csv(tree.root / "ddi_metadata.csv")
    assert main(["data", "check", "ddi", "--root", str(tree.root)]) == 2
    assert "missing column(s) malignant" in capsys.readouterr().out


def test_check_counts_bad_rows_without_stopping(make_ddi, capsys):
    tree = make_ddi()
    meta = tree.meta.astype(str)
    meta.loc[2, "skin_tone"] = "78"
    meta.to_csv(tree.root / "ddi_metadata.csv")
    assert main(["data", "check", "ddi", "--root", str(tree.root), "--no-decode"]) == 1
    assert "excluded 1 row(s): unknown skin_tone" in capsys.readouterr().out


# ----- split ----------------------------------------------------------------------------------


def test_split_command_writes_confirms_and_refuses_stale(make_fitz17k, capsys):
    tree = make_fitz17k()
    root = ["--root", str(tree.root)]
    assert main(["data", "split", "fitz17k", *root]) == 0
    csv = tree.root / "splits" / "fitz17k-standard.csv"
    assert f"wrote {csv}" in capsys.readouterr().out
    assert main(["data", "split", "fitz17k", *root]) == 0
    assert "already exists and matches" in capsys.readouterr().out
    text = (tree.root / "fitzpatrick17k.csv").read_text()
    (tree.root / "fitzpatrick17k.csv").write_text(text.replace(",psoriasis,", ",eczema,", 1))
    assert main(["data", "split", "fitz17k", *root]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert main(["data", "split", "fitz17k", *root, "--force"]) == 0


def test_split_command_rule_and_out(make_fitz17k, tmp_path, capsys):
    tree = make_fitz17k()
    out = tmp_path / "committed"
    assert (
        main(
            [
                "data",
                "split",
                "fitz17k",
                "--root",
                str(tree.root),
                "--rule",
                "fairquantize",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (out / "fitz17k-fairquantize.csv").is_file() and (out / "fitz17k-fairquantize.json").is_file()
    counts = json.loads((out / "fitz17k-fairquantize.json").read_text())["counts"]
    assert f"train {counts['train']}, val {counts['val']}, test {counts['test']}" in capsys.readouterr().out
    # the FairQuantize code's 60/20/20: 40 % held out, then halved into validation and test
    n = sum(counts.values())
    assert abs(counts["train"] - 0.6 * n) <= 1 and abs(counts["val"] - counts["test"]) <= 1


def test_split_command_refuses_official_splits(make_ddi, capsys):
    assert main(["data", "split", "ddi", "--root", str(make_ddi().root)]) == 2
    assert "uses the split it was published with" in capsys.readouterr().err


# ----- fetch ----------------------------------------------------------------------------------


def test_fetch_calls_the_downloader_and_lists_failures(make_fitz17k, monkeypatch, capsys):
    tree = make_fitz17k()
    calls = []

    def fake_fetch(csv_path, out_dir, **kwargs):
        calls.append((csv_path, out_dir, kwargs))
        return FetchResult(
            downloaded=50, skipped_existing=5, failed=[("abc", "http://x/abc.jpg", "HTTP 404")]
        )

    monkeypatch.setattr(data_cli, "fetch_fitz17k", fake_fetch)  # the name the command calls
    assert (
        main(["data", "fetch", "fitz17k", "--root", str(tree.root), "--concurrency", "2", "--no-progress"])
        == 1
    )
    assert calls == [
        (
            tree.root / "fitzpatrick17k.csv",
            tree.root / "images",
            {"concurrency": 2, "retries": 3, "timeout": 30.0, "progress": False},
        )
    ]
    out = capsys.readouterr().out
    assert "50 downloaded, 5 already present, 1 failed" in out and "HTTP 404" in out
    assert (tree.root / "fetch-failures.csv").read_text().splitlines()[1] == "abc,http://x/abc.jpg,HTTP 404"


def test_fetch_without_csv_or_for_other_datasets(tmp_path, capsys):
    assert main(["data", "fetch", "fitz17k", "--root", str(tmp_path)]) == 2
    assert "github.com/mattgroh/fitzpatrick17k" in capsys.readouterr().err
    assert main(["data", "fetch", "ddi", "--root", str(tmp_path)]) == 2
    assert "only fitz17k can be fetched" in capsys.readouterr().err


# ----- list -----------------------------------------------------------------------------------


def test_list_shows_what_is_found(make_data_home, capsys):
    home = make_data_home(n_fitz=18, include=("ddi",))
    assert main(["data", "list", "--root", str(home)]) == 0
    lines = {
        line.split("│")[1].strip(): line
        for line in capsys.readouterr().out.splitlines()
        if line.count("│") > 3
    }
    assert "yes" in lines["ddi"] and "yes" in lines["fitz17k"]
    assert "no" in lines["derm7pt-derm"].split("│")[-2]
