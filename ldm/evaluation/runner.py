"""The evaluation loop: slices in batches, every scale, every method, on the same GT/LR pairs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from ldm.evaluation.methods import Method
from ldm.evaluation.protocol import Protocol, image_seed
from ldm.evaluation.scoring import score
from ldm.evaluation.slices import SliceRef, SliceSet, load

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


def evaluate(
    slice_set: SliceSet,
    methods: Sequence[Method],
    protocol: Protocol,
    batch_size: int = 1,
    windows: bool = True,
    on_batch: BatchSink | None = None,
    progress: bool = True,
) -> list[ScaleResult]:
    """Score every method on every slice at every scale; K > 1 samples are scored by their mean."""
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
                for method in methods:
                    samples = method(lr, result.out_size, seeds)  # (B, K, H, W)
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
