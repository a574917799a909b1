"""A dataset of CT slices listed in a split file (one path per line, relative to the data root)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ldm.data.degradation import resize
from ldm.data.intensity import FULL_WINDOW, Window, check_window, read_slice, to_model_range


class SplitListError(ValueError):
    """A split file is missing, empty or names slices that are not there."""


def read_split_list(list_file: str | os.PathLike[str], root: str | os.PathLike[str]) -> list[Path]:
    """Paths named by a split file, checked to exist under root (error names both files)."""
    list_file, root = Path(list_file), Path(root)
    if not list_file.is_file():
        raise SplitListError(f"{list_file}: split file not found (run split.py first)")
    names = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    if not names:
        raise SplitListError(f"{list_file}: split file lists no slices")
    paths = [root / name for name in names]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise SplitListError(
            f"{list_file}: {len(missing)} listed slice(s) missing under {root} (first: {missing[0].name})"
        )
    return paths


class CTSlices(Dataset):
    """Slices as (1, H, W) tensors in [-1, 1] (one channel: CT is grayscale).

    resize: antialiased resize of the whole slice first (e.g. 512 -> 256);
    crop: a square crop after that (random when augment, central otherwise);
    augment: random crop, flips and rot90.
    """

    def __init__(
        self,
        paths: list[Path],
        hu_window: Window = FULL_WINDOW,
        resize: int | None = None,
        crop: int | None = None,
        augment: bool = False,
    ) -> None:
        self.paths = list(paths)
        self.hu_window = check_window(hu_window)
        self.resize_to = resize
        self.crop = crop
        self.augment = augment

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> torch.Tensor:
        values, kind = read_slice(self.paths[index])
        x = torch.from_numpy(to_model_range(values, kind, self.hu_window))[None]  # (1, H, W)
        if self.resize_to is not None:
            x = resize(x[None], self.resize_to)[0]
        return x

    def _crop(self, x: torch.Tensor, index: int, rng: torch.Generator | None) -> torch.Tensor:
        size = self.crop
        h, w = x.shape[-2:]
        if size is None:
            return x
        if h < size or w < size:
            raise ValueError(f"{self.paths[index]}: slice {h}x{w} is smaller than crop {size}")
        if self.augment:
            top = int(torch.randint(0, h - size + 1, (), generator=rng))
            left = int(torch.randint(0, w - size + 1, (), generator=rng))
        else:
            top, left = (h - size) // 2, (w - size) // 2
        return x[:, top : top + size, left : left + size]

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        """item: an index, or (index, seed) from a SeededSampler (then every draw follows the seed)."""
        index, seed = item if isinstance(item, tuple) else (item, None)
        rng = torch.Generator().manual_seed(seed) if seed is not None else None
        x = self._crop(self.load(index), index, rng)
        if self.augment:
            if torch.rand((), generator=rng) < 0.5:
                x = x.flip(-1)
            if torch.rand((), generator=rng) < 0.5:
                x = x.flip(-2)
            x = torch.rot90(x, int(torch.randint(0, 4, (), generator=rng)), dims=(-2, -1))
        out = {"image": x.contiguous(), "path": str(self.paths[index])}
        if seed is not None:
            out["seed"] = seed
        return out
