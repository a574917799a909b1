"""What every super-resolver shares: the `super_resolve` entry point and the input-size rule.

eval_sr.py, sr.py, the demo and bench/ call only `super_resolve(lr, out_size, **sampling)`
and read `kind`; nothing outside a model knows its internals.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch


class SuperResolver(Protocol):
    kind: str  # "first_stage", "liif" or "ldm"

    def super_resolve(
        self, lr: torch.Tensor, out_size: tuple[int, int], **sampling: object
    ) -> torch.Tensor:
        """LR (B, 1, h, w) in [-1, 1] -> SR (B, 1, *out_size) in [-1, 1]."""
        ...


def check_out_size(lr: torch.Tensor, out_size: tuple[int, int]) -> tuple[int, int]:
    if lr.ndim != 4 or lr.shape[1] != 1:
        raise ValueError(f"lr: expected a (B, 1, h, w) tensor, got shape {tuple(lr.shape)}")
    h, w = (int(v) for v in out_size)
    if h <= 0 or w <= 0:
        raise ValueError(f"out_size: must be positive, got {(h, w)}")
    return h, w


def model_input_size(
    lr_hw: tuple[int, int], out_hw: tuple[int, int], max_input_scale: float, multiple: int
) -> tuple[int, int]:
    """The size the LR is upsampled to before the encoder (and so the latent size x f).

    It follows the output size, so a 512 px clinical slice runs on a larger latent, but never
    exceeds max_input_scale x the LR size: past that the latent stays put and the implicit
    decoder does the rest of the scaling (the paper's latent is tied to the training size).
    Rounded up to `multiple` (the encoder's f times the denoiser's own downsampling).
    """
    size = []
    for lr_n, out_n in zip(lr_hw, out_hw, strict=True):
        n = min(out_n, lr_n * max_input_scale)
        size.append(max(multiple, math.ceil(n / multiple) * multiple))
    return size[0], size[1]
