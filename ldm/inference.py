"""Super-resolving one's own slices (sr.py): find inputs and read them as LR slices (ldm.pipeline runs them).

Inputs are PNG slices (16-bit HU+1024 or 8-bit), single DICOM slices (HU through
RescaleSlope/Intercept) and volumes (NIfTI, Analyze, NRRD, .inv3, a folder's DICOM series), read by
ldm.data.volumes in the viewer orientation the slice converter uses, with their geometry. A
volume's slices are named like the converter's (`<volume>_slice_<NNN>`, 1-based): that name seeds
each slice's sampling, and names its PNG when a volume is written as slices.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ldm.data.intensity import SLICE_SUFFIXES, Window, read_slice, to_model_range
from ldm.data.volumes import VOLUME_SUFFIXES, Volume, is_dicom_file, load_volume, slice_name, suffix_of, volume_stem


class InputError(ValueError):
    """An input cannot be read as CT slices; the message starts with the file."""


@dataclass
class InputSlice:
    name: str  # output path relative to --out, without suffix
    values: np.ndarray  # (h, w) float32: HU (kind 'hu') or 8-bit levels (kind 'u8')
    kind: str


@dataclass
class InputVolume:
    name: str  # output path relative to --out, without suffix
    volume: Volume

    def slices(self) -> list[InputSlice]:
        """The volume's slices, in order, named `<name>_slice_<NNN>` like ldm.data.convert."""
        count = len(self.volume.hu)
        return [InputSlice(slice_name(self.name, index, count)[: -len(".png")], hu, "hu")
                for index, hu in enumerate(self.volume.hu)]


def is_input_file(path: Path) -> bool:
    """PNG, volume or DICOM (by suffix or preamble); .img is read through its .hdr, hidden files skipped."""
    if path.name.startswith(".") or not path.is_file():
        return False
    suffix = suffix_of(path)
    return suffix in SLICE_SUFFIXES or suffix in VOLUME_SUFFIXES or (suffix != ".img" and is_dicom_file(path))


def find_inputs(path: str | os.PathLike[str]) -> list[tuple[Path, str]]:
    """(input, output stem) pairs: the file itself, or every input under a folder (sub-folders kept).

    In a folder, the DICOM files of each folder are one series, read as one volume named after
    the folder (as ldm.data.convert reads them); a single DICOM file given as --input is a slice.
    """
    path = Path(path)
    if path.is_file():
        return [(path, volume_stem(path) if suffix_of(path) != ".png" else path.stem)]
    if not path.is_dir():
        raise InputError(f"{path}: no such file or folder")
    found = []
    for folder, _, files in sorted(os.walk(path)):
        folder = Path(folder)
        inputs = [folder / name for name in sorted(files) if is_input_file(folder / name)]
        series = [file for file in inputs if suffix_of(file) not in SLICE_SUFFIXES + VOLUME_SUFFIXES]
        if series:
            rel = folder.relative_to(path)
            found.append((folder, (rel if rel.parts else Path(path.resolve().name)).as_posix()))
        for file in inputs:
            if file not in series:
                rel = file.relative_to(path).parent / (file.stem if suffix_of(file) == ".png" else volume_stem(file))
                found.append((file, rel.as_posix()))
    if not found:
        raise InputError(f"{path}: no PNG, DICOM or volume files in the folder")
    return found


def read_input(path: Path, stem: str) -> InputSlice | InputVolume:
    """One input as LR: a PNG or a single DICOM slice is a slice, anything else a volume with its geometry."""
    if suffix_of(path) in SLICE_SUFFIXES:
        values, kind = read_slice(path)  # SliceReadError is a ValueError naming the file
        return InputSlice(stem, values, kind)
    volume = load_volume(path)  # (slices, rows, cols) HU and geometry; VolumeError names the file
    if path.is_file() and is_dicom_file(path) and volume.hu.shape[0] == 1:
        return InputSlice(stem, volume.hu[0], "hu")  # a DICOM slice keeps its own name
    return InputVolume(stem, volume)


def output_size(shape: tuple[int, int], scale: float | None, out_size: tuple[int, int] | None) -> tuple[int, int]:
    if out_size is not None:
        return (int(out_size[0]), int(out_size[1]))
    if scale is None:
        raise ValueError("give a scale or an output size")
    return (round(shape[0] * scale), round(shape[1] * scale))


def lr_batch(items: Sequence[InputSlice], hu_window: Window) -> torch.Tensor:
    """Slices of one shape and kind -> the LR batch (B, 1, h, w) in the model's [-1, 1] of hu_window."""
    if not items:
        raise ValueError("lr_batch: an empty batch")
    if len({(item.values.shape, item.kind) for item in items}) != 1:
        raise ValueError("lr_batch: a batch needs slices of one shape and kind")
    return torch.from_numpy(np.stack([to_model_range(item.values, item.kind, hu_window) for item in items]))[:, None]
