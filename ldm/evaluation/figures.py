"""One comparison figure per slice and scale: every method side by side on the same slice.

Columns: LR (nearest), each method, GT. Rows: the whole slice in the soft-tissue window, a
zoomed crop in the lung window, and |SR - GT| in HU on one colour scale for all methods. Tiles
are titled with the method and its PSNR / SSIM over the evaluation's full window (the table's
numbers). The crop is the GT's square of a quarter of its side with the most gradient energy: a
fixed rule, the same for every slice and method, that lands on fine structure (vessels, bronchi,
bone edges) rather than on air.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ldm.data.degradation import upsample
from ldm.data.intensity import LUNG_WINDOW, SOFT_TISSUE_WINDOW, Window, unit_to_hu
from ldm.metrics import psnr, ssim, unit_to_01
from ldm.util import atomic_path

ERROR_MAX_HU = 200.0  # the error colour bar's top: |error| >= 200 HU is saturated


def detail_crop(gt_hu: np.ndarray, fraction: float = 0.25) -> tuple[slice, slice]:
    """The square window (side = fraction of the smaller side) with the largest gradient energy."""
    h, w = gt_hu.shape
    side = max(8, int(min(h, w) * fraction))
    gy, gx = np.gradient(gt_hu.astype(np.float64))
    energy = np.pad(np.cumsum(np.cumsum(gy**2 + gx**2, 0), 1), ((1, 0), (1, 0)))
    sums = energy[side:, side:] - energy[:-side, side:] - energy[side:, :-side] + energy[:-side, :-side]
    top, left = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return slice(top, top + side), slice(left, left + side)


def comparison_figure(
    path: str | os.PathLike[str],
    lr: torch.Tensor,
    gt: torch.Tensor,
    outputs: dict[str, torch.Tensor],
    hu_window: Window,
    title: str,
) -> None:
    """lr (1, h, w), gt and each output (1, H, W) in [-1, 1] of hu_window -> one PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a cluster node
    import matplotlib.pyplot as plt

    size = tuple(gt.shape[-2:])
    to_hu = lambda x: unit_to_hu(x.detach().float().cpu().numpy()[0], hu_window)  # noqa: E731
    gt_hu = to_hu(gt)
    tiles = {"LR (nearest)": to_hu(upsample(lr[None].float(), size, mode="nearest")[0])}
    labels = {"LR (nearest)": f"LR {lr.shape[-2]}x{lr.shape[-1]}"}
    for name, sr in outputs.items():
        tiles[name] = to_hu(sr)
        p = psnr(unit_to_01(sr[None]), unit_to_01(gt[None])).item()
        s = ssim(unit_to_01(sr[None]), unit_to_01(gt[None])).item()
        labels[name] = f"{name}\n{p:.2f} dB / {s:.4f}"
    tiles["GT"], labels["GT"] = gt_hu, f"GT {size[0]}x{size[1]}"
    crop = detail_crop(gt_hu)
    fig, axes = plt.subplots(3, len(tiles), figsize=(2.3 * len(tiles), 7.4), squeeze=False)
    for j, (name, hu) in enumerate(tiles.items()):
        axes[0, j].imshow(hu, cmap="gray", vmin=SOFT_TISSUE_WINDOW[0], vmax=SOFT_TISSUE_WINDOW[1])
        axes[0, j].set_title(labels[name], fontsize=8)
        axes[1, j].imshow(hu[crop], cmap="gray", vmin=LUNG_WINDOW[0], vmax=LUNG_WINDOW[1], interpolation="nearest")
        error = axes[2, j].imshow(np.abs(hu - gt_hu), cmap="magma", vmin=0, vmax=ERROR_MAX_HU)
        for row in axes[:, j]:
            row.set_xticks([])
            row.set_yticks([])
    axes[0, 0].set_ylabel(f"soft tissue [{SOFT_TISSUE_WINDOW[0]:g}, {SOFT_TISSUE_WINDOW[1]:g}] HU", fontsize=8)
    axes[1, 0].set_ylabel(f"crop, lung [{LUNG_WINDOW[0]:g}, {LUNG_WINDOW[1]:g}] HU", fontsize=8)
    axes[2, 0].set_ylabel("|SR - GT| (HU)", fontsize=8)
    axes[2, -1].set_visible(False)  # GT against itself
    fig.colorbar(error, ax=axes[2, :].tolist(), fraction=0.02, pad=0.01, label="|error| HU")
    for ax in axes[0, :]:
        ax.add_patch(plt.Rectangle((crop[1].start, crop[0].start), crop[1].stop - crop[1].start,
                                   crop[0].stop - crop[0].start, fill=False, edgecolor="yellow", linewidth=0.8))
    fig.suptitle(title + "  (PSNR / SSIM over the evaluation's full window)", fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def real_size_figure(path: str | os.PathLike[str], outputs: dict[str, np.ndarray], title: str) -> None:
    """Outputs of one real-size slice (HU arrays of one shape, no GT) -> one PNG: each output in
    the soft-tissue window, the same detail crop (chosen on the first output) in the lung window,
    and each output minus the first in HU (what a model adds to, say, bicubic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(outputs)
    base = outputs[names[0]]
    crop = detail_crop(base)
    fig, axes = plt.subplots(3, len(names), figsize=(3.2 * len(names), 9.6), squeeze=False)
    for j, name in enumerate(names):
        hu = outputs[name]
        axes[0, j].imshow(hu, cmap="gray", vmin=SOFT_TISSUE_WINDOW[0], vmax=SOFT_TISSUE_WINDOW[1])
        axes[0, j].set_title(f"{name}\n{hu.shape[0]}x{hu.shape[1]}", fontsize=8)
        axes[1, j].imshow(hu[crop], cmap="gray", vmin=LUNG_WINDOW[0], vmax=LUNG_WINDOW[1], interpolation="nearest")
        diff = axes[2, j].imshow(hu - base, cmap="coolwarm", vmin=-ERROR_MAX_HU / 2, vmax=ERROR_MAX_HU / 2)
        for row in axes[:, j]:
            row.set_xticks([])
            row.set_yticks([])
        axes[0, j].add_patch(plt.Rectangle((crop[1].start, crop[0].start), crop[1].stop - crop[1].start,
                                           crop[0].stop - crop[0].start, fill=False, edgecolor="yellow",
                                           linewidth=0.8))
    axes[0, 0].set_ylabel(f"soft tissue [{SOFT_TISSUE_WINDOW[0]:g}, {SOFT_TISSUE_WINDOW[1]:g}] HU", fontsize=8)
    axes[1, 0].set_ylabel(f"crop, lung [{LUNG_WINDOW[0]:g}, {LUNG_WINDOW[1]:g}] HU", fontsize=8)
    axes[2, 0].set_ylabel(f"minus {names[0]} (HU)", fontsize=8)
    axes[2, 0].set_visible(False)
    fig.colorbar(diff, ax=axes[2, :].tolist(), fraction=0.02, pad=0.01, label=f"HU minus {names[0]}")
    fig.suptitle(title, fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
