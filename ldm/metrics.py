"""PSNR, SSIM, MAE and LR consistency: the one implementation used by validation, eval_sr.py and bench/.

Inputs are (B, 1, H, W) or (B, H, W) tensors on [0, 1] of a stated intensity range (a HU
window); results are per image, shape (B,), float64 on the CPU. PSNR is capped at
PSNR_CAP dB so that identical images give a finite number that still averages.
SSIM is scikit-image's structural_similarity configured as Wang et al. (2004): Gaussian
window sigma 1.5, data_range 1, population (not sample) covariance.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

PSNR_CAP = 100.0
_MSE_FLOOR = 10.0 ** (-PSNR_CAP / 10.0)


def unit_to_01(x: torch.Tensor) -> torch.Tensor:
    """Model range [-1, 1] -> metric range [0, 1], clipped like a display would."""
    return ((x.float() + 1.0) * 0.5).clamp(0.0, 1.0)


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(torch.float64).reshape(x.shape[0], -1)


def _check(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"metrics: shape mismatch {tuple(pred.shape)} vs {tuple(target.shape)}")


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    _check(pred, target)
    return ((_flat(pred) - _flat(target)) ** 2).mean(dim=1).cpu()


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for data on [0, 1] (peak 1), capped at PSNR_CAP."""
    return -10.0 * torch.log10(mse(pred, target).clamp_min(_MSE_FLOOR))


def mae(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error on [0, 1]; multiply by the window width for HU."""
    _check(pred, target)
    return (_flat(pred) - _flat(target)).abs().mean(dim=1).cpu()


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM per image (Wang et al.: Gaussian sigma 1.5, data_range 1, population covariance)."""
    _check(pred, target)
    p = pred.detach().to(torch.float64).cpu().reshape(pred.shape[0], *pred.shape[-2:]).numpy()
    t = target.detach().to(torch.float64).cpu().reshape(target.shape[0], *target.shape[-2:]).numpy()
    values = [
        structural_similarity(
            a, b, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
        for a, b in zip(p, t, strict=True)
    ]
    return torch.tensor(np.asarray(values, dtype=np.float64))


def lr_consistency(lr: torch.Tensor, sr_degraded: torch.Tensor) -> torch.Tensor:
    """PSNR between the LR input and the same degradation applied to the SR output.

    An SR that contradicts its own input (invented or removed structure) scores low.
    """
    return psnr(sr_degraded, lr)


def validation_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """val/loss (L1 in model range), val/psnr and val/ssim (full range) of a batch in [-1, 1]."""
    pred01, target01 = unit_to_01(pred), unit_to_01(target)
    return {
        "val/loss": F.l1_loss(pred.float(), target.float()).item(),
        "val/psnr": psnr(pred01, target01).mean().item(),
        "val/ssim": ssim(pred01, target01).mean().item(),
    }
