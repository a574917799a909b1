"""ldm.metrics against values worked out by hand on tiny arrays."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from ldm.metrics import PSNR_CAP, lr_consistency, mae, mse, psnr, ssim, unit_to_01


def img(values):
    return torch.tensor(values, dtype=torch.float32)[None, None]


def test_psnr_by_hand():
    # one of four pixels off by 0.5: MSE = 0.25 / 4 = 0.0625, PSNR = -10 log10(0.0625) = 12.0412 dB
    pred, target = img([[0.0, 0.0], [0.0, 0.0]]), img([[0.5, 0.0], [0.0, 0.0]])
    assert mse(pred, target).item() == pytest.approx(0.0625)
    assert psnr(pred, target).item() == pytest.approx(12.041199826559248, abs=1e-9)


def test_psnr_of_a_20_hu_rmse_over_the_full_range():
    # RESEARCH.md: an RMSE of 20 HU is 46.2 dB over the 4095 HU full window (peak = window width)
    target = torch.full((1, 1, 8, 8), 0.5)
    pred = target + 20.0 / 4095.0
    assert psnr(pred, target).item() == pytest.approx(20 * math.log10(4095 / 20), abs=1e-4)
    assert psnr(pred, target).item() == pytest.approx(46.2, abs=0.05)


def test_identical_images_are_capped_not_infinite():
    x = torch.rand(3, 1, 16, 16)
    assert PSNR_CAP == 100.0
    assert torch.equal(psnr(x, x), torch.full((3,), 100.0, dtype=torch.float64))
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64))
    assert torch.equal(mae(x, x), torch.zeros(3, dtype=torch.float64))


def test_mae_by_hand():
    pred, target = img([[0.0, 0.5], [0.25, 1.0]]), img([[0.0, 0.0], [0.0, 0.0]])
    assert mae(pred, target).item() == pytest.approx((0.5 + 0.25 + 1.0) / 4)


def test_ssim_of_two_constant_images_by_hand():
    # zero variance everywhere: SSIM = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1), C1 = (0.01 * 1)^2
    a, b = torch.full((1, 1, 16, 16), 0.5), torch.full((1, 1, 16, 16), 0.25)
    c1 = 0.01**2
    assert ssim(a, b).item() == pytest.approx((2 * 0.5 * 0.25 + c1) / (0.5**2 + 0.25**2 + c1), abs=1e-9)


def wang_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM as Wang et al. (2004) define it, written out: local statistics under an 11-tap Gaussian
    window (sigma 1.5), population covariance, K1 = 0.01, K2 = 0.03, peak 1, averaged over the
    pixels whose window lies inside the image."""
    def local(v):
        return ndimage.gaussian_filter(v, sigma=1.5, truncate=3.5, mode="reflect")

    c1, c2 = 0.01**2, 0.03**2
    mx, my = local(x), local(y)
    vx, vy, cxy = local(x * x) - mx**2, local(y * y) - my**2, local(x * y) - mx * my
    ssim_map = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(ssim_map[5:-5, 5:-5].mean())


def test_ssim_is_wang_et_al_on_textured_images():
    """Non-constant images, where the window, its width and the covariance estimator all matter."""
    rng = np.random.default_rng(0)
    texture = ndimage.gaussian_filter(rng.random((48, 40)), 2.0)
    x = (texture - texture.min()) / (texture.max() - texture.min())
    pairs = [(x, np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1)), (x, x**2), (x, 1 - x), (rng.random(x.shape), x)]
    pred = torch.tensor(np.stack([p for p, _ in pairs]))[:, None]
    target = torch.tensor(np.stack([t for _, t in pairs]))[:, None]
    assert ssim(pred, target).tolist() == pytest.approx([wang_ssim(p, t) for p, t in pairs], abs=1e-9)


def test_ssim_of_known_pairs():
    # a checkerboard 0.5 +- d against its inverse: local means 0.5 and 0.5, variances d^2, covariance
    # -d^2 (the Gaussian window weighs both colours equally to 1e-9), so SSIM = (C2 - 2 d^2) / (C2 + 2 d^2)
    d, c2 = 0.25, 0.03**2
    checker = torch.from_numpy(np.indices((32, 32)).sum(0) % 2 * 2.0 - 1.0)[None, None]
    assert ssim(0.5 + d * checker, 0.5 - d * checker).item() == pytest.approx((c2 - 2 * d**2) / (c2 + 2 * d**2),
                                                                               abs=1e-6)
    # the same checkerboard with noise of std n: SSIM ~ (2 d^2 + C2) / (2 d^2 + n^2 + C2) (local estimates)
    n = 0.1
    noisy = 0.5 + d * checker + n * torch.randn(checker.shape, generator=torch.Generator().manual_seed(0),
                                                dtype=torch.float64)
    assert ssim(0.5 + d * checker, noisy).item() == pytest.approx((2 * d**2 + c2) / (2 * d**2 + n**2 + c2), abs=0.02)


def test_metrics_are_per_image_float64():
    pred = torch.zeros(2, 1, 16, 16)
    target = torch.stack([torch.zeros(1, 16, 16), torch.full((1, 16, 16), 0.1)])
    values = psnr(pred, target)
    assert values.shape == (2,) and values.dtype == torch.float64
    assert values[0].item() == 100.0 and values[1].item() == pytest.approx(20.0)
    assert mae(pred, target).tolist() == pytest.approx([0.0, 0.1])
    assert psnr(pred[:, 0], target[:, 0]).tolist() == values.tolist()  # (B, H, W) accepted too


def test_unit_to_01_maps_and_clips():
    x = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0])
    assert unit_to_01(x).tolist() == [0.0, 0.0, 0.5, 0.75, 1.0, 1.0]


def test_lr_consistency_is_psnr_of_the_degraded_sr_against_the_lr():
    lr, degraded = torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.01)
    assert lr_consistency(lr, degraded).item() == pytest.approx(40.0)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape mismatch"):
        psnr(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
