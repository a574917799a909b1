"""Reconstruction losses of the first stage (plain L1 in the paper; an optional edge term)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gradient_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between the finite-difference gradients (rows and columns) of two (B, C, H, W) images.

    Plain L1 is satisfied by a slightly blurred edge; matching the gradients penalises that directly.
    """
    rows = F.l1_loss(pred.diff(dim=-2), target.diff(dim=-2))
    cols = F.l1_loss(pred.diff(dim=-1), target.diff(dim=-1))
    return rows + cols
