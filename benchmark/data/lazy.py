"""A lazy row-wise concatenation of arrays, so pooled splits keep memory-mapped parts mapped.

`np.concatenate` copies every part into RAM: 60,000 synthetic 224-px images pooled with
Fitzpatrick17k would have to fit in memory (twice, while the copy is made). `ConcatArray`
keeps the parts and gathers only the rows a caller indexes (a batch, a subset), which is
all the trainer, `Split.subset` and tone estimation need.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from dermbench.errors import DataError


class ConcatArray:
    """Rows of `parts` (arrays sharing dtype and row shape) read as one array, without copying.

    Supports `len`, `shape`, `dtype`, `ndim`, `size`, `nbytes`, indexing by an integer, a
    slice, an integer array or a boolean mask (optionally followed by indices of the other
    axes), and `np.asarray` (which does copy everything: use it on small arrays only).
    Results of indexing are plain numpy arrays (or views of one part when a slice falls
    inside it).
    """

    def __init__(self, parts: Sequence[Any]) -> None:
        flat: list[Any] = []
        for part in parts:
            flat.extend(part.parts if isinstance(part, ConcatArray) else [part])
        if not flat:
            raise DataError("cannot concatenate zero arrays")
        first = flat[0]
        for part in flat[1:]:
            if part.dtype != first.dtype or tuple(part.shape[1:]) != tuple(first.shape[1:]):
                raise DataError(
                    f"cannot concatenate arrays of {part.dtype} "
                    f"{tuple(part.shape)} and {first.dtype} {tuple(first.shape)}"
                )
        self.parts: tuple[Any, ...] = tuple(flat)
        self.offsets = np.cumsum([0, *(len(p) for p in flat)])  # part k holds rows offsets[k]:offsets[k+1]
        self.dtype = np.dtype(first.dtype)
        self.shape: tuple[int, ...] = (int(self.offsets[-1]), *first.shape[1:])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ConcatArray({len(self.parts)} parts, shape={self.shape}, dtype={self.dtype})"

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if copy is False:
            raise ValueError("a ConcatArray cannot be viewed as one array without copying")
        out = (
            np.concatenate([np.asarray(p) for p in self.parts])
            if len(self)
            else np.empty(self.shape, self.dtype)
        )
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> Any:
        rest: tuple = ()
        if isinstance(key, tuple):
            if not key or any(k is Ellipsis or k is None for k in key[:1]):
                raise IndexError(
                    "ConcatArray: index rows first (an integer, slice, integer array or boolean mask)"
                )
            key, rest = key[0], key[1:]
        if isinstance(key, numbers.Integral) and not isinstance(key, bool):
            row = self._row(int(key))
            return row[rest] if rest else row
        rows = self._rows(key)
        return rows[(slice(None), *rest)] if rest else rows

    def _row(self, i: int) -> Any:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of bounds for a ConcatArray of {n} rows")
        i %= n
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.parts[k][i - int(self.offsets[k])]

    def _rows(self, key: Any) -> np.ndarray:
        n = len(self)
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step == 1:
                k = int(np.searchsorted(self.offsets, start, side="right")) - 1
                if start >= stop:
                    return np.empty((0, *self.shape[1:]), self.dtype)
                lo, hi = int(self.offsets[k]), int(self.offsets[k + 1])
                if stop <= hi:  # inside one part: a view, as numpy slicing gives
                    return self.parts[k][start - lo : stop - lo]
            return self._gather(np.arange(start, stop, step))
        index = np.asarray(key)
        if index.dtype == bool:
            if index.shape != (n,):
                raise IndexError(f"boolean index of shape {index.shape} does not match {n} rows")
            return self._gather(np.flatnonzero(index))
        if index.size == 0:
            index = index.astype(np.int64)
        if not np.issubdtype(index.dtype, np.integer) or index.ndim != 1:
            raise IndexError(
                "ConcatArray rows take an integer, a slice, a "
                f"1-d integer array or a boolean mask, got {key!r}"
            )
        if index.size and (index.min() < -n or index.max() >= n):
            raise IndexError(f"index out of bounds for a ConcatArray of {n} rows")
        return self._gather(np.where(index < 0, index + n, index))

    def _gather(self, index: np.ndarray) -> np.ndarray:
        """Rows `index` (non-negative, in range) copied into a new array, part by part."""
        out = np.empty((len(index), *self.shape[1:]), self.dtype)
        part_of = np.searchsorted(self.offsets, index, side="right") - 1
        for k in np.unique(part_of):
            where = np.flatnonzero(part_of == k)
            out[where] = self.parts[k][index[where] - self.offsets[k]]
        return out


def concat_rows(arrays: Sequence[Any]) -> Any:
    """One array over `arrays`' rows: the array itself when there is one, else a ConcatArray."""
    return arrays[0] if len(arrays) == 1 else ConcatArray(arrays)
