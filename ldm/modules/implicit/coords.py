"""Pixel-centre coordinates and cell sizes: the one coordinate convention of the project.

A grid of n pixels along an axis spans [-1, 1]; pixel i sits at its centre
v = -1 + r + 2 r i with r = 1/n (LIIF's convention, and grid_sample's with align_corners=False).
Coordinates are (row, col); grid_sample wants (x, y), so readers flip the last axis.
A cell is the size of one output pixel in the same units: (2/H, 2/W).
Tensors are made on the caller's device; coordinates default to float32 because bf16
cannot tell neighbouring pixels of a 2048 px grid apart.
"""

from __future__ import annotations

import torch


def make_coord(
    shape: tuple[int, int],
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    flatten: bool = True,
) -> torch.Tensor:
    """Pixel centres of an (H, W) grid: (H*W, 2) if flatten else (H, W, 2), (row, col) order."""
    dtype = dtype or torch.float32
    axes = [-1.0 + (2 * torch.arange(n, device=device, dtype=dtype) + 1) / n for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (H, W, 2)
    return grid.reshape(-1, 2) if flatten else grid


def make_cell(
    shape: tuple[int, int],
    n: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The cell (2/H, 2/W) of an (H, W) output grid, repeated for n queries (default H*W): (n, 2)."""
    h, w = shape
    n = h * w if n is None else n
    cell = torch.tensor([2.0 / h, 2.0 / w], device=device, dtype=dtype or torch.float32)
    return cell.expand(n, 2).clone()


def sample_queries(
    image: torch.Tensor, n: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n random pixels per image, drawn without replacement and independently per batch element.

    image (B, C, H, W) -> coords (B, n, 2), cells (B, n, 2), values (B, n, C); n is capped at H*W.
    """
    b, c, h, w = image.shape
    n = min(n, h * w)
    weights = torch.ones(b, h * w, device=image.device)
    index = torch.multinomial(weights, n, replacement=False, generator=generator)  # (B, n)
    coords = make_coord((h, w), device=image.device)[index]  # (B, n, 2)
    cells = make_cell((h, w), n, device=image.device).expand(b, n, 2)
    values = torch.gather(image.reshape(b, c, h * w), 2, index[:, None].expand(b, c, n)).transpose(1, 2)
    return coords, cells, values
