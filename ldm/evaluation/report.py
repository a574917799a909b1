"""What an evaluation leaves behind: metrics.json, a per-image CSV, the printed table, the PSNR plot,
and the PNGs it can save per slice.

Means and standard deviations are over images (population std, ddof=0). Files are written
atomically, so an interrupted run never leaves a truncated metrics file that looks complete.

Per slice, under <scale dir>/images/:
<name>_sr.png     the SR in the data's own convention: 16-bit HU+1024, or 8-bit for 8-bit data
<name>_std.png    with K > 1 samples, the per-pixel standard deviation of the samples:
                  16-bit with pixel value = std in HU (not HU+1024), or 8-bit levels for 8-bit data
<name>_compare.png  HU data: every method side by side, labelled with PSNR / SSIM, in the
                  soft-tissue and (zoomed) lung windows, with |error| in HU (comparison_figure)
<name>_panel.png  8-bit data: LR (nearest) | bicubic | SR | GT | |SR - GT|, the error white at 10 %
                  of the range
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ldm.data.degradation import upsample
from ldm.data.intensity import (
    LUNG_WINDOW,
    SOFT_TISSUE_WINDOW,
    Window,
    from_model_range,
    unit_to_hu,
    write_png8,
    write_sr,
    write_std,
)
from ldm.evaluation.protocol import SliceRef, scale_name
from ldm.evaluation.runner import ScaleResult
from ldm.metrics import psnr, ssim, unit_to_01
from ldm.util import atomic_path, write_text_atomic

ERROR_GAIN = 10.0  # 8-bit panels: |error| of 10 % of the window -> white
ERROR_MAX_HU = 200.0  # the comparison figures' error colour bar top: |error| >= 200 HU is saturated

# ---- the numbers: metrics.json, CSV, table, plot -----------------------------------------------


def _format(metric: str, value: float) -> str:
    """Table precision: SSIM and MAE on [0, 1] need more digits than dB and HU."""
    if metric.startswith("ssim"):
        return f"{value:.4f}"
    return f"{value:.5f}" if metric == "mae" else f"{value:.2f}"


def summarize(result: ScaleResult) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """(means, stds): method -> metric -> value over the images."""
    means, stds = {}, {}
    for method, table in result.metrics.items():
        means[method] = {k: float(np.mean(v)) for k, v in table.items()}
        stds[method] = {k: float(np.std(v)) for k, v in table.items()}
    return means, stds


def metric_columns(result: ScaleResult) -> list[str]:
    """Metrics in first-seen order over methods (a sampled method adds its std column)."""
    columns: list[str] = []
    for table in result.metrics.values():
        columns += [k for k in table if k not in columns]
    return columns


def scale_document(result: ScaleResult, meta: dict[str, Any]) -> dict[str, Any]:
    """metrics.json of one scale: `methods` (means), `methods_std`, the protocol and provenance in `meta`."""
    means, stds = summarize(result)
    return {
        "methods": means,
        "methods_std": stds,
        "n_images": len(result.images),
        "scale_ratio": result.scale,
        "out_size": list(result.out_size),
        "gt_upsampled": result.gt_upsampled,
        **meta,
    }


def summary_document(results: list[ScaleResult], meta: dict[str, Any]) -> dict[str, Any]:
    """The top-level summary of a several-scale run: every scale's means side by side."""
    scales = {}
    for result in results:
        means, stds = summarize(result)
        scales[scale_name(result.scale)] = {
            "scale_ratio": result.scale,
            "out_size": list(result.out_size),
            "n_images": len(result.images),
            "gt_upsampled": result.gt_upsampled,
            "methods": means,
            "methods_std": stds,
        }
    return {"scale_ratio": [r.scale for r in results], "scales": scales, **meta}


def write_json(path: str | os.PathLike[str], document: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(document, indent=2) + "\n")


def write_csv(path: str | os.PathLike[str], result: ScaleResult) -> None:
    """One row per image and method; a metric a method lacks (e.g. std_hu) is left empty."""
    columns = metric_columns(result)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "seed", "method", *columns])
        for i, (image, seed) in enumerate(zip(result.images, result.seeds, strict=True)):
            for method, table in result.metrics.items():
                values = [repr(table[c][i]) if c in table else "" for c in columns]
                writer.writerow([image, seed, method, *values])


def format_table(results: list[ScaleResult], kinds: dict[str, str], header: str) -> str:
    """Methods x metrics, one block per scale."""
    lines = [header]
    for result in results:
        means, _ = summarize(result)
        columns = metric_columns(result)
        h, w = result.out_size
        lines.append(f"\n{scale_name(result.scale)}  (GT {h}x{w}, {len(result.images)} images)")
        name_width = max(len("method"), *(len(m) for m in means))
        kind_width = max(len("kind"), *(len(kinds.get(m, "")) for m in means))
        widths = [max(len(c), 9) for c in columns]
        row = f"{'method':<{name_width}}  {'kind':<{kind_width}}"
        lines.append(row + "".join(f"  {c:>{wd}}" for c, wd in zip(columns, widths, strict=True)))
        for method, values in means.items():
            cells = [_format(c, values[c]) if c in values else "-" for c in columns]
            row = f"{method:<{name_width}}  {kinds.get(method, ''):<{kind_width}}"
            lines.append(row + "".join(f"  {v:>{wd}}" for v, wd in zip(cells, widths, strict=True)))
    return "\n".join(lines)


def plot_vs_scale(path: str | os.PathLike[str], results: list[ScaleResult], title: str) -> None:
    """PSNR (and windowed PSNR when measured) against scale, one line per method."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a cluster node
    import matplotlib.pyplot as plt

    first = results[0].metrics
    panels = [m for m in ("psnr", "psnr_lung", "psnr_soft") if all(m in t for t in first.values())]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8), squeeze=False)
    scales = [r.scale for r in results]
    for ax, metric in zip(axes[0], panels, strict=True):
        for method in first:
            ax.plot(scales, [summarize(r)[0][method][metric] for r in results], marker="o", label=method)
        ax.set_xlabel("scale ratio")
        ax.set_ylabel(f"{metric} (dB)")
        ax.set_xticks(scales, [f"{s:g}" for s in scales])
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


# ---- the images of each slice ------------------------------------------------------------------


def panel(lr: torch.Tensor, bicubic: torch.Tensor, sr: torch.Tensor, gt: torch.Tensor) -> np.ndarray:
    """(1, h, w) LR and (1, H, W) images in [-1, 1] -> an 8-bit-scale (H, 5W) float strip."""
    size = tuple(gt.shape[-2:])
    lr_up = upsample(lr[None], size, mode="nearest")[0]
    error = ((unit_to_01(sr) - unit_to_01(gt)).abs() * ERROR_GAIN).clamp(0, 1) * 2 - 1
    tiles = [from_model_range(t[0].numpy(), "u8") for t in (lr_up, bicubic, sr, gt, error)]
    return np.concatenate(tiles, axis=1)


def image_writer(
    folder: Callable[[float], Path],
    method: str,
    data_kind: str,
    hu_window: Window,
    save_images: bool,
    max_figures: int | None = None,
) -> Callable[..., None]:
    """A runner sink saving `method`'s SR (and std map, when it sampled K > 1) for every slice.

    The std map is written whenever there is one (asking for K samples asks for the uncertainty);
    SR and panel PNGs only with save_images, the panels (about a second of plotting each) for the
    first max_figures slices of each scale (None: every slice).
    """
    figures: dict[float, int] = {}

    def sink(
        scale: float,
        refs: Sequence[SliceRef],
        lr: torch.Tensor,
        gt: torch.Tensor,
        outputs: dict[str, tuple[torch.Tensor, torch.Tensor | None]],
    ) -> None:
        sr, std = outputs[method]
        bicubic = outputs["bicubic"][0] if "bicubic" in outputs else None
        for i, ref in enumerate(refs):
            stem = folder(scale) / "images" / Path(ref.name).with_suffix("")
            stem.parent.mkdir(parents=True, exist_ok=True)
            if std is not None:
                write_std(f"{stem}_std.png", std[i, 0], data_kind, hu_window)
            if save_images or std is not None:
                write_sr(f"{stem}_sr.png", sr[i, 0], data_kind, hu_window)
            if not save_images or (max_figures is not None and figures.get(scale, 0) >= max_figures):
                continue
            figures[scale] = figures.get(scale, 0) + 1
            if data_kind == "hu":
                shown = {name: out[0][i] for name, out in outputs.items()}
                title = f"{ref.name}  x{scale:g}"
                comparison_figure(f"{stem}_compare.png", lr[i], gt[i], shown, hu_window, title)
            elif bicubic is not None:
                write_png8(f"{stem}_panel.png", panel(lr[i], bicubic[i], sr[i], gt[i]))

    return sink


# ---- comparison figures: every method side by side on one slice --------------------------------
# Columns: LR (nearest), each method, GT. Rows: the whole slice in the soft-tissue window, a
# zoomed crop in the lung window, and |SR - GT| in HU on one colour scale for all methods. Tiles
# are titled with the method and its PSNR / SSIM over the evaluation's full window (the table's
# numbers). The crop is the GT's square of a quarter of its side with the most gradient energy: a
# fixed rule, the same for every slice and method, that lands on fine structure (vessels, bronchi,
# bone edges) rather than on air.


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
