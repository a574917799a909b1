"""The first stage's convolutional halves, after the latent-diffusion autoencoder (Rombach et al.).

Encoder: image (B, in, H, W) -> latent (B, embed_dim or 2*embed_dim, H/f, W/f), f = 2^(levels-1).
LatentDecoder: latent (B, embed_dim, h, w) -> feature map (B, out_ch, h, w): the latent-diffusion
decoder without its upsampling layers; the LIIF query renders the image from it at any size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def Normalize(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the most groups <= max_groups that divide `channels` (tiny models use 16-48)."""
    return nn.GroupNorm(math.gcd(max_groups, channels), channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with a skip (a 1x1 conv when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, with a residual (the mid block's global context)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = Normalize(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # contiguous so that SDPA takes a fused kernel, not the quadratic-memory math path (see unet.py)
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, 1, c, h * w).transpose(-1, -2).contiguous().unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, 1, hw, C)
        return x + self.proj_out(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 conv; LDM pads right/bottom only so that even sizes halve exactly."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class MidBlock(nn.Module):
    def __init__(self, channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, dropout=dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """ResNet levels at widths ch * ch_mult, halving the size after each level but the last.

    The final 1x1 conv maps z_channels to the latent: embed_dim channels, or 2*embed_dim
    (mean, log-variance) when double_z for a KL latent.
    """

    def __init__(
        self,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        z_channels: int,
        embed_dim: int,
        in_channels: int = 1,
        double_z: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.downsample_factor = 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        levels = []
        width = ch
        for i, mult in enumerate(ch_mult):
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(width, ch * mult, dropout))
                width = ch * mult
            if i < len(ch_mult) - 1:
                blocks.append(Downsample(width))
            levels.append(nn.Sequential(*blocks))
        self.down = nn.Sequential(*levels)
        self.mid = MidBlock(width, dropout)
        self.norm_out = Normalize(width)
        self.conv_out = nn.Conv2d(width, z_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(z_channels, 2 * embed_dim if double_z else embed_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.down(self.conv_in(x)))  # (B, ch*ch_mult[-1], H/f, W/f)
        return self.quant_conv(self.conv_out(F.silu(self.norm_out(h))))


class LatentDecoder(nn.Module):
    """Latent (B, embed_dim, h, w) -> feature map (B, out_ch, h, w) for the LIIF query.

    The latent-diffusion decoder (1x1 conv, conv_in, mid block with attention, num_res_blocks+1
    ResNet blocks per level from ch*ch_mult[-1] down to ch) with every upsampling layer removed:
    the implicit decoder does all the scaling, so the features stay at latent resolution.
    """

    def __init__(
        self,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        z_channels: int,
        embed_dim: int,
        out_ch: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        width = ch * ch_mult[-1]
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.conv_in = nn.Conv2d(z_channels, width, 3, padding=1)
        self.mid = MidBlock(width, dropout)
        blocks = []
        for mult in reversed(ch_mult):
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(width, ch * mult, dropout))
                width = ch * mult
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = Normalize(width)
        self.conv_out = nn.Conv2d(width, out_ch, 3, padding=1)
        self.out_ch = out_ch

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(self.post_quant_conv(z)))
        return self.conv_out(F.silu(self.norm_out(self.blocks(h))))  # (B, out_ch, h, w)
