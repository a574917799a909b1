"""The intensity convention: 16-bit HU+1024 PNGs, 8-bit windowed PNGs, and what read_slice refuses."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from ldm.data.intensity import (
    LUNG_WINDOW,
    SliceReadError,
    from_model_range,
    hu_window,
    read_slice,
    to_model_range,
    unit_to_hu,
    window_to_png8,
    write_png8,
    write_png16_hu,
)


def png_bytes(pixels: np.ndarray, bit_depth: int, colour_type: int) -> bytes:
    """A PNG written by hand (PIL cannot write 16-bit colour), pixels (H, W, C)."""
    h, w = pixels.shape[:2]
    dtype = ">u2" if bit_depth == 16 else "u1"
    raw = b"".join(b"\x00" + row.astype(dtype).tobytes() for row in pixels.reshape(h, -1))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_png16_round_trip_keeps_hu_and_clips(tmp_path):
    hu = np.array([[-2000.0, -1024.0, -0.4, 0.6], [40.0, 1000.0, 3071.0, 5000.0]])
    write_png16_hu(tmp_path / "s.png", hu)
    values, kind = read_slice(tmp_path / "s.png")
    assert kind == "hu" and values.dtype == np.float32
    np.testing.assert_array_equal(values, [[-1024, -1024, 0, 1], [40, 1000, 3071, 3071]])
    with Image.open(tmp_path / "s.png") as img:
        assert img.mode in ("I;16", "I") and np.array(img)[0, 1] == 0  # air is 0 on disk


def test_png16_refuses_non_2d(tmp_path):
    with pytest.raises(ValueError, match="2-D"):
        write_png16_hu(tmp_path / "s.png", np.zeros((2, 3, 3)))
    assert not list(tmp_path.iterdir())


def test_png8_round_trip(tmp_path):
    values = np.array([[0.0, 12.4, 12.6, 255.0], [300.0, -3.0, 127.5, 200.0]])
    write_png8(tmp_path / "s.png", values)
    read, kind = read_slice(tmp_path / "s.png")
    assert kind == "u8"
    np.testing.assert_array_equal(read, [[0, 12, 13, 255], [255, 0, 128, 200]])


def test_rgb_8bit_is_converted_with_a_warning(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 100, 100
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    with pytest.warns(UserWarning, match="rgb.png.*RGB"):
        values, kind = read_slice(tmp_path / "rgb.png")
    assert kind == "u8" and values.shape == (4, 5)
    np.testing.assert_allclose(values, 100)


def test_16bit_rgba_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "rgba16.png"
    path.write_bytes(png_bytes(np.full((3, 4, 4), 1024, np.uint16), bit_depth=16, colour_type=6))
    with pytest.raises(SliceReadError, match=r"rgba16\.png.*16-bit colour"):
        read_slice(path)


def test_16bit_gray_alpha_is_read_as_hu_or_refused(tmp_path):
    pixels = np.stack([np.full((3, 4), 1064, np.uint16), np.full((3, 4), 65535, np.uint16)], -1)
    path = tmp_path / "la.png"
    path.write_bytes(png_bytes(pixels, bit_depth=16, colour_type=4))
    try:
        values, kind = read_slice(path)
    except SliceReadError as err:
        assert "la.png" in str(err)
        return
    assert kind == "hu" and values.shape == (3, 4)
    np.testing.assert_array_equal(values, 40)


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n", b"not a png at all, just some text bytes"])
def test_empty_or_corrupt_png_names_the_file(tmp_path, content):
    path = tmp_path / "broken_slice_001.png"
    path.write_bytes(content)
    with pytest.raises(SliceReadError, match="broken_slice_001.png"):
        read_slice(path)


def test_truncated_png_data_names_the_file(tmp_path):
    good = png_bytes(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64, 1), bit_depth=16, colour_type=0)
    path = tmp_path / "cut.png"
    path.write_bytes(good[:60])
    with pytest.raises(SliceReadError, match="cut.png"):
        read_slice(path)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(SliceReadError, match="nope.png: no such file"):
        read_slice(tmp_path / "nope.png")


def test_windows_map_to_unit_range_and_back():
    hu = np.array([-1500.0, -1000.0, -300.0, 400.0, 900.0])
    x = hu_window(hu, LUNG_WINDOW)
    np.testing.assert_allclose(x, [-1, -1, 0, 1, 1], atol=1e-6)
    np.testing.assert_allclose(unit_to_hu(x, LUNG_WINDOW), np.clip(hu, -1000, 400), atol=1e-3)
    np.testing.assert_allclose(window_to_png8(hu, LUNG_WINDOW), [0, 0, 127.5, 255, 255], atol=1e-3)
    with pytest.raises(ValueError, match="lo < hi"):
        hu_window(hu, (10.0, 10.0))


def test_model_range_round_trip_for_both_kinds():
    hu = np.array([-1024.0, 0.0, 3071.0])
    np.testing.assert_allclose(from_model_range(to_model_range(hu, "hu"), "hu"), hu, atol=1e-3)
    u8 = np.array([0.0, 127.5, 255.0])
    np.testing.assert_allclose(to_model_range(u8, "u8"), [-1, 0, 1])
    np.testing.assert_allclose(from_model_range(to_model_range(u8, "u8"), "u8"), u8)


def test_committed_fixture_slices_are_16bit_hu(fixtures_dir):
    paths = sorted((fixtures_dir / "CT").rglob("*.png"))
    assert len(paths) == 12
    for path in paths:
        values, kind = read_slice(path)
        assert kind == "hu" and values.shape == (64, 64)
        assert values.min() >= -1024 and values.max() > 0  # air and tissue/bone in every slice
