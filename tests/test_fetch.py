"""The Fitzpatrick17k downloader, against a local HTTP server this test starts (never the network)."""

from __future__ import annotations

import csv
import hashlib
import io
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermbench.data.fetch import USER_AGENT, FetchResult, fetch_fitz17k, read_fitz17k_csv
from dermbench.errors import DataError

COLUMNS = [
    "md5hash",
    "fitzpatrick_scale",
    "fitzpatrick_centaur",
    "label",
    "nine_partition_label",
    "three_partition_label",
    "qc",
    "url",
    "url_alphanum",
]
FAST = {"timeout": 0.5, "backoff": 0.001, "progress": False}


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, "JPEG")
    return buf.getvalue()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


Route = Callable[[BaseHTTPRequestHandler], None]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a handler still sleeping in the timeout test must not block teardown

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self.agents: list[str] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request, client_address) -> None:
        pass  # the client hanging up on the slow route is expected


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        server: _Server = self.server  # type: ignore[assignment]
        server.hits[self.path] += 1
        server.agents.append(self.headers.get("User-Agent", ""))
        route = server.routes.get(self.path)
        if route is None:
            self.send_error(404, "Not Found")
            return
        route(self)

    def log_message(self, *args) -> None:
        pass


def serve(body: bytes, content_type: str = "image/jpeg", length: int | None = None) -> Route:
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body) if length is None else length))
        h.end_headers()
        h.wfile.write(body)

    return route


def redirect(location: str) -> Route:
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(302)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return route


def slow(delay: float, body: bytes) -> Route:
    def route(h: BaseHTTPRequestHandler) -> None:
        time.sleep(delay)
        serve(body)(h)

    return route


def flaky(failures: int, body: bytes) -> Route:
    """HTTP 500 for the first `failures` requests, then the image."""
    count = {"n": 0}
    lock = threading.Lock()

    def route(h: BaseHTTPRequestHandler) -> None:
        with lock:
            count["n"] += 1
            fail = count["n"] <= failures
        if fail:
            h.send_error(500, "Internal Server Error")
        else:
            serve(body)(h)

    return route


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for i, (md5, url) in enumerate(rows):
            writer.writerow(
                {
                    "md5hash": md5,
                    "fitzpatrick_scale": 1 + i % 6,
                    "fitzpatrick_centaur": 1 + i % 6,
                    "label": "psoriasis",
                    "nine_partition_label": "inflammatory",
                    "three_partition_label": "non-neoplastic",
                    "qc": "",
                    "url": url,
                    "url_alphanum": url.replace("/", "").replace(":", ""),
                }
            )
    return path


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.endswith(".part") or p.name.startswith("."))


def test_success_writes_md5_named_files(tmp_path: Path, server: _Server) -> None:
    images = [_jpeg(i) for i in range(5)]
    rows = []
    for i, data in enumerate(images):
        server.routes[f"/img/{i}.jpg"] = serve(data)
        rows.append((_md5(data), f"{server.base}/img/{i}.jpg"))
    result = fetch_fitz17k(write_csv(tmp_path / "f.csv", rows), tmp_path / "out", concurrency=3, **FAST)
    assert result == FetchResult(downloaded=5, skipped_existing=0, failed=[])
    for data in images:
        assert (tmp_path / "out" / f"{_md5(data)}.jpg").read_bytes() == data
    assert _leftovers(tmp_path / "out") == []
    assert set(server.agents) == {USER_AGENT}


def test_each_failure_kind_is_reported_and_leaves_nothing(tmp_path: Path, server: _Server) -> None:
    good, other = _jpeg(1), _jpeg(2)
    server.routes["/ok.jpg"] = serve(good)
    server.routes["/page.jpg"] = serve(b"<html>gone</html>", content_type="text/html; charset=utf-8")
    server.routes["/wrong.jpg"] = serve(other)
    server.routes["/slow.jpg"] = slow(2.0, _jpeg(3))
    server.routes["/cut.jpg"] = serve(_jpeg(4)[:100], length=len(_jpeg(4)))
    rows = [
        (_md5(good), f"{server.base}/ok.jpg"),
        ("0" * 32, f"{server.base}/missing.jpg"),
        ("1" * 32, f"{server.base}/page.jpg"),
        (_md5(good)[::-1], f"{server.base}/wrong.jpg"),
        (_md5(_jpeg(3)), f"{server.base}/slow.jpg"),
        (_md5(_jpeg(4)), f"{server.base}/cut.jpg"),
        ("2" * 32, ""),
        ("3" * 32, "file:///etc/passwd"),
        ("not-a-hash", f"{server.base}/ok.jpg"),
    ]
    out = tmp_path / "out"
    started = time.perf_counter()
    result = fetch_fitz17k(write_csv(tmp_path / "f.csv", rows), out, retries=0, concurrency=4, **FAST)
    assert time.perf_counter() - started < 1.9, "the slow server must be cut off by the timeout"
    assert result.downloaded == 1 and result.skipped_existing == 0
    reasons = {md5: reason for md5, _, reason in result.failed}
    assert [md5 for md5, _, _ in result.failed] == [r[0] for r in rows[1:]], "failures in CSV order"
    assert reasons["0" * 32].startswith("HTTP 404")
    assert reasons["1" * 32] == "wrong content type 'text/html' (expected an image)"
    assert reasons[_md5(good)[::-1]] == f"md5 mismatch: downloaded bytes hash to {_md5(other)}"
    assert reasons[_md5(_jpeg(3))].startswith("timed out after 0.5 s")
    assert reasons[_md5(_jpeg(4))].startswith(f"truncated response: got 100 of {len(_jpeg(4))} bytes")
    assert reasons["2" * 32] == "no URL in the CSV"
    assert "unsupported URL scheme 'file'" in reasons["3" * 32]
    assert "invalid md5hash" in reasons["not-a-hash"]
    assert sorted(p.name for p in out.iterdir()) == [f"{_md5(good)}.jpg"], "no partial or bad file kept"
    assert dict(zip([f[0] for f in result.failed], [f[1] for f in result.failed]))["0" * 32].endswith(
        "/missing.jpg"
    )


def test_permanent_errors_are_not_retried(tmp_path: Path, server: _Server) -> None:
    server.routes["/page.jpg"] = serve(b"<html/>", content_type="text/html")
    rows = [("0" * 32, f"{server.base}/missing.jpg"), ("1" * 32, f"{server.base}/page.jpg")]
    result = fetch_fitz17k(write_csv(tmp_path / "f.csv", rows), tmp_path / "out", retries=3, **FAST)
    assert len(result.failed) == 2
    assert server.hits["/missing.jpg"] == 1 and server.hits["/page.jpg"] == 1


def test_transient_500_is_retried_until_success(tmp_path: Path, server: _Server) -> None:
    data = _jpeg(7)
    server.routes["/flaky.jpg"] = flaky(2, data)
    rows = [(_md5(data), f"{server.base}/flaky.jpg")]
    result = fetch_fitz17k(write_csv(tmp_path / "f.csv", rows), tmp_path / "out", retries=3, **FAST)
    assert result.downloaded == 1 and result.failed == []
    assert server.hits["/flaky.jpg"] == 3
    assert (tmp_path / "out" / f"{_md5(data)}.jpg").read_bytes() == data


def test_retries_run_out(tmp_path: Path, server: _Server) -> None:
    data = _jpeg(8)
    server.routes["/down.jpg"] = flaky(10, data)
    rows = [(_md5(data), f"{server.base}/down.jpg")]
    result = fetch_fitz17k(write_csv(tmp_path / "f.csv", rows), tmp_path / "out", retries=1, **FAST)
    assert result.failed == [
        (_md5(data), f"{server.base}/down.jpg", "HTTP 500 Internal Server Error (after 2 attempts)")
    ]
    assert server.hits["/down.jpg"] == 2
    assert list((tmp_path / "out").iterdir()) == []


def test_backoff_grows_exponentially(tmp_path: Path, server: _Server) -> None:
    data = _jpeg(9)
    server.routes["/down.jpg"] = flaky(10, data)
    rows = [(_md5(data), f"{server.base}/down.jpg")]
    started = time.perf_counter()
    fetch_fitz17k(
        write_csv(tmp_path / "f.csv", rows),
        tmp_path / "out",
        retries=2,
        timeout=0.5,
        backoff=0.1,
        progress=False,
    )
    assert time.perf_counter() - started >= 0.1 + 0.2, "waits of backoff * 2**attempt between attempts"


def test_resume_skips_good_files_and_replaces_bad_ones(tmp_path: Path, server: _Server) -> None:
    a, b = _jpeg(11), _jpeg(12)
    server.routes["/a.jpg"], server.routes["/b.jpg"] = serve(a), serve(b)
    out = tmp_path / "out"
    out.mkdir()
    (out / f"{_md5(a)}.jpg").write_bytes(a)  # complete from an earlier run
    (out / f"{_md5(b)}.jpg").write_bytes(b[:50])  # damaged (e.g. copied from elsewhere)
    rows = [(_md5(a), f"{server.base}/a.jpg"), (_md5(b), f"{server.base}/b.jpg")]
    result = fetch_fitz17k(write_csv(tmp_path / "f.csv", rows), out, **FAST)
    assert (result.downloaded, result.skipped_existing, result.failed) == (1, 1, [])
    assert server.hits["/a.jpg"] == 0 and server.hits["/b.jpg"] == 1
    assert (out / f"{_md5(b)}.jpg").read_bytes() == b
    again = fetch_fitz17k(write_csv(tmp_path / "f.csv", rows), out, **FAST)
    assert (again.downloaded, again.skipped_existing) == (0, 2)


def test_progress_bar_and_failure_report(tmp_path: Path, server: _Server, capsys) -> None:
    data = _jpeg(13)
    server.routes["/a.jpg"] = serve(data)
    rows = [(_md5(data), f"{server.base}/a.jpg"), ("0" * 32, "")]
    result = fetch_fitz17k(write_csv(tmp_path / "f.csv", rows), tmp_path / "out", timeout=0.5, backoff=0.001)
    assert "fetching Fitzpatrick17k" in capsys.readouterr().err
    assert result.summary() == "1 downloaded, 0 already present, 1 failed" and not result.ok
    result.write_failures(tmp_path / "failed.csv")
    assert (tmp_path / "failed.csv").read_text().splitlines() == [
        "md5hash,url,reason",
        f"{'0' * 32},,no URL in the CSV",
    ]


def test_csv_checks(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_fitz17k_csv(tmp_path / "none.csv")
    (tmp_path / "bad.csv").write_text("md5,link\nabc,http://x\n")
    with pytest.raises(DataError, match=r"bad\.csv.*md5hash, url"):
        read_fitz17k_csv(tmp_path / "bad.csv")
    (tmp_path / "dup.csv").write_text("\ufeffmd5hash,url\n" + "a" * 32 + ",\n" + "a" * 32 + ",http://x/a\n")
    assert read_fitz17k_csv(tmp_path / "dup.csv") == [("a" * 32, "http://x/a")], "BOM ok, duplicates merged"
    (tmp_path / "empty.csv").write_text("md5hash,url\n,http://x/a\n")
    with pytest.raises(DataError, match="line 2: empty md5hash"):
        read_fitz17k_csv(tmp_path / "empty.csv")
    with pytest.raises(DataError, match="concurrency"):
        fetch_fitz17k(tmp_path / "dup.csv", tmp_path / "out", concurrency=0)


def test_redirects_followed_only_to_http(tmp_path: Path, server: _Server) -> None:
    data = _jpeg(21)
    server.routes["/real.jpg"] = serve(data)
    server.routes["/moved.jpg"] = redirect(f"{server.base}/real.jpg")
    server.routes["/ftp.jpg"] = redirect("ftp://127.0.0.1/x.jpg")
    rows = [(_md5(data), f"{server.base}/moved.jpg"), ("0" * 32, f"{server.base}/ftp.jpg")]
    result = fetch_fitz17k(write_csv(tmp_path / "f.csv", rows), tmp_path / "out", **FAST)
    assert result.downloaded == 1 and server.hits["/real.jpg"] == 1
    assert result.failed == [
        (
            "0" * 32,
            f"{server.base}/ftp.jpg",
            "redirect to unsupported URL scheme 'ftp': ftp://127.0.0.1/x.jpg",
        )
    ]
