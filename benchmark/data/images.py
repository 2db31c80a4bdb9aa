"""Reading one image file safely: path containment, decoding to RGB, resizing.

Every dataset image goes through `decode_image`, so all of them come out the same way:
uint8 (H, W, 3) RGB, EXIF orientation applied, transparency composited on white, and
high-bit-depth images scaled to 8 bits. A file that cannot be decoded completely raises
`ImageError` (a `DataError`) naming the file and a short reason; nothing is guessed.

Resizing (`size=N`) scales the shorter side to N and crops the centre N x N square, in one
antialiased bicubic resample (Pillow filters widen their support when downscaling). JPEGs
are first decoded at a reduced DCT scale that still keeps the shorter side >= N, which is
much faster for large photographs and loses nothing at the target size.
"""

from __future__ import annotations

import numbers
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from dermbench.errors import DataError

#: modes that carry an alpha channel, composited on white
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
#: integer/float single-channel modes holding more than 8 bits (16-bit PNG/TIFF)
_HIGH_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


class ImageError(DataError):
    """An image that cannot be used. `reason` is short and colon-free (it keys exclusion counts)."""

    def __init__(self, reason: str, path: str | os.PathLike, detail: str = "") -> None:
        self.reason = reason
        self.path = str(path)
        self.detail = detail
        super().__init__(f"{reason}: {self.path}" + (f" ({detail})" if detail else ""))


def resolve_under_root(root: Path, relative: str) -> Path:
    """The resolved path of `relative` inside `root`.

    A sample table comes from a CSV someone else wrote, so its paths are untrusted: absolute
    paths, `..` components and symlinks leading outside `root` are refused.
    """
    return RootResolver(root)(relative)


class RootResolver:
    """`resolve_under_root` for many files under one root, resolving each directory only once.

    Resolving a path costs a system call per component; a dataset of 16k images in a handful
    of folders then needs one lstat per file instead of a full resolve per file.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self._dirs: dict[PurePosixPath, Path] = {}

    def __call__(self, relative: str) -> Path:
        text = str(relative)
        where = f"{text!r} (dataset root {self.root})"
        if not text or "\x00" in text:
            raise ImageError("invalid image path", where)
        pure = PurePosixPath(text)
        windows = PureWindowsPath(text)
        if pure.is_absolute() or windows.is_absolute() or windows.drive or windows.root:
            raise ImageError(
                "absolute image path refused", where, "image paths must be relative to the dataset root"
            )
        if ".." in pure.parts or ".." in windows.parts:
            raise ImageError("path escapes dataset root", where, "'..' is not allowed")
        folder = self._dirs.get(pure.parent)
        if folder is None:
            folder = self._dirs[pure.parent] = (self.root / pure.parent).resolve()
        resolved = folder / pure.name
        if resolved.is_symlink():
            resolved = resolved.resolve()
        if not resolved.is_relative_to(self.root):
            raise ImageError("path escapes dataset root", where, f"it resolves to {resolved}")
        return resolved


def decode_image(path: Path, size: int | None = None) -> np.ndarray:
    """Decode `path` fully into uint8 (H, W, 3) RGB; with `size`, resize+centre-crop to size x size.

    Raises ImageError for a missing, non-image, truncated/corrupt or oversized file. An image
    with more pixels than Pillow's Image.MAX_IMAGE_PIXELS is refused from its header: an
    explicit count rather than Pillow's warning, because turning a warning into an error
    (`warnings.catch_warnings`) is not thread-safe and `dermbench data check` decodes in threads.
    """
    path = Path(path)
    if size is not None:
        if not isinstance(size, numbers.Integral) or isinstance(size, bool) or size < 1:
            raise DataError(f"image size must be a positive integer, got {size!r} (decoding {path})")
        size = int(size)
    if not path.is_file():
        raise ImageError("missing file" if not path.exists() else "not a regular file", path)
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with _no_truncated_images(), Image.open(path) as img:
            _check_pixels(img, path, limit)  # from the header, before any pixel is decoded
            if size is not None:
                img.draft(None, (size, size))  # JPEG: decode at a reduced DCT scale, shorter side >= size
            img.load()
            img = ImageOps.exif_transpose(img)
            rgb = _to_rgb(img, path)
            if size is not None:
                rgb = _resize_center_crop(rgb, size)
            array = np.array(rgb, dtype=np.uint8)  # writable, owns its memory
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own check (at twice the limit, or a warning a caller's filter made an error)
        raise ImageError("decompression bomb", path, _bomb_detail(str(exc), limit)) from exc
    except UnidentifiedImageError as exc:
        raise ImageError("not an image", path, "Pillow cannot identify the file format") from exc
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError) as exc:
        # Pillow reports truncated data as OSError and malformed structures as the others
        raise ImageError("corrupt or truncated image", path, f"{type(exc).__name__}: {exc}") from exc
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageError("unexpected decoded shape", path, str(array.shape))
    return array


_truncation_lock = threading.Lock()
_truncation_users = 0
_truncation_saved = False


@contextmanager
def _no_truncated_images() -> Iterator[None]:
    """Pillow's LOAD_TRUNCATED_IMAGES is False while any thread decodes (a partial image must
    fail, never be padded with grey); the caller's own setting is restored when the last one ends.
    A plain save/set/restore per call would let one thread restore True while another decodes."""
    global _truncation_users, _truncation_saved
    with _truncation_lock:
        if _truncation_users == 0:
            _truncation_saved = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        _truncation_users += 1
    try:
        yield
    finally:
        with _truncation_lock:
            _truncation_users -= 1
            if _truncation_users == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES = _truncation_saved


def _bomb_detail(what: str, limit: int | None) -> str:
    return f"{what}; Pillow's limit Image.MAX_IMAGE_PIXELS={limit} pixels guards against memory exhaustion"


def _check_pixels(img: Image.Image, path: Path, limit: int | None) -> None:
    width, height = img.size
    if limit is not None and width * height > limit:
        raise ImageError(
            "decompression bomb",
            path,
            _bomb_detail(f"the image has {width * height} pixels ({width} x {height})", limit),
        )


def _to_rgb(img: Image.Image, path: Path) -> Image.Image:
    """RGB version of any Pillow mode; alpha composited on white, >8-bit scaled down."""
    mode = img.mode
    if mode in _HIGH_BIT_MODES:
        return _high_bit_to_rgb(img)
    if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB", "1") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "RGB":
        return img
    try:
        return img.convert("RGB")  # L, 1, P, CMYK (Adobe inversion handled by the decoder), YCbCr, ...
    except ValueError as exc:
        raise ImageError("unsupported colour mode", path, f"mode {mode!r}") from exc


def _high_bit_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit (and 32-bit integer/float) greyscale to 8-bit RGB, assuming the 16-bit range 0..65535."""
    values = np.asarray(img).astype(np.float64)
    eight = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(eight, mode="L").convert("RGB")


def _resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Scale the shorter side to `size` and crop the centre square, as one resample."""
    width, height = img.size
    side = min(width, height)
    left, top = (width - side) / 2.0, (height - side) / 2.0
    box = (left, top, left + side, top + side)
    if (width, height) == (size, size):
        return img
    return img.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
