"""What an evaluation measures: which slices, and how each becomes a seeded GT/LR pair.

Slices first (checked before anything is written): a slice that cannot be read is reported and
skipped (folder-wide runs finish the rest); a set that cannot be evaluated at all (no slices,
slices smaller than the LR size, 16-bit HU mixed with 8-bit images) is refused with one line.

Then the pair. For a slice x (in the model's [-1, 1]) at LR size N and scale S:
    GT = x resized (antialiased bicubic, float) to round(N*S) x round(N*S)
    LR = degrade(GT, N x N) with the configured degradation, noise drawn from the image's own seed
The seed of an image depends only on the run seed and the slice's path relative to the data
root, so adding slices, reordering the list, changing the batch size or evaluating another
scale in the same run never changes an image's LR.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ldm.data.degradation import DEGRADATIONS, degrade, resize
from ldm.data.intensity import SLICE_SUFFIXES, SliceReadError, Window, check_window, read_slice, to_model_range
from ldm.data.slices import read_split_list

# ---- which slices ------------------------------------------------------------------------------


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


# ---- the pair of each slice --------------------------------------------------------------------


@dataclass(frozen=True)
class Protocol:
    lr_size: int
    scale_ratios: tuple[float, ...]
    degradation: str = "bicubic"
    noise_hu: float = 0.0
    hu_window: Window = (-1024.0, 3071.0)
    seed: int = 23

    def __post_init__(self) -> None:
        if self.lr_size <= 0:
            raise ValueError(f"--lr_size: must be a positive number of pixels, got {self.lr_size}")
        if not self.scale_ratios:
            raise ValueError("--scale_ratio: give at least one scale")
        bad = [s for s in self.scale_ratios if not s > 1.0]
        if bad:
            raise ValueError(f"--scale_ratio: every scale must be > 1 (super-resolution), got {bad[0]:g}")
        if len(set(self.scale_ratios)) != len(self.scale_ratios):
            raise ValueError(f"--scale_ratio: repeated scale in {list(self.scale_ratios)}")
        if self.degradation not in DEGRADATIONS:
            raise ValueError(f"--degradation: expected one of {DEGRADATIONS}, got '{self.degradation}'")
        if self.noise_hu < 0:
            raise ValueError(f"--noise_hu: must be >= 0, got {self.noise_hu:g}")
        check_window(self.hu_window)

    @property
    def window_width(self) -> float:
        return float(self.hu_window[1] - self.hu_window[0])

    def out_size(self, scale: float) -> tuple[int, int]:
        n = round(self.lr_size * scale)
        return (n, n)

    def lr_of(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The configured degradation of (B, 1, H, W) images to lr_size (noise only with a generator)."""
        noise = self.noise_hu if generator is not None else 0.0
        return degrade(image, self.lr_size, self.degradation, noise, self.window_width, generator)

    def pair(self, slice_: torch.Tensor, scale: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A (1, 1, H, W) slice in [-1, 1] -> (GT (1, 1, M, M), LR (1, 1, N, N)), M = round(N * scale)."""
        gt = resize(slice_, self.out_size(scale), antialias=True)
        lr = self.lr_of(gt, torch.Generator().manual_seed(seed))
        return gt, lr


def scale_name(scale: float) -> str:
    """Folder / table label of a scale: 2 -> 'x2', 3.5 -> 'x3.5'."""
    return f"x{scale:g}"
