"""Downloading Fitzpatrick17k's images from the URLs in its CSV.

Fitzpatrick17k is published as a CSV of annotations plus the URL each image came from; the
`md5hash` column is the MD5 of the image bytes and names the file (`<md5hash>.jpg`). The
downloader checks that hash, so what lands on disk is exactly the published image.

Behaviour: a thread pool (`concurrency` requests at a time); each request retried up to
`retries` times on transient errors (timeouts, connection errors, truncated bodies, HTTP
5xx/429) with exponential backoff `backoff * 2**attempt`; permanent errors (HTTP 4xx, a
non-image content type, an MD5 mismatch, no URL) fail at once. Bytes go to a `.part`
file that is renamed into place only after the hash matched, so an interrupted download
never leaves a partial image under its final name. Files already present with the right
hash are skipped (resume). Every failure is returned as (md5hash, url, reason).
Only the standard library (urllib) is used.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import tempfile
import threading
import urllib.error
import urllib.request
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path
from urllib.parse import urlsplit

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from dermbench import __version__
from dermbench.data.metadata import read_csv
from dermbench.errors import DataError, human_size

USER_AGENT = f"dermbench/{__version__} (Fitzpatrick17k image fetcher; research use)"
REQUIRED_COLUMNS = ("md5hash", "url")
#: content types accepted besides image/* (some hosts serve images as a generic binary)
_GENERIC_TYPES = frozenset({"application/octet-stream", "binary/octet-stream"})
_MD5 = re.compile(r"^[0-9a-f]{32}$")
_CHUNK = 1 << 16


@dataclass
class FetchResult:
    """Counts of downloaded and already-present images, and every failure as (md5hash, url, reason)."""

    downloaded: int = 0
    skipped_existing: int = 0
    failed: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        return (
            f"{self.downloaded} downloaded, {self.skipped_existing} "
            f"already present, {len(self.failed)} failed"
        )

    def write_failures(self, path: Path) -> None:
        """Save the failures as a CSV (md5hash, url, reason) for a later look or retry."""
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["md5hash", "url", "reason"])
            writer.writerows(self.failed)


class _Permanent(Exception):
    """A failure that retrying will not fix."""


class _Transient(Exception):
    """A failure that may go away on retry."""


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s): a CSV row must not lead the fetcher to ftp or elsewhere."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urlsplit(newurl).scheme.lower()
        if scheme not in ("http", "https"):
            raise _Permanent(f"redirect to unsupported URL scheme {scheme or 'none'!r}: {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects)


def read_fitz17k_csv(csv_path: Path) -> list[tuple[str, str]]:
    """(md5hash, url) per image in CSV order, one entry per distinct md5hash."""
    frame = read_csv(Path(csv_path), required=REQUIRED_COLUMNS)
    rows: dict[str, str] = {}
    for line, md5, url in zip(range(2, len(frame) + 2), frame["md5hash"].str.lower(), frame["url"]):
        if not md5:
            raise DataError(f"{csv_path}, line {line}: empty md5hash")
        if md5 not in rows or (not rows[md5] and url):
            rows[md5] = url
    return list(rows.items())


def fetch_fitz17k(
    csv_path: Path,
    out_dir: Path,
    *,
    concurrency: int = 8,
    retries: int = 3,
    timeout: float = 30.0,
    progress: bool = True,
    backoff: float = 1.0,
    max_bytes: int = 50 * 1024 * 1024,
) -> FetchResult:
    """Download every image of the Fitzpatrick17k CSV into out_dir/<md5hash>.jpg.

    `retries` is the number of extra attempts after the first; waits are backoff * 2**attempt
    seconds. Rows with an empty URL or an invalid md5hash are reported as failures.
    """
    if concurrency < 1 or retries < 0 or timeout <= 0 or backoff < 0:
        raise DataError(
            f"fetch settings out of range: concurrency={concurrency} (>= 1), retries={retries} (>= 0), "
            f"timeout={timeout} (> 0), backoff={backoff} (>= 0)"
        )
    items = read_fitz17k_csv(csv_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = FetchResult()
    lock = threading.Lock()
    stop = threading.Event()

    def one(md5: str, url: str) -> None:
        status, reason = _fetch_one(
            md5,
            url,
            out_dir,
            retries=retries,
            timeout=timeout,
            backoff=backoff,
            max_bytes=max_bytes,
            stop=stop,
        )
        with lock:
            if status == "downloaded":
                result.downloaded += 1
            elif status == "skipped":
                result.skipped_existing += 1
            else:
                result.failed.append((md5, url, reason))

    bar = _progress_bar(progress)
    task = bar.add_task("fetching Fitzpatrick17k", total=len(items)) if bar else None
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="fitz17k-fetch")
    try:
        if bar:
            bar.start()
        pending = {pool.submit(one, md5, url) for md5, url in items}
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for fut in done:
                fut.result()  # re-raise programming errors; download errors are recorded in `one`
            if bar:
                bar.update(task, completed=len(items) - len(pending), refresh=False)
    except BaseException:
        stop.set()  # running downloads stop at the next chunk and delete their .part files
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        if bar:
            bar.stop()
    order = {md5: i for i, (md5, _) in enumerate(items)}
    result.failed.sort(key=lambda f: order[f[0]])
    return result


def _progress_bar(enabled: bool):
    if not enabled:
        return None

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch_one(
    md5: str,
    url: str,
    out_dir: Path,
    *,
    retries: int,
    timeout: float,
    backoff: float,
    max_bytes: int,
    stop: threading.Event,
) -> tuple[str, str]:
    """('downloaded' | 'skipped' | 'failed', reason) for one image."""
    if not _MD5.match(md5):
        return "failed", f"invalid md5hash {md5!r} (expected 32 hex digits)"
    final = out_dir / f"{md5}.jpg"
    if final.is_file() and file_md5(final) == md5:
        return "skipped", ""
    if not url:
        return "failed", "no URL in the CSV"
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        return "failed", f"unsupported URL scheme {scheme or 'none'!r} (only http and https)"
    reason = ""
    for attempt in range(retries + 1):
        if stop.is_set():
            return "failed", "interrupted"
        try:
            _download(url, md5, final, timeout=timeout, max_bytes=max_bytes, stop=stop)
            return "downloaded", ""
        except _Permanent as exc:
            return "failed", str(exc)
        except _Transient as exc:
            reason = str(exc)
        if attempt < retries:
            stop.wait(backoff * (2**attempt))
    tries = retries + 1
    return "failed", f"{reason} (after {tries} attempt{'s' if tries > 1 else ''})"


def _download(
    url: str, md5: str, final: Path, *, timeout: float, max_bytes: int, stop: threading.Event
) -> None:
    """One attempt: stream to a .part file, verify length, type and MD5, then rename into place."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "image/*"})
    fd, part_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".part")
    part = Path(part_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            digest, got, expected = _stream(request, fh, timeout=timeout, max_bytes=max_bytes, stop=stop)
            fh.flush()
            os.fsync(fh.fileno())
        if expected is not None and got < expected:
            raise _Transient(f"truncated response: got {got} of {expected} bytes")
        if digest != md5:
            raise _Permanent(f"md5 mismatch: downloaded bytes hash to {digest}")
        os.replace(part, final)
    finally:
        part.unlink(missing_ok=True)


def _stream(request: urllib.request.Request, fh, *, timeout: float, max_bytes: int, stop: threading.Event):
    """Send the request and copy the body to `fh`; returns (md5 hex, bytes read, Content-Length or None)."""
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            _check_content_type(response.headers.get("Content-Type"))
            length_text = response.headers.get("Content-Length")
            expected = int(length_text) if length_text and length_text.strip().isdigit() else None
            if expected is not None and expected > max_bytes:
                raise _Permanent(
                    f"response too large: {human_size(expected)} (limit {human_size(max_bytes)})"
                )
            digest = hashlib.md5(usedforsecurity=False)
            got = 0
            while True:
                if stop.is_set():
                    raise _Permanent("interrupted")
                block = response.read(_CHUNK)
                if not block:
                    break
                got += len(block)
                if got > max_bytes:
                    raise _Permanent(f"response too large: over {human_size(max_bytes)}")
                digest.update(block)
                fh.write(block)
            return digest.hexdigest(), got, expected
    except urllib.error.HTTPError as exc:
        exc.close()  # release the connection held by the error response
        text = f"HTTP {exc.code} {exc.reason}"
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Transient(text) from exc
        raise _Permanent(text) from exc
    except TimeoutError as exc:
        raise _Transient(f"timed out after {timeout} s") from exc
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise _Transient(f"timed out after {timeout} s") from exc
        raise _Transient(f"connection error: {exc.reason}") from exc
    except (HTTPException, ConnectionError, OSError) as exc:
        raise _Transient(f"connection error: {type(exc).__name__}: {exc}") from exc


def _check_content_type(content_type: str | None) -> None:
    """Refuse HTML error pages and other non-image bodies before reading them."""
    if not content_type:
        return  # the MD5 check still guards the bytes
    kind = content_type.split(";")[0].strip().lower()
    if kind.startswith("image/") or kind in _GENERIC_TYPES:
        return
    raise _Permanent(f"wrong content type {kind!r} (expected an image)")
