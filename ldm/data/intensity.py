"""The one intensity convention of the project.

On disk a CT slice is a 16-bit grayscale PNG holding HU + 1024, clipped to [0, 4095]
(so -1024 HU, air, is 0). An 8-bit PNG is taken as an already windowed image in [0, 255].
Models see [-1, 1]: HU are mapped through a window (lo, hi) in HU, 8-bit values through
their own range. Metrics use [0, 1] of the same window. Nothing here rounds CT to 8 bits.
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ldm.util import atomic_path

HU_OFFSET = 1024
PNG16_MAX = 4095
FULL_WINDOW = (-1024.0, 3071.0)
LUNG_WINDOW = (-1000.0, 400.0)
SOFT_TISSUE_WINDOW = (-160.0, 240.0)
SLICE_SUFFIXES = (".png",)

Window = tuple[float, float]


class SliceReadError(ValueError):
    """A slice file cannot be read as a CT slice; the message starts with the path."""


def check_window(window: Window) -> Window:
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"hu_window: expected lo < hi, got {window}")
    return lo, hi


def hu_to_png16(hu: np.ndarray) -> np.ndarray:
    """HU -> uint16 PNG values (HU + 1024, clipped to [0, 4095])."""
    return np.clip(np.rint(np.asarray(hu, dtype=np.float64) + HU_OFFSET), 0, PNG16_MAX).astype(np.uint16)


def png16_to_hu(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float32) - HU_OFFSET


def hu_window(hu: np.ndarray, window: Window = FULL_WINDOW) -> np.ndarray:
    """HU -> [-1, 1] through a window (values outside are clipped)."""
    lo, hi = check_window(window)
    hu = np.clip(np.asarray(hu, dtype=np.float32), lo, hi)
    return (hu - lo) * (2.0 / (hi - lo)) - 1.0


def unit_to_hu(x: np.ndarray, window: Window = FULL_WINDOW) -> np.ndarray:
    """[-1, 1] -> HU for the same window (the inverse of hu_window inside the window)."""
    lo, hi = check_window(window)
    return (np.asarray(x, dtype=np.float32) + 1.0) * ((hi - lo) / 2.0) + lo


def to_model_range(values: np.ndarray, kind: str, window: Window = FULL_WINDOW) -> np.ndarray:
    """Slice values as read by read_slice -> [-1, 1]."""
    if kind == "hu":
        return hu_window(values, window)
    return np.asarray(values, dtype=np.float32) / 127.5 - 1.0


def from_model_range(x: np.ndarray, kind: str, window: Window = FULL_WINDOW) -> np.ndarray:
    """[-1, 1] -> HU (kind 'hu') or 8-bit scale values (kind 'u8'), float."""
    if kind == "hu":
        return unit_to_hu(x, window)
    return (np.clip(np.asarray(x, dtype=np.float32), -1, 1) + 1.0) * 127.5


def _png_header(path: Path) -> tuple[int, int]:
    """(bit depth, colour type) from the IHDR chunk; PIL hides 16-bit colour by down-converting."""
    with open(path, "rb") as fh:
        head = fh.read(33)
    if len(head) < 33 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise SliceReadError(f"{path}: not a PNG file (empty or corrupt header)")
    bit_depth, colour_type = struct.unpack(">BB", head[24:26])
    return bit_depth, colour_type


def read_slice(path: str | os.PathLike[str]) -> tuple[np.ndarray, str]:
    """Read one PNG slice -> (float32 H x W array, kind).

    kind 'hu': a 16-bit grayscale PNG, values returned in HU.
    kind 'u8': an 8-bit PNG, values in [0, 255]. 8-bit RGB/RGBA/palette images are
    converted to luminance with a warning (slices exported by viewers often are RGB);
    16-bit colour or grey+alpha PNGs are refused, since their intensity convention is unknown.
    """
    path = Path(path)
    if not path.is_file():
        raise SliceReadError(f"{path}: no such file")
    bit_depth, colour_type = _png_header(path)
    if bit_depth == 16 and colour_type != 0:
        # PIL reads 16-bit colour and grey+alpha PNGs as 8-bit RGBA: refuse rather than lose the HU
        raise SliceReadError(f"{path}: 16-bit colour or alpha PNG is not a CT slice (expected 16-bit grayscale HU+1024)")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if bit_depth == 16:
                return png16_to_hu(np.array(img).astype(np.float32)), "hu"
            if mode not in ("L", "I;16"):
                warnings.warn(f"{path}: {mode} PNG converted to grayscale", stacklevel=2)
                img = img.convert("L")
            return np.array(img, dtype=np.float32), "u8"
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise SliceReadError(f"{path}: cannot decode PNG ({err})") from err


def write_png16_hu(path: str | os.PathLike[str], hu: np.ndarray) -> None:
    """Write HU as a 16-bit PNG (HU + 1024), atomically."""
    hu = np.asarray(hu)
    if hu.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D slice, got shape {hu.shape}")
    with atomic_path(path) as tmp:
        Image.fromarray(hu_to_png16(hu)).save(tmp, format="PNG")


def write_png8(path: str | os.PathLike[str], values: np.ndarray) -> None:
    """Write [0, 255] float values as an 8-bit PNG, atomically (display and 8-bit data only)."""
    arr = np.clip(np.rint(np.asarray(values, dtype=np.float64)), 0, 255).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def write_sr(path: str | os.PathLike[str], sr: np.ndarray, data_kind: str, hu_window: Window) -> None:
    """An (H, W) SR in [-1, 1] (an array, or a CPU tensor) as the data's own PNG convention:
    16-bit HU+1024 for HU data, 8-bit levels for 8-bit data."""
    values = from_model_range(np.asarray(sr), data_kind, hu_window)
    if data_kind == "hu":
        write_png16_hu(path, values)
    else:
        write_png8(path, values)


def write_std(path: str | os.PathLike[str], std: np.ndarray, data_kind: str, hu_window: Window) -> None:
    """An (H, W) sample std in model units as std in HU (16-bit; the pixel value is the std, not
    HU+1024) or in 8-bit levels (8-bit data)."""
    if data_kind != "hu":
        write_png8(path, np.asarray(std) * 127.5)
        return
    hu = np.asarray(std).astype(np.float64) * (hu_window[1] - hu_window[0]) / 2.0
    with atomic_path(path) as tmp:
        Image.fromarray(np.clip(np.rint(hu), 0, 65535).astype(np.uint16)).save(tmp, format="PNG")


def window_to_png8(hu: np.ndarray, window: Window) -> np.ndarray:
    """HU -> [0, 255] float through a display window (for 8-bit windowed exports and figures)."""
    return (hu_window(hu, window) + 1.0) * 127.5
