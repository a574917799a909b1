"""Collate functions that turn HR slices into SR training batches (the pipeline degrades, not the model).

Every batch is a dict:
  hr    (B, 1, H, W)   the model's input-size slice, [-1, 1]
  lr    (B, 1, h, w)   the degradation of hr at the batch's scale
  gt    (B, 1, Ho, Wo) the target at the batch's output size (hr resized, or hr itself)
  scale (B,)           H / h
  path  list[str]
Scales and output sizes are drawn once per batch so that the batch stacks.
"""

from __future__ import annotations

import math

import torch

from ldm.data.degradation import degrade, resize


class SRBatches:
    """Two regimes:

    hr fixed (lr_size None): the slice is the HR input; scale ~ U(scale_range) gives the LR size,
        and gt is hr resized to a size ~ U{gt_size_range} (default: hr's own size).
        Used by the first stage and the latent diffusion model.
    lr fixed (lr_size set, LIIF's protocol): scale ~ U(scale_range), an HR patch of
        round(lr_size * scale) is cut from the slice and degraded to lr_size; gt = hr.
    fixed_scale replaces the random draw (validation); noise is then seeded per batch.
    """

    def __init__(
        self,
        scale_range: tuple[float, float] = (1.0, 4.0),
        gt_size_range: tuple[int, int] | None = None,
        lr_size: int | None = None,
        degradation: str = "bicubic",
        noise_hu: float = 0.0,
        window_width: float = 4095.0,
        fixed_scale: float | None = None,
    ) -> None:
        lo, hi = (float(v) for v in scale_range)
        if not 1.0 <= lo <= hi:
            raise ValueError(f"scale_range: expected 1 <= min <= max, got {scale_range}")
        self.scale_range = (lo, hi)
        self.gt_size_range = tuple(gt_size_range) if gt_size_range else None
        self.lr_size = lr_size
        self.degradation = degradation
        self.noise_hu = noise_hu
        self.window_width = window_width
        self.fixed_scale = fixed_scale

    def _scale(self, rng: torch.Generator | None) -> float:
        if self.fixed_scale is not None:
            return float(self.fixed_scale)
        lo, hi = self.scale_range
        return lo + (hi - lo) * float(torch.rand((), generator=rng))

    def _crop(self, images: torch.Tensor, size: int, rng: torch.Generator | None) -> torch.Tensor:
        h, w = images.shape[-2:]
        if self.fixed_scale is not None:
            top, left = (h - size) // 2, (w - size) // 2
        else:
            top = int(torch.randint(0, h - size + 1, (), generator=rng))
            left = int(torch.randint(0, w - size + 1, (), generator=rng))
        return images[..., top : top + size, left : left + size]

    def __call__(self, items: list[dict]) -> dict:
        images = torch.stack([item["image"] for item in items])  # (B, 1, H, W)
        # Items from a SeededSampler carry seeds: the batch's draws then follow the first one,
        # whatever worker or process assembles the batch.
        rng = torch.Generator().manual_seed(items[0]["seed"] ^ 0x5EED) if "seed" in items[0] else None
        scale = self._scale(rng)
        if self.lr_size is not None:
            lr_size = self.lr_size
            hr_size = min(round(lr_size * scale), images.shape[-2], images.shape[-1])
            hr = self._crop(images, hr_size, rng)
            gt = hr
        else:
            hr = images
            lr_size = max(1, round(hr.shape[-2] / scale))
            if self.gt_size_range is None or self.fixed_scale is not None:
                gt = hr
            else:
                lo, hi = self.gt_size_range
                gt = resize(hr, int(torch.randint(int(lo), int(hi) + 1, (), generator=rng)))
        generator = rng
        if generator is None and self.fixed_scale is not None:
            generator = torch.Generator().manual_seed(int(scale * 1e6))
        lr_hw = (lr_size, max(1, round(hr.shape[-1] * lr_size / hr.shape[-2])))
        lr = degrade(hr, lr_hw, self.degradation, self.noise_hu, self.window_width, generator)
        real_scale = hr.shape[-2] / lr_size
        if not math.isfinite(real_scale):
            raise ValueError(f"scale: degenerate LR size for scale {scale}")
        return {
            "hr": hr.contiguous(),
            "lr": lr.contiguous(),
            "gt": gt.contiguous(),
            "scale": torch.full((hr.shape[0],), real_scale),
            "path": [item["path"] for item in items],
        }
