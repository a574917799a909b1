"""The LIIF query (Chen et al., CVPR 2021): values of a feature map at any continuous coordinate.

For a query point q with cell size c over a feature map of size (h, w):
  for each of the 4 feature pixels around q (local ensemble):
      f   = that pixel's feature (with feat_unfold: its 3x3 neighbourhood, 9C values)
      rel = (q - centre of that pixel) * (h, w)      relative coordinate in feature pixels
      out = MLP([f, rel, c * (h, w)])                cell decoding
  value = sum of the 4 outputs, each weighted by the area of the rectangle between q and the
          diagonally opposite pixel (bilinear-like weights).

Speed: the MLP's first layer is linear in f, so W_f f + b is computed once per feature pixel as a
convolution on the (h, w) grid (1x1, or 3x3 for the unfolded 3x3 neighbourhood, which is the
same linear map) and gathered per query; only [rel, c] @ W_rc is added per query, in one addmm
that reads the gathered vectors once. A 512 -> 2048 decode then gathers 256-d vectors instead of
running a (C+4) x 256 matmul 16M times.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.implicit.coords import make_cell, make_coord

# values (B, n, out) at coords and cells (B, n, 2): what an LR-skip decoder adds its output to
Reading = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# LIIF's shift: a query exactly on a pixel border would otherwise pick the same neighbour twice
_EPS_SHIFT = 1e-6


def lr_reading(lr: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bicubic reading of the LR image at each query point: lr (B, C, h, w), coords (B, N, 2) -> (B, N, C).

    The LR skip: decoders add their output to this reading, so they predict a correction and the
    low frequencies come straight from the input. Read in float32 at least: bf16 would round it.
    """
    dtype = torch.promote_types(lr.dtype, torch.float32)
    grid = coords.to(dtype).flip(-1).unsqueeze(1)  # (B, 1, N, 2) as (x, y)
    values = F.grid_sample(lr.to(dtype), grid, mode="bicubic", padding_mode="border", align_corners=False)
    return values[:, :, 0, :].transpose(1, 2)  # (B, N, C)


def _output_layer(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The last linear layer in float32 (at least) whatever the autocast: (N, hidden) -> (N, out).

    Under bf16 autocast its output would be rounded to bf16, whose spacing is 2^-8 over [0.5, 1)
    model units, i.e. 8 HU steps: a 65-67 dB PSNR ceiling on the full HU range (measured), within
    reach of what a good x2 model scores (issue 8's reference LIIF: 57-60 dB). Its matmul is
    hidden x out, negligible; the price is a float32 copy of the last hidden activation.
    """
    dtype = torch.promote_types(x.dtype, torch.float32)  # float64 stays float64 (the gradient tests)
    with torch.autocast(x.device.type, enabled=False):
        bias = None if layer.bias is None else layer.bias.to(dtype)
        return F.linear(x.to(dtype), layer.weight.to(dtype), bias)


class LIIF(nn.Module):
    """Local implicit image function over a feature map; shared by the first stage and the LIIF baseline.

    in_dim: feature channels C; out_dim: values per query; hidden: MLP widths (ReLU between layers);
    feat_unfold: feed the 3x3 neighbourhood of the feature (LIIF), not the pixel alone (Kim & Kim);
    zero_init_output: start the last layer at zero, so that with an LR skip an untrained decoder
    returns exactly the bicubic reading of the LR.
    lr_cell: also feed the LR's pixel size in feature pixels (2 values). A decoder that corrects
    the LR's bicubic reading but does not see the LR (the first stage decodes from the HR latent)
    must know how blurred that reading is: without it, one latent asks for the correction of an
    x1 and of an x4 LR at once, and the decoder learns their average (it over-sharpens at x2,
    measured 36.1 -> 35.5 dB on the sample CT where bicubic gives 36.1).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 1,
        hidden: Sequence[int] = (256, 256, 256, 256),
        feat_unfold: bool = False,
        zero_init_output: bool = False,
        lr_cell: bool = False,
    ) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.lr_cell = lr_cell
        self.query_dim = 6 if lr_cell else 4  # rel (2) + cell (2) [+ lr cell (2)]
        self.feat_unfold = feat_unfold
        self.feat_dim = in_dim * 9 if feat_unfold else in_dim
        if not hidden:
            raise ValueError("LIIF hidden: at least one hidden layer (the first runs on the grid, the last in float32)")
        widths = [self.feat_dim + self.query_dim, *hidden, out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        if zero_init_output:
            nn.init.zeros_(self.layers[-1].weight)
            nn.init.zeros_(self.layers[-1].bias)

    def project(self, feat: torch.Tensor) -> torch.Tensor:
        """The feature part of the first layer and its bias, on the grid: (B, C, h, w) -> (B, hidden0, h, w)."""
        first = self.layers[0]
        w_feat = first.weight[:, : self.feat_dim]
        if self.feat_unfold:
            # F.unfold orders the 9C values channel-major, as a 3x3 kernel's (C, 3, 3) flattens
            return F.conv2d(feat, w_feat.reshape(-1, self.in_dim, 3, 3), first.bias, padding=1)
        return F.conv2d(feat, w_feat[:, :, None, None], first.bias)

    def _query(
        self, proj: torch.Tensor, coords: torch.Tensor, cells: torch.Tensor, lr_cells: torch.Tensor | None = None
    ) -> torch.Tensor:
        """proj (B, D, h, w) from `project`, coords and cells (B, n, 2) [, lr_cells (B, 1, 2)] -> (B, n, out)."""
        b, d, h, w = proj.shape
        n = coords.shape[1]
        size = coords.new_tensor([h, w])
        radius = 1.0 / size  # half a feature pixel in [-1, 1] units
        offsets = coords.new_tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])  # (4, 2)

        shifted = coords[None] + offsets[:, None, None] * radius + _EPS_SHIFT  # (4, B, n, 2)
        shifted = shifted.clamp(-1 + 1e-6, 1 - 1e-6)
        # nearest feature pixel (grid_sample 'nearest' with align_corners=False, off pixel borders)
        index = ((shifted + 1) * 0.5 * size).floor().long()
        index = torch.minimum(index.clamp_min(0), (size - 1).long())  # (4, B, n, 2)
        centre = -1 + (2 * index + 1) / size
        rel = (coords[None] - centre) * size  # (4, B, n, 2) in feature pixels

        flat = index[..., 0] * w + index[..., 1] + torch.arange(b, device=proj.device)[:, None] * (h * w)
        grid = proj.permute(0, 2, 3, 1).reshape(b * h * w, d)
        gathered = grid.index_select(0, flat.reshape(-1))  # (4*B*n, D)

        parts = [rel, (cells * size).expand(4, b, n, 2)]
        if lr_cells is not None:
            parts.append((lr_cells * size).expand(4, b, n, 2))
        rel_cell = torch.cat(parts, dim=-1)  # (4, B, n, query_dim)
        w_rel_cell = self.layers[0].weight[:, self.feat_dim :]  # (D, query_dim)
        x = torch.addmm(
            gathered, rel_cell.reshape(-1, self.query_dim).to(gathered.dtype), w_rel_cell.t().to(gathered.dtype)
        )
        for layer in self.layers[1:-1]:
            x = layer(F.relu_(x))  # (4*B*n, hidden...); in place: nothing saved the input
        x = _output_layer(self.layers[-1], F.relu_(x)).reshape(4, b, n, -1)

        area = (rel[..., 0] * rel[..., 1]).abs() + 1e-9  # (4, B, n)
        # each neighbour is weighted by the area of the diagonally opposite one: reverse the order
        weight = area.flip(0) / area.sum(0)
        # weight has the coordinates' dtype (float32 at least), so a bf16 MLP output is summed in float32
        return (x * weight[..., None]).sum(0)  # (B, n, out)

    def reader(
        self, feat: torch.Tensor, lr: torch.Tensor | None = None, reading: Reading | None = None
    ) -> Reading:
        """The decoded values as a function of (coords, cells) (B, n, 2) -> (B, n, out), with the
        first layer projected on the grid once for all the queries it is asked (arguments as in
        forward). A regressor's reading is called once per chunk of the decoder it serves, so
        projecting per call would redo a full-grid convolution per chunk (16 times for a 1024 px
        render)."""
        if self.lr_cell and lr is None:
            raise ValueError("LIIF with lr_cell: pass lr= (the decoder is told the LR's pixel size)")
        proj = self.project(feat)  # (B, hidden0, h, w)
        lr_cell = (2.0 / lr.shape[-2], 2.0 / lr.shape[-1]) if self.lr_cell else None  # the LR's pixel size

        def read(coords: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
            lr_cells = None if lr_cell is None else coords.new_tensor(lr_cell).expand(coords.shape[0], 1, 2)
            values = self._query(proj, coords, cells, lr_cells)
            if reading is not None:
                return values + reading(coords, cells)
            if lr is not None:
                return values + lr_reading(lr, coords)
            return values

        return read

    def forward(
        self,
        feat: torch.Tensor,
        coords: torch.Tensor,
        cells: torch.Tensor,
        lr: torch.Tensor | None = None,
        chunk_size: int | None = 65536,
        reading: Reading | None = None,
    ) -> torch.Tensor:
        """feat (B, C, h, w), coords (B, N, 2), cells (B, N, 2) [, lr (B, out, h', w')] -> (B, N, out).

        chunk_size bounds the queries (summed over the batch) per MLP pass, so that a 4096 x 4096
        output fits in memory; None runs all at once. With lr, the LR's bicubic reading is added
        (and with lr_cell, the LR's pixel size is an input, so lr is then required); `reading`
        (coords, cells) -> (B, n, out) replaces that bicubic reading (a trained regressor's SR).
        """
        read = self.reader(feat, lr, reading)
        b, n = coords.shape[:2]
        step = n if chunk_size is None else max(1, chunk_size // b)
        return torch.cat([read(coords[:, i : i + step], cells[:, i : i + step]) for i in range(0, n, step)], dim=1)

    def render(
        self,
        feat: torch.Tensor,
        out_size: tuple[int, int],
        lr: torch.Tensor | None = None,
        chunk_size: int | None = 65536,
        reading: Reading | None = None,
    ) -> torch.Tensor:
        """Values on a whole (H, W) pixel grid: feat (B, C, h, w) -> (B, out, H, W) (arguments as in forward)."""
        h, w = (int(v) for v in out_size)
        b = feat.shape[0]
        coords = make_coord((h, w), device=feat.device).expand(b, h * w, 2)
        cells = make_cell((h, w), device=feat.device).expand(b, h * w, 2)
        values = self(feat, coords, cells, lr=lr, chunk_size=chunk_size, reading=reading)  # (B, H*W, out)
        return values.transpose(1, 2).reshape(b, -1, h, w)
