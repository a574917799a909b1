"""PNGs an evaluation can save per slice, beside its metrics (under <scale dir>/images/).

<name>_sr.png     the SR in the data's own convention: 16-bit HU+1024, or 8-bit for 8-bit data
<name>_std.png    with K > 1 samples, the per-pixel standard deviation of the samples:
                  16-bit with pixel value = std in HU (not HU+1024), or 8-bit levels for 8-bit data
<name>_compare.png  HU data: every method side by side, labelled with PSNR / SSIM, in the
                  soft-tissue and (zoomed) lung windows, with |error| in HU (ldm.evaluation.figures)
<name>_panel.png  8-bit data: LR (nearest) | bicubic | SR | GT | |SR - GT|, the error white at 10 %
                  of the range
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ldm.data.degradation import upsample
from ldm.data.intensity import Window, from_model_range, write_png8, write_png16_hu
from ldm.evaluation.figures import comparison_figure
from ldm.evaluation.slices import SliceRef
from ldm.metrics import unit_to_01
from ldm.util import atomic_path

ERROR_GAIN = 10.0  # |error| of 10 % of the window -> white


def write_sr(path: str | os.PathLike[str], sr: torch.Tensor, data_kind: str, hu_window: Window) -> None:
    """An (H, W) SR in [-1, 1] as the data's own PNG convention."""
    values = from_model_range(sr.numpy(), data_kind, hu_window)
    if data_kind == "hu":
        write_png16_hu(path, values)
    else:
        write_png8(path, values)


def write_std(path: str | os.PathLike[str], std: torch.Tensor, data_kind: str, hu_window: Window) -> None:
    """An (H, W) sample std in model units as std in HU (16-bit) or in 8-bit levels (8-bit)."""
    if data_kind != "hu":
        write_png8(path, std.numpy() * 127.5)
        return
    hu = std.numpy().astype(np.float64) * (hu_window[1] - hu_window[0]) / 2.0
    with atomic_path(path) as tmp:
        Image.fromarray(np.clip(np.rint(hu), 0, 65535).astype(np.uint16)).save(tmp, format="PNG")


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
) -> Callable[..., None]:
    """A runner sink saving `method`'s SR (and std map, when it sampled K > 1) for every slice.

    The std map is written whenever there is one (asking for K samples asks for the uncertainty);
    SR and panel PNGs only with save_images.
    """

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
            if save_images and data_kind == "hu":
                shown = {name: out[0][i] for name, out in outputs.items()}
                title = f"{ref.name}  x{scale:g}"
                comparison_figure(f"{stem}_compare.png", lr[i], gt[i], shown, hu_window, title)
            elif save_images and bicubic is not None:
                write_png8(f"{stem}_panel.png", panel(lr[i], bicubic[i], sr[i], gt[i]))

    return sink
