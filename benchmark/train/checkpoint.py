"""The trainer's resume checkpoints: written atomically and durably, read without running code.

A run folder may come from someone else, so a checkpoint is loaded with
`torch.load(weights_only=True)`: only tensors and plain data (dicts, lists, tuples, numbers,
strings, None) are accepted, and a file holding any other pickled object is refused with an
error naming it instead of being unpickled. Everything the trainer stores is of those kinds
(the RNG states are byte tensors), and a method's own state is checked before it is saved, so
a state that could not be read back fails when it is written, not on the resume after a kill.

Every checkpoint carries its own checksum, inside the same file (so it is written atomically
with it): the SHA-256 of everything it holds (each tensor's dtype, shape and bytes, every key
and plain value, in order), under the key "checksum". A file that loads but no longer matches
it (bytes zeroed by a bad disk, an edit) or that has none (written by an older dermbench) is
never resumed from: `read_resume_checkpoint` moves it aside, named `<file>.damaged-<UTC time>`,
and falls back to the previous epoch's checkpoint (`<file>.prev`, kept by `save_checkpoint`)
when that one verifies, else to training from scratch; the caller records both facts. Since
batch order and augmentation depend only on (seed, epoch), either fallback ends with the model
an uninterrupted training gives.
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from dermbench.errors import DermbenchError
from dermbench.files import make_dirs, storage_errors, write_atomic

#: the payload key holding the checksum of the rest of the checkpoint
CHECKSUM = "checksum"
#: what the checksum covers and how (bump when content_sha256 changes)
CHECKSUM_KIND = "sha256-content-1"


class CheckpointMismatch(DermbenchError):
    """A checkpoint that loads but does not match the checksum written with it, or has none."""


#: the kinds of value a checkpoint may hold besides tensors and containers of them
PLAIN = (bool, int, float, str, bytes, type(None))


@runtime_checkable
class Stateful(Protocol):
    """What a method hands the trainer as `state=` to have it checkpointed with the model:
    anything with these two methods (a small class, or a `torch.nn.Module`)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


def check_plain(value: Any, where: str) -> None:
    """Raise a DermbenchError naming the first part of `value` that `weights_only` loading would
    refuse (a numpy array, a custom object, ...)."""
    if isinstance(value, torch.Tensor) or isinstance(value, PLAIN):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise DermbenchError(f"{where}: key {key!r} is a {type(key).__name__}; use str or int keys")
            check_plain(item, f"{where}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
        return
    raise DermbenchError(
        f"{where} is a {type(value).__name__}; a checkpoint holds only tensors, dicts, lists, tuples, "
        "numbers, strings and None (convert numpy arrays with torch.from_numpy, objects to dicts)"
    )


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    t = tensor.detach().cpu()
    if t.is_sparse:
        t = t.to_dense()
    if t.is_quantized:
        return repr(
            (
                t.qscheme(),
                t.int_repr().tolist(),
                t.q_per_channel_scales().tolist()
                if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
                else t.q_scale(),
            )
        ).encode()
    try:
        return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    except (RuntimeError, TypeError):  # a dtype numpy or a byte view cannot take
        return repr(t.tolist()).encode("utf-8")


def _feed(digest: Any, value: Any) -> None:
    """Add `value` to `digest` with a type tag and length before each part, so that different
    contents never run together into the same byte stream."""
    if isinstance(value, torch.Tensor):
        data = _tensor_bytes(value)
        digest.update(f"T{value.dtype}{tuple(value.shape)}:{len(data)}:".encode())
        digest.update(data)
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}:".encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)}:".encode())
        for item in value:
            _feed(digest, item)
    elif isinstance(value, bool) or value is None:
        digest.update(f"B{value}:".encode())
    elif isinstance(value, int):
        digest.update(f"I{value}:".encode())
    elif isinstance(value, float):
        digest.update(f"F{value.hex()}:".encode())
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        digest.update(f"S{len(data)}:".encode())
        digest.update(data)
    elif isinstance(value, bytes):
        digest.update(f"Y{len(value)}:".encode())
        digest.update(value)
    else:
        raise DermbenchError(f"a checkpoint cannot hold a {type(value).__name__}")


def content_sha256(payload: dict[str, Any]) -> str:
    """The SHA-256 of what `payload` holds (its "checksum" entry left out): the same for a
    payload and for what torch.load gives back from it."""
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in payload.items() if k != CHECKSUM})
    return digest.hexdigest()


def previous_of(path: Path) -> Path:
    """Where `save_checkpoint` keeps the checkpoint that `path` replaced (the last epoch's)."""
    return Path(path).with_name(f"{Path(path).name}.prev")


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` with its checksum to `path` atomically and durably; the checkpoint it
    replaces becomes `previous_of(path)` (the fallback when the new one turns out damaged). A
    crash leaves the previous checkpoint, under one of the two names."""
    path = Path(path)
    payload = {**payload, CHECKSUM: {"kind": CHECKSUM_KIND, "sha256": content_sha256(payload)}}

    def keep_previous() -> None:
        if path.exists():
            os.replace(path, previous_of(path))

    write_atomic(path, lambda fh: torch.save(payload, fh), before_replace=keep_previous)


def load_checkpoint(path: Path, *, verify: bool = True) -> dict[str, Any]:
    """Read a checkpoint without unpickling anything but tensors and plain data; with `verify`
    (the default), a CheckpointMismatch when it does not match its checksum or has none."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file can fail in any way (UnicodeDecodeError, IndexError, ...)
        # torch reports a refused object and a damaged file alike; the refusal names a GLOBAL
        global_line = next((ln.strip().rstrip(".") for ln in str(exc).splitlines() if "GLOBAL" in ln), None)
        if global_line is not None:
            raise DermbenchError(
                f"checkpoint {path} holds objects other than tensors and plain "
                "data, so it was not loaded (unpickling them could run code: "
                f"{global_line}). Delete it to train this model from scratch."
            ) from exc
        raise DermbenchError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: it is damaged or not a torch "
            "checkpoint); delete it to train this model from scratch"
        ) from exc
    if not isinstance(payload, dict) or "state" not in payload:
        raise DermbenchError(
            f"checkpoint {path} is not a dermbench training checkpoint; delete it to start over"
        )
    if verify:
        stored = payload.get(CHECKSUM)
        if (
            not isinstance(stored, dict)
            or stored.get("kind") != CHECKSUM_KIND
            or not isinstance(stored.get("sha256"), str)
        ):
            raise CheckpointMismatch(
                f"checkpoint {path} has no checksum (written by an older dermbench), so it cannot be verified"
            )
        if content_sha256(payload) != stored["sha256"]:
            raise CheckpointMismatch(
                f"checkpoint {path} does not match the checksum written with it (it was "
                "damaged or changed after it was written)"
            )
    return payload


def set_aside(path: Path, folder: Path) -> Path:
    """Move `path` into `folder` as `<name>.damaged-<UTC time>` (kept for inspection, never resumed)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    make_dirs(folder)
    aside, n = folder / f"{path.name}.damaged-{stamp}", 1
    while aside.exists():
        n += 1
        aside = folder / f"{path.name}.damaged-{stamp}-{n}"
    with storage_errors(aside):
        os.replace(path, aside)
    return aside


def read_resume_checkpoint(
    path: Path, *, aside_dir: Path
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The newest checkpoint of `path` that verifies (`path`, else `previous_of(path)`), or None to
    train from scratch, and what was set aside on the way: one {"checkpoint", "file", "why",
    "resumed_from"} per file that did not load or verify, moved into `aside_dir`."""
    path = Path(path)
    payload, aside = None, []
    for candidate in (path, previous_of(path)):
        if not candidate.exists():
            continue
        try:
            payload = load_checkpoint(candidate)
        except DermbenchError as exc:
            moved = set_aside(candidate, Path(aside_dir))
            aside.append({"checkpoint": candidate.name, "file": str(moved), "why": str(exc)})
            continue
        break
    epoch = (
        payload.get("state", {}).get("epoch")
        if payload is not None and isinstance(payload.get("state"), dict)
        else None
    )
    resumed_from = (
        "scratch" if payload is None else (f"epoch {epoch}" if epoch is not None else previous_of(path).name)
    )
    for entry in aside:
        entry["resumed_from"] = resumed_from
    return payload, aside
