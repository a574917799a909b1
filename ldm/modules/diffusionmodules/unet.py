"""The denoiser: a latent-diffusion UNet (Ho et al. / Dhariwal & Nichol layout) over concat[z_t, c].

Forward has no data-dependent Python control flow (torch.compile traces it once per shape) and
works in channels_last; attention is torch's fused scaled_dot_product_attention.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.diffusionmodules.model import Normalize


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim), [cos | sin] halves as in latent diffusion."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's weights so a residual branch starts as the identity (as LDM does)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the timestep embedding added between, 1x1 skip when widths differ."""

    def __init__(self, channels: int, out_channels: int, emb_channels: int, dropout: float) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(Normalize(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            Normalize(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb)[:, :, None, None]
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H x W positions, residual, zero-initialised projection."""

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention: {num_heads} heads do not divide {channels} channels")
        self.num_heads = num_heads
        self.norm = Normalize(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        # contiguous (B, heads, HW, d): the fused (flash) kernels need a unit stride in d, and
        # without it SDPA falls back to the math path, which materialises the HW x HW matrix
        # (4-7x slower on the CPU at 4k-16k tokens, and quadratic memory)
        q, k, v = qkv.transpose(-1, -2).contiguous().unbind(dim=1)
        # bf16-safe: the fused kernels keep the softmax's running max and sum in fp32 and scale q
        # before the product, unlike LDM's q @ k^T in the autocast dtype followed by softmax
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, d)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One UNet stage: a ResBlock, optionally followed by attention."""

    def __init__(self, res: ResBlock, attn: AttentionBlock | None) -> None:
        super().__init__()
        self.res = res
        self.attn = attn if attn is not None else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.attn(self.res(x, emb))


class UNetModel(nn.Module):
    """eps (or v) predictor: (B, in_channels, h, w), t (B,) -> (B, out_channels, h, w).

    in_channels = 2 x latent channels (z_t and the LR condition, concatenated by the caller);
    h and w must be multiples of `downsample_factor`. attention_resolutions are downsample
    factors (LDM style): attention at the levels whose feature map is 1/ds of the input.
    num_head_channels > 0 fixes the width per head and overrides num_heads.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        model_channels: int,
        channel_mult: Sequence[int] = (1, 2, 4),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (4, 2),
        num_heads: int = 4,
        num_head_channels: int = -1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.model_channels = model_channels
        self.channel_mult = tuple(channel_mult)
        emb_channels = 4 * model_channels
        attention_resolutions = set(attention_resolutions)

        def attention(channels: int) -> AttentionBlock:
            heads = channels // num_head_channels if num_head_channels > 0 else num_heads
            return AttentionBlock(channels, heads)

        def block(ch_in: int, ch_out: int, ds: int) -> Level:
            attn = attention(ch_out) if ds in attention_resolutions else None
            return Level(ResBlock(ch_in, ch_out, emb_channels, dropout), attn)

        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels)
        )
        self.conv_in = nn.Conv2d(in_channels, model_channels, 3, padding=1)

        self.down = nn.ModuleList()
        skip_channels = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(self.channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(block(ch, mult * model_channels, ds))
                ch = mult * model_channels
                skip_channels.append(ch)
            if level < len(self.channel_mult) - 1:
                self.down.append(Downsample(ch))
                skip_channels.append(ch)
                ds *= 2

        self.mid_res1 = ResBlock(ch, ch, emb_channels, dropout)
        self.mid_attn = attention(ch)
        self.mid_res2 = ResBlock(ch, ch, emb_channels, dropout)

        # each up stage eats one skip per ResBlock: num_res_blocks + 1 per level mirrors the
        # num_res_blocks ResBlocks plus the Downsample (or conv_in) on the way down
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for i in range(num_res_blocks + 1):
                self.up.append(block(ch + skip_channels.pop(), mult * model_channels, ds))
                ch = mult * model_channels
                if level > 0 and i == num_res_blocks:
                    self.up.append(Upsample(ch))
                    ds //= 2

        self.out = nn.Sequential(Normalize(ch), nn.SiLU(), zero_module(nn.Conv2d(ch, out_channels, 3, padding=1)))

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(x.dtype))  # (B, 4 mc)
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = layer(h) if isinstance(layer, Downsample) else layer(h, emb)
            skips.append(h)
        h = self.mid_res2(self.mid_attn(self.mid_res1(h, emb)), emb)  # (B, C_max, h / ds, w / ds)
        for layer in self.up:
            if isinstance(layer, Upsample):
                h = layer(h)
            else:
                h = layer(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
