"""The trainer's resume checkpoints: written atomically and durably, read without running code.

A run folder may come from someone else, so a checkpoint is loaded with
`torch.load(weights_only=True)`: only tensors and plain data (dicts, lists, tuples, numbers,
strings, None) are accepted, and a file holding any other pickled object is refused with an
error naming it instead of being unpickled. Everything the trainer stores is of those kinds
(the RNG states are byte tensors), and a method's own state is checked before it is saved, so
a state that could not be read back fails when it is written, not on the resume after a kill.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from dermbench.errors import DermbenchError
from dermbench.files import write_atomic

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
        f"{where} is a {type(value).__name__}; a checkpoint holds only tensors, dicts, lists, tuples, numbers, "
        "strings and None (convert numpy arrays with torch.from_numpy, objects to dicts)"
    )


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` to `path` atomically and durably (a crash leaves the previous checkpoint)."""
    write_atomic(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint without unpickling anything but tensors and plain data."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file can fail in any way (UnicodeDecodeError, IndexError, ...)
        # torch reports a refused object and a damaged file alike; the refusal names a GLOBAL
        global_line = next((ln.strip().rstrip(".") for ln in str(exc).splitlines() if "GLOBAL" in ln), None)
        if global_line is not None:
            raise DermbenchError(
                f"checkpoint {path} holds objects other than tensors and plain data, so it was not loaded "
                f"(unpickling them could run code: {global_line}). Delete it to train this model from scratch."
            ) from exc
        raise DermbenchError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: it is damaged or not a torch checkpoint); "
            "delete it to train this model from scratch"
        ) from exc
    if not isinstance(payload, dict) or "state" not in payload:
        raise DermbenchError(f"checkpoint {path} is not a dermbench training checkpoint; delete it to start over")
    return payload
