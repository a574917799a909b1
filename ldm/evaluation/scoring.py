"""Per-image metrics of an SR batch against its GT and LR, in the model's window and re-windowed.

Full range: PSNR, SSIM and MAE on [0, 1] of the model's HU window (ldm.metrics), MAE in HU
(x window width) for HU data, and LR consistency (the protocol's degradation, without noise,
applied to the SR and compared with the LR). Re-windowed (HU data only): the same HU values
through the lung and soft-tissue windows, where a few HU matter more than on a 4096 HU range.
"""

from __future__ import annotations

import torch

from ldm.data.intensity import LUNG_WINDOW, SOFT_TISSUE_WINDOW, Window, hu_window, unit_to_hu
from ldm.evaluation.protocol import Protocol
from ldm.metrics import lr_consistency, mae, psnr, ssim, unit_to_01

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
