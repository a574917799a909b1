"""The evaluation loop: every method on the same GT/LR pairs, every slice, every scale, scored per image.

Methods: the super-resolvers an evaluation compares, each run through ldm.pipeline behind one call
(LR batch -> (B, K, H, W) on the CPU). Baselines are super-resolvers too (bicubic through the same
float resampling the data pipeline uses, Lanczos through PIL on float32 images), so every method
sees the same LR tensors.

Scores: PSNR, SSIM and MAE on [0, 1] of the model's HU window (ldm.metrics), MAE in HU (x window
width) for HU data, and LR consistency (the protocol's degradation, without noise, applied to the
SR and compared with the LR). Re-windowed (HU data only): the same HU values through the lung and
soft-tissue windows, where a few HU matter more than on a 4096 HU range.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ldm.data.degradation import upsample
from ldm.data.intensity import LUNG_WINDOW, SOFT_TISSUE_WINDOW, Window, hu_window, unit_to_hu
from ldm.evaluation.protocol import Protocol, SliceRef, SliceSet, load
from ldm.metrics import lr_consistency, mae, psnr, ssim, unit_to_01
from ldm.models.base import check_out_size
from ldm.pipeline import Pipeline, image_seed

# ---- the methods -------------------------------------------------------------------------------


class BicubicBaseline:
    """Bicubic interpolation of the LR (PyTorch, float, align_corners=False)."""

    kind = "bicubic"

    def super_resolve(self, lr: torch.Tensor, out_size: tuple[int, int], **sampling: object) -> torch.Tensor:
        return upsample(lr, check_out_size(lr, out_size), mode="bicubic")


class LanczosBaseline:
    """Lanczos-3 interpolation of the LR (PIL on 32-bit float images: no 8-bit rounding)."""

    kind = "lanczos"

    def super_resolve(self, lr: torch.Tensor, out_size: tuple[int, int], **sampling: object) -> torch.Tensor:
        h, w = check_out_size(lr, out_size)
        images = lr.detach().float().cpu().numpy()[:, 0]
        # a float32 array becomes a mode 'F' image: PIL resamples it in float, never through 8 bits
        floats = [Image.fromarray(np.ascontiguousarray(x, dtype=np.float32)) for x in images]
        out = [np.asarray(im.resize((w, h), Image.Resampling.LANCZOS)) for im in floats]
        return torch.from_numpy(np.stack(out))[:, None].to(lr.device)


@dataclass
class Method:
    """One column of the comparison: a pipeline (ldm.pipeline) and how many samples it draws per image.

    n_samples: K samples of a sampling model (an LDM), scored by their mean; deterministic ones give one.
    info: provenance written to metrics.json (kind, log dir, checkpoint sha256 ...).
    """

    name: str
    pipeline: Pipeline
    kind: str
    n_samples: int = 1
    info: dict[str, Any] = field(default_factory=dict)

    def __call__(self, lr: torch.Tensor, out_size: tuple[int, int], seeds: Sequence[int]) -> torch.Tensor:
        """LR (B, 1, h, w) -> SR samples (B, K, H, W), float32 on the CPU; a sampling model draws
        each image's noise from its seed, so a result does not depend on the batch."""
        sr = self.pipeline.super_resolve(lr, out_size, seeds, self.n_samples)
        expected = (lr.shape[0], *out_size)
        if sr.ndim != 4 or (sr.shape[0], *sr.shape[-2:]) != expected:
            raise RuntimeError(
                f"{self.name}: super_resolve returned shape {tuple(sr.shape)}, expected (B, K, H, W) = "
                f"({expected[0]}, K, {expected[1]}, {expected[2]})"
            )
        return sr


def baselines() -> list[Method]:
    return [Method("bicubic", Pipeline(BicubicBaseline()), "bicubic"),
            Method("lanczos", Pipeline(LanczosBaseline()), "lanczos")]


# ---- scoring one batch -------------------------------------------------------------------------

WINDOWS = {"lung": LUNG_WINDOW, "soft": SOFT_TISSUE_WINDOW}


def metric_names(data_kind: str, windows: bool) -> list[str]:
    """Column order of tables and CSVs."""
    names = ["psnr", "ssim", "mae"] + (["mae_hu"] if data_kind == "hu" else []) + ["lr_psnr"]
    if windows and data_kind == "hu":
        names += [f"{m}_{w}" for w in WINDOWS for m in ("psnr", "ssim")]
    return names


def rewindow(x: torch.Tensor, model_window: Window, window: Window) -> torch.Tensor:
    """[-1, 1] of the model's window -> [0, 1] of another HU window."""
    hu = unit_to_hu(x.numpy(), model_window)
    return unit_to_01(torch.from_numpy(hu_window(hu, window)))


def score(
    sr: torch.Tensor, gt: torch.Tensor, lr: torch.Tensor, protocol: Protocol, data_kind: str, windows: bool = True
) -> dict[str, torch.Tensor]:
    """SR, GT (B, 1, H, W) and LR (B, 1, h, w) in [-1, 1] on the CPU -> {metric: (B,) float64}."""
    sr01, gt01 = unit_to_01(sr), unit_to_01(gt)
    out = {"psnr": psnr(sr01, gt01), "ssim": ssim(sr01, gt01), "mae": mae(sr01, gt01)}
    if data_kind == "hu":
        out["mae_hu"] = out["mae"] * protocol.window_width
    out["lr_psnr"] = lr_consistency(unit_to_01(lr), unit_to_01(protocol.lr_of(sr)))
    if windows and data_kind == "hu":
        for label, window in WINDOWS.items():
            sr_w = rewindow(sr, protocol.hu_window, window)
            gt_w = rewindow(gt, protocol.hu_window, window)
            out[f"psnr_{label}"] = psnr(sr_w, gt_w)
            out[f"ssim_{label}"] = ssim(sr_w, gt_w)
    return out


# ---- the loop ----------------------------------------------------------------------------------

# (scale, slices, LR (B,1,h,w), GT (B,1,H,W), {method: (SR mean (B,1,H,W), per-pixel std (B,1,H,W) or None)})
BatchSink = Callable[
    [float, Sequence[SliceRef], torch.Tensor, torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor | None]]], None
]


@dataclass
class ScaleResult:
    scale: float
    out_size: tuple[int, int]
    images: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    # method -> metric -> one value per image, in `images` order
    metrics: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    gt_upsampled: int = 0  # slices smaller than the GT size: their GT is an interpolation, not real detail


def std_unit(data_kind: str, protocol: Protocol) -> tuple[str, float]:
    """Name and scale of the sample spread: HU for HU data, 8-bit levels for 8-bit images."""
    if data_kind == "hu":
        return "std_hu", protocol.window_width / 2.0
    return "std_u8", 127.5


def draw(methods: Sequence[Method], lr: torch.Tensor, out_size: tuple[int, int],
         seeds: Sequence[int]) -> dict[str, torch.Tensor]:
    """Each method's samples (B, K, H, W) by name. Rows that share a pipeline share its draws: the
    pipeline samples once, as many as its largest K, and a row of k samples scores the first k
    (`(1 sample)` is the first of the `(mean of K)` row's samples: independent draws, one pass fewer)."""
    drawn: dict[int, torch.Tensor] = {}
    for method in sorted(methods, key=lambda m: -m.n_samples):
        key = id(method.pipeline)
        if key not in drawn or drawn[key].shape[1] < method.n_samples:
            drawn[key] = method(lr, out_size, seeds)
    return {m.name: drawn[id(m.pipeline)][:, : m.n_samples] for m in methods}


def evaluate(
    slice_set: SliceSet,
    methods: Sequence[Method],
    protocol: Protocol,
    batch_size: int = 1,
    windows: bool = True,
    on_batch: BatchSink | None = None,
    progress: bool = True,
) -> list[ScaleResult]:
    """Score every method on every slice at every scale; K > 1 samples are scored by their mean
    (rows that share a pipeline score one draw: see draw)."""
    if batch_size <= 0:
        raise ValueError(f"--batch_size: must be positive, got {batch_size}")
    results = [ScaleResult(s, protocol.out_size(s)) for s in protocol.scale_ratios]
    std_name, std_scale = std_unit(slice_set.data_kind, protocol)
    refs = slice_set.slices
    with tqdm(total=len(refs), unit="slice", desc="eval", disable=not progress) as bar:
        for start in range(0, len(refs), batch_size):
            batch = refs[start : start + batch_size]
            seeds = [image_seed(protocol.seed, ref.name) for ref in batch]
            slices = [load(ref, protocol.hu_window) for ref in batch]
            for result in results:
                pairs = [protocol.pair(x, result.scale, seed) for x, seed in zip(slices, seeds, strict=True)]
                gt = torch.cat([p[0] for p in pairs])
                lr = torch.cat([p[1] for p in pairs])
                result.images += [ref.name for ref in batch]
                result.seeds += seeds
                result.gt_upsampled += sum(min(ref.shape) < min(result.out_size) for ref in batch)
                outputs = {}
                drawn = draw(methods, lr, result.out_size, seeds)
                for method in methods:
                    samples = drawn[method.name]  # (B, K, H, W)
                    sr = samples.mean(dim=1, keepdim=True)
                    std = samples.std(dim=1, correction=0, keepdim=True) if samples.shape[1] > 1 else None
                    scores = score(sr, gt, lr, protocol, slice_set.data_kind, windows)
                    if std is not None:
                        scores[std_name] = std.mean(dim=(1, 2, 3)).double() * std_scale
                    table = result.metrics.setdefault(method.name, {})
                    for key, values in scores.items():
                        table.setdefault(key, []).extend(float(v) for v in values)
                    outputs[method.name] = (sr, std)
                if on_batch is not None:
                    on_batch(result.scale, batch, lr, gt, outputs)
            bar.update(len(batch))
    return results
