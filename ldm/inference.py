"""Super-resolving one's own slices (sr.py): find inputs, read them as LR slices, run a loaded run.

Inputs are PNG slices (16-bit HU+1024 or 8-bit), DICOM files (HU through RescaleSlope/Intercept)
and volumes (NIfTI, Analyze, NRRD, .inv3), read by ldm.data.volumes in the viewer orientation the
slice converter uses and named like its slices (`<volume>_slice_<NNN>`, 1-based), so an SR of a
volume lines up with the converted training data.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ldm.data.convert import VOLUME_SUFFIXES, slice_name, volume_stem
from ldm.data.intensity import SLICE_SUFFIXES, Window, read_slice, to_model_range
from ldm.data.volumes import is_dicom_file, read_volume, suffix_of
from ldm.models.base import SuperResolver
from ldm.precision import autocast


class InputError(ValueError):
    """An input cannot be read as CT slices; the message starts with the file."""


@dataclass
class InputSlice:
    name: str  # output path relative to --out, without suffix
    values: np.ndarray  # (h, w) float32: HU (kind 'hu') or 8-bit levels (kind 'u8')
    kind: str


def is_input_file(path: Path) -> bool:
    """PNG, volume or DICOM (by suffix or preamble); .img is read through its .hdr, hidden files skipped."""
    if path.name.startswith(".") or not path.is_file():
        return False
    suffix = suffix_of(path)
    return suffix in SLICE_SUFFIXES or suffix in VOLUME_SUFFIXES or (suffix != ".img" and is_dicom_file(path))


def find_inputs(path: str | os.PathLike[str]) -> list[tuple[Path, str]]:
    """(file, output stem) pairs: the file itself, or every input file under a folder (sub-folders kept)."""
    path = Path(path)
    if path.is_file():
        return [(path, volume_stem(path) if suffix_of(path) != ".png" else path.stem)]
    if not path.is_dir():
        raise InputError(f"{path}: no such file or folder")
    found = []
    for folder, _, files in sorted(os.walk(path)):
        for name in sorted(files):
            file = Path(folder) / name
            if is_input_file(file):
                rel = file.relative_to(path).parent / (file.stem if suffix_of(file) == ".png" else volume_stem(file))
                found.append((file, rel.as_posix()))
    if not found:
        raise InputError(f"{path}: no PNG, DICOM or volume files in the folder")
    return found


def read_input(path: Path, stem: str) -> Iterator[InputSlice]:
    """The LR slices of one input file; a volume (or multi-frame DICOM) yields `<stem>_slice_<NNN>`."""
    if suffix_of(path) in SLICE_SUFFIXES:
        values, kind = read_slice(path)  # SliceReadError is a ValueError naming the file
        yield InputSlice(stem, values, kind)
        return
    volume = read_volume(path)  # (slices, rows, cols) HU; VolumeError names the file
    if volume.shape[0] == 1 and is_dicom_file(path):
        yield InputSlice(stem, volume[0], "hu")  # a DICOM slice keeps its own name
        return
    for index, hu in enumerate(volume):
        yield InputSlice(slice_name(stem, index, len(volume))[: -len(".png")], hu, "hu")


def output_size(shape: tuple[int, int], scale: float | None, out_size: tuple[int, int] | None) -> tuple[int, int]:
    if out_size is not None:
        return (int(out_size[0]), int(out_size[1]))
    if scale is None:
        raise ValueError("give a scale or an output size")
    return (round(shape[0] * scale), round(shape[1] * scale))


@torch.no_grad()
def super_resolve_slices(
    model: SuperResolver,
    items: Sequence[InputSlice],
    hu_window: Window,
    out_size: tuple[int, int],
    sampling: dict[str, object],
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Slices of one shape and kind, in one batch -> per slice (SR mean (H, W), per-pixel std of
    the samples (H, W) or None), both in model units on the CPU.

    sampling may hold "seed" as one seed per slice (the LDM then draws each slice's noise from its
    own seed, so a result does not depend on the batch). precision: "fp32" or "bf16".
    """
    if not items:
        raise ValueError("super_resolve_slices: an empty batch")
    if len({(item.values.shape, item.kind) for item in items}) != 1:
        raise ValueError("super_resolve_slices: a batch needs slices of one shape and kind")
    values = np.stack([to_model_range(item.values, item.kind, hu_window) for item in items])
    lr = torch.from_numpy(values)[:, None].to(device)  # (B, 1, h, w)
    with autocast(device, precision):
        samples = model.super_resolve(lr, out_size, **sampling)
    samples = samples.detach().float().cpu()  # (B, K, H, W)
    stds = samples.std(dim=1, correction=0) if samples.shape[1] > 1 else [None] * len(items)
    return list(zip(samples.mean(dim=1), stds, strict=True))
