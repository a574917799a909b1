"""Which slices an evaluation covers, checked before anything is written.

A slice that cannot be read is reported and skipped (folder-wide runs finish the rest); a set
that cannot be evaluated at all (no slices, slices smaller than the LR size, 16-bit HU mixed
with 8-bit images) is refused with one line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ldm.data.intensity import SLICE_SUFFIXES, SliceReadError, Window, read_slice, to_model_range
from ldm.data.slices import read_split_list


class SliceSetError(ValueError):
    """The slices asked for cannot be evaluated; the message names the folder or file."""


@dataclass(frozen=True)
class SliceRef:
    path: Path
    name: str  # relative to the data root, '/'-separated: the image's identity (seed, CSV, file names)
    shape: tuple[int, int]


@dataclass
class SliceSet:
    root: Path
    slices: list[SliceRef]
    data_kind: str  # 'hu' (16-bit HU PNGs) or 'u8' (8-bit images)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"image", "reason"}


def slice_paths(root: str | os.PathLike[str], list_file: str | os.PathLike[str] | None = None) -> list[Path]:
    """The slices a split/list file names (all must exist), or every PNG under root, sorted."""
    root = Path(root)
    if list_file is not None:
        return read_split_list(list_file, root)
    if not root.is_dir():
        raise SliceSetError(f"{root}: data root not found")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in SLICE_SUFFIXES and p.is_file())
    if not paths:
        raise SliceSetError(f"{root}: no PNG slices under the data root")
    return paths


def relative_name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:  # a list may name slices outside the root ('../x.png')
        return Path(os.path.relpath(path, root)).as_posix()


def scan(
    paths: list[Path], root: str | os.PathLike[str], lr_size: int, first_k: int | None = None, every: int = 1
) -> SliceSet:
    """Read every slice once: unreadable ones are skipped with their reason, the rest must fit lr_size.

    every: keep every n-th slice of the list (a fixed stride through a volume), then first_k."""
    root = Path(root)
    if every < 1:
        raise SliceSetError(f"--every: must be >= 1, got {every}")
    paths = paths[::every]
    if first_k is not None:
        if first_k <= 0:
            raise SliceSetError(f"--first_k: must be positive, got {first_k}")
        paths = paths[:first_k]
    refs, kinds, skipped = [], set(), []
    for path in paths:
        name = relative_name(path, root)
        try:
            values, kind = read_slice(path)
        except SliceReadError as err:
            skipped.append({"image": name, "reason": str(err)})
            continue
        if values.ndim != 2 or min(values.shape) < lr_size:
            raise SliceSetError(
                f"{path}: slice {'x'.join(map(str, values.shape))} is smaller than --lr_size {lr_size}"
            )
        refs.append(SliceRef(path, name, (int(values.shape[0]), int(values.shape[1]))))
        kinds.add(kind)
    if not refs:
        raise SliceSetError(f"{root}: none of the {len(paths)} slice(s) could be read: {unreadable_summary(skipped)}")
    if len(kinds) > 1:
        raise SliceSetError(f"{root}: mixes 16-bit HU and 8-bit slices; evaluate them separately")
    return SliceSet(root=root, slices=refs, data_kind=kinds.pop(), skipped=skipped)


def unreadable_summary(skipped: list[dict[str, str]], most: int = 5) -> str:
    """The first `most` unreadable slices' reasons (each names its file) on one line, then how many more.

    One line, because a refused set is reported as one; capped, because a folder of thousands of
    files of the wrong kind must not print thousands of reasons.
    """
    shown = "; ".join(item["reason"] for item in skipped[:most])
    more = len(skipped) - most
    return shown + (f"; and {more} more" if more > 0 else "")


def load(ref: SliceRef, hu_window: Window) -> torch.Tensor:
    """A slice as (1, 1, H, W) float32 in [-1, 1] through the model's window."""
    values, kind = read_slice(ref.path)
    return torch.from_numpy(to_model_range(values, kind, hu_window))[None, None]
