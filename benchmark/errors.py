"""Exceptions users see. Each message names the file, key or value at fault."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DermbenchError(Exception):
    """Base class: the CLI prints these as one clear line instead of a traceback."""


class ConfigError(DermbenchError):
    """A bad configuration key or value."""


class DataError(DermbenchError):
    """A bad dataset file, row or image."""


class UnknownNameError(DermbenchError):
    """An unknown method, dataset or backbone name."""


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name most like `name`, or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_name(
    kind: str, name: str, known: Iterable[str], *, max_listed: int = 40, where: str | None = None
) -> UnknownNameError:
    """An error for an unknown `kind` name listing the known ones (at most `max_listed`) and
    the closest match. `kind` is a plain noun ("task"; its plural adds an s); `where` says whose
    names they are ("dataset 'synthderm'"): "unknown task 'x' for dataset 'synthderm'; known
    tasks: ... Did you mean ...?"."""
    known = sorted(known)
    guess = closest(name, known)
    hint = f" Did you mean {guess!r}?" if guess else ""
    listed = ", ".join(known[:max_listed])
    if len(known) > max_listed:
        listed += f", ... ({len(known) - max_listed} more)"
    if where is not None:
        return UnknownNameError(f"unknown {kind} {name!r} for {where}; known {kind}s: {listed}.{hint}")
    return UnknownNameError(f"unknown {kind} {name!r}.{hint} Known {kind}s: {listed}")


def human_size(n_bytes: float) -> str:
    """A byte count in decimal units for messages: 999 bytes, 200 kB, 1.5 MB, 12.3 GB, 3.0 TB."""
    value = float(n_bytes)
    if abs(value) < 1000:
        return f"{int(value)} bytes"
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.1f} {unit}" if abs(value) < 100 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable")
