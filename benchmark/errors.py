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


def unknown_name(kind: str, name: str, known: Iterable[str], *, max_listed: int = 40) -> UnknownNameError:
    """An error for an unknown `kind` name listing the known ones (at most `max_listed`) and
    the closest match."""
    known = sorted(known)
    guess = closest(name, known)
    hint = f" Did you mean {guess!r}?" if guess else ""
    listed = ", ".join(known[:max_listed])
    if len(known) > max_listed:
        listed += f", ... ({len(known) - max_listed} more)"
    return UnknownNameError(f"unknown {kind} {name!r}.{hint} Known {kind}s: {listed}")
