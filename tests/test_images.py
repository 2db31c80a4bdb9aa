"""decode_image and resolve_under_root: every colour mode, orientation, and each kind of bad file."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

import dermbench.cli.data as data_cli
from dermbench.data.images import ImageError, decode_image, resolve_under_root
from dermbench.errors import DataError


def _quadrants(h: int = 12, w: int = 20) -> np.ndarray:
    """An asymmetric RGB pattern: red top-left block, green top-right, blue bottom half."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = (255, 0, 0)
    a[: h // 2, w // 2 :] = (0, 255, 0)
    a[h // 2 :] = (0, 0, 255)
    return a


def _close(a: np.ndarray, b: np.ndarray, tol: int) -> bool:
    return a.shape == b.shape and int(np.abs(a.astype(int) - b.astype(int)).max()) <= tol


def test_rgb_png_round_trips_exactly(tmp_path: Path) -> None:
    pattern = _quadrants()
    Image.fromarray(pattern).save(tmp_path / "x.png")
    out = decode_image(tmp_path / "x.png")
    assert out.dtype == np.uint8 and out.shape == (12, 20, 3) and out.flags.writeable
    np.testing.assert_array_equal(out, pattern)


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    a = np.zeros((2, 3, 4), np.uint8)
    a[0, 0] = (255, 0, 0, 0)  # fully transparent red -> white
    a[0, 1] = (0, 0, 255, 255)  # opaque blue stays blue
    a[0, 2] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    Image.fromarray(a, "RGBA").save(tmp_path / "x.png")
    out = decode_image(tmp_path / "x.png")
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 1]) == (0, 0, 255)
    assert all(abs(int(v) - 127) <= 1 for v in out[0, 2])


def test_la_greyscale_with_alpha(tmp_path: Path) -> None:
    a = np.array([[[0, 0], [0, 255], [200, 255]]], np.uint8)
    Image.fromarray(a, "LA").save(tmp_path / "x.png")
    out = decode_image(tmp_path / "x.png")
    assert out.shape == (1, 3, 3)
    assert out[0].tolist() == [[255, 255, 255], [0, 0, 0], [200, 200, 200]]


@pytest.mark.parametrize("fmt", ["png", "gif"])
def test_palette_with_transparency(tmp_path: Path, fmt: str) -> None:
    img = Image.new("P", (4, 2), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))  # index 0 black, 1 red
    img.putpixel((1, 0), 1)
    img.save(tmp_path / f"x.{fmt}", transparency=0)
    out = decode_image(tmp_path / f"x.{fmt}")
    assert tuple(out[0, 0]) == (255, 255, 255), "transparent palette entry must become white, not black"
    assert tuple(out[0, 1]) == (255, 0, 0)


def test_palette_without_transparency(tmp_path: Path) -> None:
    img = Image.fromarray(_quadrants()).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    img.save(tmp_path / "x.png")
    np.testing.assert_array_equal(decode_image(tmp_path / "x.png"), _quadrants())


def test_cmyk_jpeg(tmp_path: Path) -> None:
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "x.jpg", quality=95)
    assert Image.open(tmp_path / "x.jpg").mode == "CMYK"
    out = decode_image(tmp_path / "x.jpg")
    assert out.shape == (16, 16, 3)
    r, g, b = out[8, 8].astype(int)
    assert r > 220 and g < 40 and b < 40, "CMYK (0,255,255,0) is red"


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    a = np.array([[0, 257 * 128, 65535]], np.uint16)
    Image.fromarray(a).save(tmp_path / "x.png")
    assert Image.open(tmp_path / "x.png").mode.startswith("I")
    out = decode_image(tmp_path / "x.png")
    assert out.shape == (1, 3, 3)
    assert out[0, :, 0].tolist() == [0, 128, 255]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_32_bit_integer_mode(tmp_path: Path) -> None:
    img = Image.fromarray(np.array([[0, 65535]], np.int32), mode="I")
    img.save(tmp_path / "x.tif")
    out = decode_image(tmp_path / "x.tif")
    assert out[0, :, 0].tolist() == [0, 255]


@pytest.mark.parametrize("mode", ["L", "1"])
def test_greyscale_and_bilevel(tmp_path: Path, mode: str) -> None:
    a = np.array([[0, 255, 255], [255, 0, 0]], np.uint8)
    Image.fromarray(a, "L").convert(mode).save(tmp_path / "x.png")
    out = decode_image(tmp_path / "x.png")
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out[..., 0], a)
    np.testing.assert_array_equal(out[..., 2], a)


@pytest.mark.parametrize(
    ("orientation", "expected"),
    [
        (1, lambda a: a),
        (3, lambda a: np.rot90(a, 2)),
        (6, lambda a: np.rot90(a, -1)),  # stored rotated; display turns it 90 degrees clockwise
        (8, lambda a: np.rot90(a, 1)),
        (2, lambda a: a[:, ::-1]),
    ],
)
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, expected) -> None:
    stored = _quadrants(16, 32)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "x.jpg", quality=98, subsampling=0, exif=exif.tobytes())
    out = decode_image(tmp_path / "x.jpg")
    want = expected(stored)
    assert out.shape == want.shape
    assert _close(out, want, tol=60), "orientation was not applied as EXIF says"
    # the red block must land in the expected corner (robust to JPEG edge ringing)
    red = (out[..., 0] > 200) & (out[..., 1] < 80) & (out[..., 2] < 80)
    want_red = (want[..., 0] == 255) & (want[..., 1] == 0)
    assert (red & want_red).sum() > 0.8 * want_red.sum()


def test_resize_scales_shorter_side_and_crops_centre(tmp_path: Path) -> None:
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :10] = (255, 0, 0)
    a[:, 10:30] = (0, 255, 0)
    a[:, 30:] = (0, 0, 255)
    Image.fromarray(a).save(tmp_path / "x.png")
    out = decode_image(tmp_path / "x.png", size=10)
    assert out.shape == (10, 10, 3)
    # the centre square is the green band (its edge columns blend a little with the neighbours,
    # exactly as resizing the whole image and then cropping would)
    assert (out[:, 1:-1, 1] > 250).all() and (out[:, 1:-1, 0] < 5).all() and (out[:, 1:-1, 2] < 5).all()
    assert (out[..., 1] > 200).all()


def test_resize_of_large_jpeg_uses_draft_and_keeps_content(tmp_path: Path) -> None:
    big = np.kron(_quadrants(4, 4), np.ones((64, 96, 1), np.uint8))  # 256 x 384
    Image.fromarray(big).save(tmp_path / "x.jpg", quality=95)
    out = decode_image(tmp_path / "x.jpg", size=16)
    assert out.shape == (16, 16, 3)
    # centre square: top half split red/green by the vertical midline, bottom half blue
    assert _close(out[2, 2], np.array([255, 0, 0]), 40)
    assert _close(out[2, 13], np.array([0, 255, 0]), 40)
    assert _close(out[13, 8], np.array([0, 0, 255]), 40)


def test_upscaling_small_image(tmp_path: Path) -> None:
    Image.new("RGB", (3, 5), (10, 20, 30)).save(tmp_path / "x.png")
    out = decode_image(tmp_path / "x.png", size=8)
    assert out.shape == (8, 8, 3) and (out == np.array([10, 20, 30], np.uint8)).all()


@pytest.mark.parametrize("size", [0, -3, 2.5])
def test_bad_size(tmp_path: Path, size) -> None:
    Image.new("RGB", (3, 3)).save(tmp_path / "x.png")
    with pytest.raises(DataError, match="size"):
        decode_image(tmp_path / "x.png", size=size)


def _jpeg_bytes(h: int = 64, w: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("allow_truncated_globally", [False, True])
def test_truncated_jpeg_names_the_file(tmp_path: Path, monkeypatch, allow_truncated_globally: bool) -> None:
    # even if some other library switched Pillow to accept truncated files, we refuse them
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", allow_truncated_globally)
    data = _jpeg_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated") as info:
        decode_image(path)
    assert str(path) in str(info.value) and info.value.reason == "corrupt or truncated image"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is allow_truncated_globally, "global setting restored"


def test_truncated_jpeg_also_fails_when_resizing(tmp_path: Path) -> None:
    data = _jpeg_bytes(256, 256)
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match="cut.jpg"):
        decode_image(tmp_path / "cut.jpg", size=16)


def test_corrupt_png_names_the_file(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(_quadrants()).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[60:70] = b"\x00" * 10  # damage the compressed pixel data
    (tmp_path / "bad.png").write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"bad\.png"):
        decode_image(tmp_path / "bad.png")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow still warns; we refuse
@pytest.mark.parametrize(("w", "h"), [(15, 10), (40, 40)])  # warning range (>limit), error range (>2*limit)
def test_decompression_bomb_names_limit_and_file(tmp_path: Path, monkeypatch, w: int, h: int) -> None:
    Image.new("RGB", (w, h)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageError) as info:
        decode_image(tmp_path / "bomb.png")
    text = str(info.value)
    assert info.value.reason == "decompression bomb"
    assert "MAX_IMAGE_PIXELS=100" in text and str(tmp_path / "bomb.png") in text


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_guards_hold_under_the_data_check_thread_pool(tmp_path: Path, monkeypatch) -> None:
    """`dermbench data check` decodes in threads: the pixel limit and the refusal of truncated
    files must hold in every round, whatever the interleaving (the old warnings-based guard let
    about 3 runs in 10 pass an oversized image)."""
    good, big, cut = [], [], []
    for i in range(24):
        Image.new("RGB", (20, 20), (i, 0, 0)).save(tmp_path / f"good{i}.png")
        Image.new("RGB", (130, 100)).save(tmp_path / f"big{i}.png")  # 13,000 px: Pillow's warning range
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (0, i, 0)).save(buf, format="JPEG")
        (tmp_path / f"cut{i}.jpg").write_bytes(buf.getvalue()[:300])
        good.append(f"good{i}.png"), big.append(f"big{i}.png"), cut.append(f"cut{i}.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # a user's global setting must not leak in
    files = [f for trio in zip(good, big, cut) for f in trio]
    for _ in range(5):
        failures = data_cli._decode_all(tmp_path, files, workers=8)
        assert {f: failures.get(f) for f in big} == dict.fromkeys(big, "decompression bomb")
        assert {f: failures.get(f) for f in cut} == dict.fromkeys(cut, "corrupt or truncated image")
        assert not set(good) & set(failures)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True, "the caller's setting is restored"


def test_image_under_the_limit_is_fine(tmp_path: Path, monkeypatch) -> None:
    Image.new("RGB", (10, 10)).save(tmp_path / "ok.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert decode_image(tmp_path / "ok.png").shape == (10, 10, 3)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="missing file") as info:
        decode_image(tmp_path / "nope.jpg")
    assert "nope.jpg" in str(info.value)


def test_directory_is_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "d.jpg").mkdir()
    with pytest.raises(ImageError, match="not a regular file"):
        decode_image(tmp_path / "d.jpg")


def test_non_image_file(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("<html>not found</html>")
    with pytest.raises(ImageError, match="not an image") as info:
        decode_image(tmp_path / "notes.jpg")
    assert "notes.jpg" in str(info.value)
    assert isinstance(info.value, DataError)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty.png"):
        decode_image(tmp_path / "empty.png")


# ---------------------------------------------------------------- resolve_under_root


def test_resolve_inside_root(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(b"x")
    assert resolve_under_root(tmp_path, "imgs/a.jpg") == (tmp_path / "imgs" / "a.jpg").resolve()
    assert resolve_under_root(tmp_path, "imgs/./a.jpg") == (tmp_path / "imgs" / "a.jpg").resolve()
    # a file that does not exist (yet) still resolves; decode_image reports it missing
    assert resolve_under_root(tmp_path, "imgs/b.jpg").name == "b.jpg"


@pytest.mark.parametrize("bad", ["../secret.jpg", "imgs/../../secret.jpg", "..", "imgs\\..\\..\\x.jpg"])
def test_dotdot_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(DataError) as info:
        resolve_under_root(tmp_path / "root", bad)
    text = str(info.value)
    assert repr(bad) in text and str((tmp_path / "root").resolve()) in text


@pytest.mark.parametrize("bad", ["/etc/passwd", "C:\\Windows\\x.jpg", "\\\\server\\share\\x.jpg", ""])
def test_absolute_or_empty_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(DataError, match="root"):
        resolve_under_root(tmp_path, bad)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_symlink_out_of_root_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "x.jpg").write_bytes(b"x")
    (root / "link.jpg").symlink_to(outside / "x.jpg")
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    for rel in ("link.jpg", "linkdir/x.jpg"):
        with pytest.raises(DataError, match="escapes") as info:
            resolve_under_root(root, rel)
        assert rel in str(info.value) and str(outside / "x.jpg") in str(info.value)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_symlink_within_root_and_symlinked_root_allowed(tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / "a").mkdir(parents=True)
    (real / "a" / "x.jpg").write_bytes(b"x")
    (real / "alias.jpg").symlink_to(real / "a" / "x.jpg")
    (tmp_path / "rootlink").symlink_to(real, target_is_directory=True)
    assert resolve_under_root(real, "alias.jpg") == (real / "a" / "x.jpg").resolve()
    assert resolve_under_root(tmp_path / "rootlink", "a/x.jpg") == (real / "a" / "x.jpg").resolve()
