"""How an evaluation pair is made: GT from the slice, LR from the GT, both seeded per image.

For a slice x (in the model's [-1, 1]) at LR size N and scale S:
    GT = x resized (antialiased bicubic, float) to round(N*S) x round(N*S)
    LR = degrade(GT, N x N) with the configured degradation, noise drawn from the image's own seed
The seed of an image depends only on the run seed and the slice's path relative to the data
root, so adding slices, reordering the list, changing the batch size or evaluating another
scale in the same run never changes an image's LR.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from ldm.data.degradation import DEGRADATIONS, degrade, resize
from ldm.data.intensity import Window, check_window


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


def image_seed(seed: int, name: str) -> int:
    """A stable 32-bit seed per image (crc32 of the run seed and the slice's relative path).

    Python's hash() is salted per process, so it would not reproduce across runs.
    """
    return zlib.crc32(f"{seed}:{name}".encode())


def scale_name(scale: float) -> str:
    """Folder / table label of a scale: 2 -> 'x2', 3.5 -> 'x3.5'."""
    return f"x{scale:g}"
