"""Large latents in overlapping tiles, so memory does not grow with the output size.

The latent follows the output size (a 512 px slice at x2 is a 512 x 512 latent for f = 2), and
the UNet's global self-attention is quadratic in the latent's pixels: without tiles a real slice
needs tens of GB. `tiled(model, tile, overlap, multiple)` wraps an eps model so that each call
denoises tiles of at most `tile` x `tile` latent pixels and blends their predictions with weights
that ramp linearly across the overlaps (MultiDiffusion-style: every step sees one consistent
latent, so no seam is frozen in). A latent that fits in one tile is denoised whole, exactly as
before. The first stage's encoder and decoder have global attention too (their mid blocks), and
ImplicitAutoencoder runs them through the same `blend_tiles`. The models were trained on small
crops (32 x 32 latents in the demo, 64 x 64 at 256 px), so a tile several times that size is no
further from training than a whole slice is.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Model = Callable[..., torch.Tensor]


def tile_spans(n: int, tile: int, overlap: int, multiple: int) -> list[tuple[int, int]]:
    """(start, stop) of the tiles covering 0..n: as few as `tile` allows with at least `overlap`
    shared pixels, spread evenly and shrunk to the smallest size (a multiple of `multiple`) that
    still covers n, so no pixel is denoised more often than it must be."""
    if n <= tile:
        return [(0, n)]
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, {tile}), got {overlap}")
    count = math.ceil((n - overlap) / (tile - overlap))
    size = math.ceil((n + (count - 1) * overlap) / count / multiple) * multiple
    size = min(size, tile)
    starts = [round(i * (n - size) / (count - 1)) // multiple * multiple for i in range(count)]
    return [(s, s + size) for s in starts[:-1]] + [(n - size, n)]


def _ramp(n: int, start: int, stop: int, overlap: int) -> torch.Tensor:
    """1-D blending weight of one tile: rises linearly over `overlap` pixels at an inner edge."""
    w = torch.ones(stop - start)
    if overlap > 0:
        edge = torch.arange(1, overlap + 1, dtype=torch.float32) / (overlap + 1)
        if start > 0:
            w[:overlap] = torch.minimum(w[:overlap], edge)
        if stop < n:
            w[-overlap:] = torch.minimum(w[-overlap:], edge.flip(0))
    return w


def blend_tiles(
    fn: Callable[[slice, slice], torch.Tensor], size: tuple[int, int], tile: int | None, overlap: int, multiple: int = 1
) -> torch.Tensor:
    """fn(rows, cols) -> the (..., rows, cols) part of a (..., *size) map, blended over tiles.

    The caller cuts its own inputs for each region (an encoder cuts f times larger image tiles),
    so one blending serves the denoiser and both halves of the first stage. A map of at most
    tile x tile (or tile None) is one call on the whole; tiles are blended in float32 and the
    result has the dtype of fn's output.
    """
    h, w = size
    if tile is None or (h <= tile and w <= tile):
        return fn(slice(0, h), slice(0, w))
    overlap = min(overlap, tile // 2)  # a small tile (--tile 8) keeps half of itself apart
    out, total, dtype = None, None, None
    for r0, r1 in tile_spans(h, tile, overlap, multiple):
        for c0, c1 in tile_spans(w, tile, overlap, multiple):
            part = fn(slice(r0, r1), slice(c0, c1))
            dtype, part = part.dtype, part.float()
            if out is None:
                out = part.new_zeros(*part.shape[:-2], h, w)
                total = part.new_zeros(h, w)
            weight = _ramp(h, r0, r1, overlap).to(part.device)[:, None] * _ramp(w, c0, c1, overlap).to(part.device)
            out[..., r0:r1, c0:c1] += weight * part
            total[r0:r1, c0:c1] += weight
    return (out / total).to(dtype)


def tiled(model: Model, tile: int | None, overlap: int, multiple: int = 1) -> Model:
    """model(x, t, cond=...) over tiles of at most tile x tile latent pixels (None: never tiled).

    Every tensor keyword of the same spatial size as x (the condition) is cut with x.
    """
    if tile is None:
        return model

    def denoise(x: torch.Tensor, t: torch.Tensor, **extra: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h <= tile and w <= tile:
            return model(x, t, **extra)

        def part(rows: slice, cols: slice) -> torch.Tensor:
            cut = {k: v[..., rows, cols] if torch.is_tensor(v) and v.shape[-2:] == x.shape[-2:] else v
                   for k, v in extra.items()}
            return model(x[..., rows, cols], t, **cut)

        return blend_tiles(part, (h, w), tile, overlap, multiple)

    return denoise
