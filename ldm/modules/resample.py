"""Reading an LR slice at a larger size: the one upsampling the conditioning, the first stage and
the baselines share (the data pipeline's antialiased downsampling lives in ldm/data/degradation.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# interpolate mode per name ("nearest-exact" is the pixel-centre-correct nearest neighbour)
UPSAMPLE_MODES = {"nearest": "nearest-exact", "bilinear": "bilinear", "bicubic": "bicubic"}


def check_upsample_mode(mode: str, key: str = "upsample mode") -> str:
    """`key` names the config entry in the error (models pass 'cond_upsample')."""
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"{key}: expected one of {sorted(UPSAMPLE_MODES)}, got '{mode}'")
    return mode


def upsample(lr: torch.Tensor, size: int | tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """LR (B, C, h, w) -> (B, C, *size) by the named interpolation."""
    size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    torch_mode = UPSAMPLE_MODES[check_upsample_mode(mode)]
    align = {} if torch_mode == "nearest-exact" else {"align_corners": False}
    return F.interpolate(lr, size=size, mode=torch_mode, **align)
