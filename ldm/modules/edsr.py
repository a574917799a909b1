"""EDSR-baseline feature extractor (Lim et al., 2017) without its upsampler, LIIF's encoder.

LR (B, in_channels, h, w) -> features (B, n_feats, h, w). No mean shift: CT slices arrive
already centred on [-1, 1] (LIIF's own EDSR skips it too).
"""

from __future__ import annotations

import torch
from torch import nn


class ResBlock(nn.Module):
    def __init__(self, n_feats: int, res_scale: float = 1.0) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_feats, n_feats, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(n_feats, n_feats, 3, padding=1)
        )
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) * self.res_scale


class EDSR(nn.Module):
    def __init__(self, in_channels: int = 1, n_resblocks: int = 16, n_feats: int = 64, res_scale: float = 1.0) -> None:
        super().__init__()
        self.head = nn.Conv2d(in_channels, n_feats, 3, padding=1)
        blocks = [ResBlock(n_feats, res_scale) for _ in range(n_resblocks)]
        self.body = nn.Sequential(*blocks, nn.Conv2d(n_feats, n_feats, 3, padding=1))
        self.out_dim = n_feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        return x + self.body(x)  # (B, n_feats, h, w)
