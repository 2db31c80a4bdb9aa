"""Run folders and the record file in them: `metrics.json` written and read back, the sealed
`done` marker, the lock, and what a run folder holds.

A run directory is written file by file, atomically, and the `done` marker comes last, so a
directory either holds a finished run or one that the same command resumes. The record's shape
and its possible values are results/record_schema.py's; this module checks both on write and on
read.

A finished run is sealed: its `done` marker (JSON, `write_done`) holds the SHA-256 of metrics.json, of
every predictions/*.csv and of counterfactual.json when the run has one (writing it later re-seals
the marker, `reseal_run`), plus a short digest of each field of metrics.json down to
`$.eval.<set>.<block>`; reading a record beside a `done` marker checks them, so a record changed
after it finished is refused naming the file and the field. A `done` marker without checksums
(written before records were sealed) is refused naming `dermbench records seal`, which checks
such a record's values and writes them (`seal_run`).
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from dermbench import __version__
from dermbench.files import TMP_SUFFIX, exclusive_lock, make_dirs, storage_errors, write_text
from dermbench.results.record_schema import (
    Record,
    RecordError,
    as_json_values,
    check_values,
    decode_record,
    encode_record,
    to_record,
)

DONE = "done"
METRICS_FILE = "metrics.json"
#: the OS lock file of a run folder (RunDir.lock)
LOCK_FILE = ".lock"
#: where the trainer keeps resume checkpoints inside a run folder
CHECKPOINTS = Path("work") / "checkpoints"
#: the folder of per-sample predictions in a run folder (sealed with metrics.json)
PREDICTIONS_DIR = "predictions"
#: the counterfactual test's results (results/counterfactual.py), sealed too when present
COUNTERFACTUAL_FILE = "counterfactual.json"
#: the command that checks and seals records whose `done` marker holds no checksums
SEAL_COMMAND = "dermbench records seal"
#: the version of the sealed `done` marker
SEAL_FORMAT = 1
#: how deep the field digests of a sealed marker go ($ = 0: $.eval.<set>.<block> is 3)
SEAL_DEPTH = 3


# --------------------------------------------------------------------------- the record file


def write_record(run_dir: str | Path, record: Record | dict[str, Any]) -> Record:
    """Check `record` against the schema and the possible values, and write it as
    `<run_dir>/metrics.json` (atomically)."""
    path = Path(run_dir) / METRICS_FILE
    typed = to_record(record, where=str(path))
    check_values(typed, where=str(path))
    write_text(path, encode_record(typed).decode("utf-8"))
    return typed


def read_record(path: str | Path, *, verify_seal: bool = True) -> Record:
    """Load and validate one metrics.json (a file, or a run directory holding one).

    A record without `schema_version` is version 1; every problem is a RecordError naming the
    file and, for a malformed record or an impossible value, the path of the field at fault.
    With `verify_seal` (the default), a record beside a `done` marker must match the checksums
    the marker holds (`check_seal`).
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if verify_seal and (path.parent / DONE).is_file() and path.name == METRICS_FILE:
        check_seal(path.parent)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise RecordError(f"{path}: missing (a finished run must hold {METRICS_FILE})") from None
    except OSError as exc:
        raise RecordError(f"{path}: cannot read ({exc})") from None
    return decode_record(text, where=str(path))


# --------------------------------------------------------------------------- sealed `done` markers


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sealed_files(run_dir: Path) -> list[str]:
    """What a `done` marker seals: metrics.json, every predictions/*.csv and counterfactual.json when
    the run has one (paths relative to the run)."""
    folder = Path(run_dir) / PREDICTIONS_DIR
    predictions = (
        sorted(p.relative_to(run_dir).as_posix() for p in folder.glob("*.csv")) if folder.is_dir() else []
    )
    counterfactual = [COUNTERFACTUAL_FILE] if (Path(run_dir) / COUNTERFACTUAL_FILE).is_file() else []
    return [METRICS_FILE, *predictions, *counterfactual]


def field_digests(raw: Any) -> dict[str, str]:
    """{field path: short digest} of a record's JSON value down to SEAL_DEPTH ($.eval.<set>.<block>)."""
    out: dict[str, str] = {}

    def walk(node: Any, path: str, depth: int) -> None:
        text = json.dumps(node, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        out[path] = hashlib.sha256(text.encode("ascii")).hexdigest()[:16]
        if isinstance(node, dict) and depth < SEAL_DEPTH:
            for key, value in node.items():
                walk(value, f"{path}.{key}", depth + 1)

    walk(raw, "$", 0)
    return out


def _read_metrics_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RecordError(f"{path}: not valid JSON ({exc})") from None


def write_done(run_dir: str | Path, *, finished: str | None = None) -> None:
    """Write the sealed `done` marker: the time the run finished and the checksums of what it sealed."""
    run_dir = Path(run_dir)
    files = {name: _file_sha256(run_dir / name) for name in sealed_files(run_dir)}
    seal = {
        "format": SEAL_FORMAT,
        "finished": finished or datetime.now(timezone.utc).isoformat(),
        "files": files,
        "fields": field_digests(_read_metrics_json(run_dir / METRICS_FILE)),
    }
    write_text(run_dir / DONE, json.dumps(seal, indent=1) + "\n")


def read_seal(run_dir: Path) -> dict[str, Any] | None:
    """The seal in `run_dir`'s `done` marker, or None when the marker holds no checksums."""
    try:
        seal = json.loads((Path(run_dir) / DONE).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    except OSError as exc:
        raise RecordError(f"{Path(run_dir) / DONE}: cannot read ({exc})") from None
    if (
        not isinstance(seal, dict)
        or seal.get("format") != SEAL_FORMAT
        or not isinstance(seal.get("files"), dict)
        or not isinstance(seal.get("fields"), dict)
    ):
        return None
    return seal


def _changed_field(stored: dict[str, Any], current: dict[str, str]) -> str:
    """The deepest field whose digest differs (or that was added or removed)."""
    differing = [p for p in {*stored, *current} if stored.get(p) != current.get(p)]
    return max(differing, key=lambda p: (p.count("."), p)) if differing else "$"


def check_seal(run_dir: str | Path, *, ignore: str | None = None) -> None:
    """A RecordError naming the file (and for metrics.json the field) changed after the run
    finished, or naming the seal command when the `done` marker holds no checksums. `ignore` names
    a file not checked (counterfactual.json, about to be written again)."""
    run_dir = Path(run_dir)
    done = run_dir / DONE
    seal = read_seal(run_dir)
    if seal is None:
        raise RecordError(
            f"{done}: the `{DONE}` marker holds no checksums (it was written before dermbench sealed "
            f"finished records), so a change to {METRICS_FILE} or the predictions after the run "
            f"finished cannot be detected; check the record and seal it with `{SEAL_COMMAND} {run_dir}`"
        )
    for name in sealed_files(run_dir):
        if name not in seal["files"] and name != ignore:
            if name == COUNTERFACTUAL_FILE:
                raise RecordError(
                    f"{run_dir / name}: not covered by the run's `{DONE}` marker (written by a dermbench "
                    "that did not seal it, or added by hand), so a change to it cannot be detected; "
                    f"check it and seal it with `{SEAL_COMMAND} {run_dir}`, or write it again with "
                    f"`dermbench counterfactual {run_dir}`"
                )
            raise RecordError(
                f"{run_dir / name}: added after the run finished (its `{DONE}` marker does not list "
                f"it); remove it or {_REDO}"
            )
    _verify_listed(run_dir, seal, skip=frozenset({ignore} - {None}))


#: what to do about a sealed file that changed
_REDO = "redo the run (dermbench run ... --force) or restore the file"


def _verify_listed(run_dir: Path, seal: dict[str, Any], *, skip: frozenset[str] = frozenset()) -> None:
    """A RecordError naming the first file the seal lists (but `skip`) that is missing or changed."""
    for name, expected in seal["files"].items():
        if name in skip:
            continue
        path = run_dir / name
        redo = (
            f"write it again with `dermbench counterfactual {run_dir}`"
            if name == COUNTERFACTUAL_FILE
            else _REDO
        )
        if not path.is_file():
            raise RecordError(f"{path}: missing, but the run's `{DONE}` marker lists it; {redo}")
        if _file_sha256(path) == expected:
            continue
        if name == METRICS_FILE:
            field = _changed_field(seal["fields"], field_digests(_read_metrics_json(path)))
            raise RecordError(
                f"{path}: changed after the run finished: {field} no longer matches the checksum in "
                f"its `{DONE}` marker; {redo}"
            )
        raise RecordError(
            f"{path}: changed after the run finished (it no longer matches the checksum in the run's "
            f"`{DONE}` marker); {redo}"
        )


def reseal_run(run_dir: str | Path, added: str, write: Callable[[], Any]) -> None:
    """`write()` the file `added` (counterfactual.json) into a finished run and seal the run again.
    Every other file the old seal lists must match it first, so a re-seal never covers a change
    made by hand; the finishing time is kept. The caller holds the run's lock."""
    run_dir = Path(run_dir)
    seal = read_seal(run_dir)
    if seal is None:
        raise RecordError(
            f"{run_dir / DONE}: the `{DONE}` marker holds no checksums; check the record and seal it "
            f"with `{SEAL_COMMAND} {run_dir}` first"
        )
    _verify_listed(run_dir, seal, skip=frozenset({added}))
    write()
    write_done(run_dir, finished=seal["finished"])


def seal_run(run_dir: str | Path, check_added: Callable[[Path, str], None] | None = None) -> str:
    """Seal a finished run whose `done` marker holds no checksums, after checking its record's
    shape and values: "sealed", or "already sealed" (verified). A seal that predates counterfactual.json
    being sealed gains it ("sealed counterfactual.json"), after `check_added(run_dir, name)` checked
    that file and every file the seal lists verified. A RecordError when the record is unfinished,
    impossible, or was changed after it was sealed."""
    run_dir = Path(run_dir)
    done = run_dir / DONE
    if not done.is_file():
        raise RecordError(f"{run_dir}: no `{DONE}` marker: an unfinished run is not sealed")
    if (seal := read_seal(run_dir)) is not None:
        if (run_dir / COUNTERFACTUAL_FILE).is_file() and COUNTERFACTUAL_FILE not in seal["files"]:
            _verify_listed(run_dir, seal)
            if check_added is not None:
                check_added(run_dir, COUNTERFACTUAL_FILE)
            write_done(run_dir, finished=seal["finished"])
            return f"sealed {COUNTERFACTUAL_FILE}"
        check_seal(run_dir)
        return "already sealed"
    read_record(run_dir / METRICS_FILE, verify_seal=False)
    old = done.read_text(encoding="utf-8", errors="replace").strip()
    try:
        finished = datetime.fromisoformat(old).isoformat() if old else None
    except ValueError:
        finished = None
    write_done(run_dir, finished=finished)
    return "sealed"


# --------------------------------------------------------------------------- run directories


class RunDir:
    """One run's directory, `<out>/<run_id>/`.

    Who may change it: one process at a time, the one holding `lock()`; a finished run (`done`
    present) is only read. `done` is written last, after metrics.json, so a folder with a record
    but no `done` (a crash or a full disk in between) is unfinished: it is resumed, never reused.
    """

    def __init__(self, out: Path, run_id: str) -> None:
        self.run_id = run_id
        self.path = Path(out) / run_id

    @property
    def done(self) -> bool:
        return (self.path / DONE).exists()

    def file(self, name: str) -> Path:
        return self.path / name

    def lock(self, on_wait: Callable[[str], None] | None = None) -> AbstractContextManager[None]:
        """The OS lock on `<run>/.lock` (files.exclusive_lock): held while a process works on the
        run; `on_wait(pid)` is called before waiting for another process that holds it."""
        return exclusive_lock(self.path / LOCK_FILE, on_wait)

    def create(self) -> None:
        """Make the folder; a StorageError names it when that is impossible (read-only, full)."""
        make_dirs(self.path)

    def _entries(self) -> list[Path]:
        """Everything in the folder but the lock file, which stays while its lock may be held."""
        return [p for p in self.path.iterdir() if p.name != LOCK_FILE] if self.path.is_dir() else []

    def reset(self) -> None:
        """Forget everything (for --force); `done` goes first, so the run never looks finished
        with half its files gone. The lock file stays: the caller holds its lock."""
        (self.path / DONE).unlink(missing_ok=True)
        for entry in self._entries():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def remove_temporaries(self) -> None:
        """Delete temporary files a killed process left mid-write (`.<name>.<random>.tmp`); only
        the lock holder may, since another writer's temporaries would look the same."""
        for tmp in self.path.rglob(f".*{TMP_SUFFIX}") if self.path.is_dir() else []:
            if tmp.is_file():
                tmp.unlink(missing_ok=True)

    def append_log(self, message: str) -> None:
        log = self.path / "log.txt"
        make_dirs(self.path)
        with storage_errors(log), open(log, "a", encoding="utf-8") as fh:
            fh.write(f"{_stamp()} {message}\n")

    def mark_done(self) -> None:
        """Written last: a run without it is unfinished. It seals the run (the checksums of
        metrics.json and the predictions, `write_done`). The resume checkpoints are dropped after
        it, so a crash in between costs only disk space, never a retraining."""
        write_done(self.path)
        shutil.rmtree(self.path / CHECKPOINTS, ignore_errors=True)

    def write_record(self, record: Record | dict[str, Any]) -> dict[str, Any]:
        """Write metrics.json (checked against the schema); returns it as plain JSON values."""
        return as_json_values(write_record(self.path, record))

    def metrics(self) -> dict[str, Any]:
        """metrics.json as plain JSON values, read through the typed reader."""
        return as_json_values(read_record(self.path / METRICS_FILE))

    def finished_metrics(self) -> dict[str, Any]:
        """A finished run's record; a RecordError naming the damaged or missing file and --force
        when it does not read (reusing it would hand back nothing, redoing it silently would hide
        the damage)."""
        try:
            return self.metrics()
        except RecordError as exc:
            raise RecordError(
                f"the finished run {self.path} (it has a `{DONE}` marker) has a damaged record: "
                f"{exc}. Rerun with --force to redo this run (its folder is replaced)"
            ) from None


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def cpu_model() -> str | None:
    """The processor's model name (Linux: /proc/cpuinfo), else what `platform` knows, else None."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def environment() -> dict:
    """What a reader needs to reproduce the run. The CPU and the instruction set torch's CPU kernels
    use are there because CPU results are deterministic per machine, not across machines: the same
    code, config and seed gave seed-0 ERM AUC 0.8705 on one host and 0.8732 on another (2026-12)."""

    env = {
        "dermbench": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
    }
    for pkg in ("timm", "numpy", "pandas", "scikit-learn", "fairlearn", "diffusers", "peft"):
        try:
            env[pkg] = version(pkg)
        except Exception:
            env[pkg] = None
    return env
