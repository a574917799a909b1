"""What an evaluation leaves behind: metrics.json, a per-image CSV, the printed table, the PSNR plot.

Means and standard deviations are over images (population std, ddof=0). Files are written
atomically, so an interrupted run never leaves a truncated metrics file that looks complete.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ldm.evaluation.protocol import scale_name
from ldm.evaluation.runner import ScaleResult
from ldm.util import atomic_path, write_text_atomic


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
