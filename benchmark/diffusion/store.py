"""Content-addressed cache entries for what the diffusion methods make: trained or fine-tuned
weights and generated image sets, under `$DERMBENCH_CACHE/diffusion/<kind>/<key>`.

The key hashes everything that changes an entry's content (the base weights' identity, the
training data, prompts, seeds, sampler settings, image size), so a rerun, or a run of another
classifier on the same synthetic set, finds the entry instead of making it again. An entry is
built in a temporary folder and renamed into place under a lock (two runs that need it make it
once); `entry.json` holds the key material and the SHA-256 of every file, checked on each read.
An entry that does not verify is rebuilt, never trusted, and the caller's record says why.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dermbench.data.metadata import sha256_file
from dermbench.data.model import content_digest
from dermbench.errors import DermbenchError
from dermbench.files import exclusive_lock, make_dirs, read_json, storage_errors, write_json

ENTRY = "entry.json"
#: bump when what an entry holds changes, so older entries are not reused
FORMAT = 1


def diffusion_cache_root() -> Path:
    """`$DERMBENCH_CACHE/diffusion`, else `~/.cache/dermbench/diffusion`."""
    env = os.environ.get("DERMBENCH_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "dermbench"
    return base / "diffusion"


@dataclass(frozen=True)
class Entry:
    """A verified cache entry: its folder, key, and whether this call found or made it."""

    kind: str
    key: str
    path: Path
    hit: bool
    rebuilt_because: str | None = None

    def info(self) -> dict[str, Any]:
        """What the run record says about the entry."""
        out: dict[str, Any] = {"kind": self.kind, "key": self.key, "path": str(self.path), "hit": self.hit}
        if self.rebuilt_because:
            out["rebuilt_because"] = self.rebuilt_because
        return out


def cached_entry(
    kind: str,
    material: dict[str, Any],
    build: Callable[[Path], None],
    *,
    say: Callable[[str], None] = lambda _m: None,
) -> Entry:
    """The entry of `kind` for `material`: verified and reused, or made by `build(folder)` (which
    writes its files into the empty `folder`) and stored."""
    material = json.loads(json.dumps({"format": FORMAT, **material}, sort_keys=True, default=str))
    key = content_digest(material)[:20]
    root = diffusion_cache_root() / kind
    entry = root / key
    make_dirs(root)
    with exclusive_lock(
        root / f"{key}.lock",
        on_wait=lambda pid: say(f"waiting for process {pid}, which is making {kind} {key}"),
    ):
        problem = verify(entry, material)
        if problem is None:
            say(f"[green]{kind} found in the cache[/]: {entry}")
            return Entry(kind, key, entry, hit=True)
        rebuilt = None
        if entry.exists():
            say(f"[yellow]cached {kind} {entry} is not usable ({problem}); making it again[/]")
            rebuilt = problem
            shutil.rmtree(entry, ignore_errors=True)
        temporary = root / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        with storage_errors(root):
            make_dirs(temporary)
            try:
                build(temporary)
                files = {
                    str(p.relative_to(temporary)): sha256_file(p)
                    for p in sorted(temporary.rglob("*"))
                    if p.is_file()
                }
                write_json(temporary / ENTRY, {"material": material, "files": files})
                os.replace(temporary, entry)
            except BaseException:
                shutil.rmtree(temporary, ignore_errors=True)
                raise
        return Entry(kind, key, entry, hit=False, rebuilt_because=rebuilt)


def verify(entry: Path, material: dict[str, Any]) -> str | None:
    """None when `entry` holds `material`'s content intact, else what is wrong."""
    if not entry.is_dir():
        return "absent"
    try:
        meta = read_json(entry / ENTRY)
        if meta.get("material") != material:
            return f"its {ENTRY} describes other settings"
        for name, expected in meta["files"].items():
            if sha256_file(entry / name) != expected:
                return f"{name} does not match its checksum in {ENTRY}"
    except (DermbenchError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
