"""Float degradation at any scale: shapes, determinism, and no 8-bit rounding on the way."""

import math

import numpy as np
import pytest
import torch

from ldm.data.degradation import (
    DEGRADATIONS,
    area_resample,
    back_project,
    degrade,
    gaussian_blur,
    resize,
    upsample,
)
from ldm.data.intensity import FULL_WINDOW, read_slice, to_model_range
from ldm.metrics import psnr, unit_to_01


def ramp(h: int = 64, w: int = 64) -> torch.Tensor:
    """A smooth diagonal ramp in [-1, 1], (1, 1, h, w)."""
    y = torch.linspace(-1, 1, h)[:, None]
    x = torch.linspace(-1, 1, w)[None, :]
    return ((0.6 * y + 0.4 * x)[None, None]).float()


@pytest.mark.parametrize("kind", DEGRADATIONS)
@pytest.mark.parametrize("lr_size", [(18, 23), (round(64 / 3.7), round(64 / 3.7)), (63, 64), (1, 1)])
def test_non_integer_scales_give_the_asked_size(kind, lr_size):
    hr = ramp().repeat(2, 1, 1, 1)
    lr = degrade(hr, lr_size, kind)
    assert lr.shape == (2, 1, *lr_size)
    assert torch.isfinite(lr).all()


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_constant_image_stays_constant(kind):
    hr = torch.full((1, 1, 40, 52), 0.3)
    torch.testing.assert_close(degrade(hr, (11, 17), kind), torch.full((1, 1, 11, 17), 0.3))


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_noise_is_deterministic_for_a_seed(kind):
    hr = ramp()
    a = degrade(hr, 17, kind, noise_hu=20.0, generator=torch.Generator().manual_seed(5))
    b = degrade(hr, 17, kind, noise_hu=20.0, generator=torch.Generator().manual_seed(5))
    c = degrade(hr, 17, kind, noise_hu=20.0, generator=torch.Generator().manual_seed(6))
    clean = degrade(hr, 17, kind)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    # 20 HU over the 4095 HU window is a standard deviation of 2 * 20 / 4095 in [-1, 1]
    assert abs(float((a - clean).std()) - 40 / 4095) < 0.3 * 40 / 4095


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_no_8bit_quantisation(kind):
    lr = degrade(ramp(), (18, 23), kind)
    on_255_grid = (lr + 1) * 127.5
    off_grid = (on_255_grid - on_255_grid.round()).abs() > 1e-3
    assert off_grid.float().mean() > 0.9
    # a smooth ramp stays smooth: no staircase of repeated values
    assert torch.unique(lr).numel() > 0.9 * lr.numel()


def test_ct_blur_widens_with_the_scale():
    impulse = torch.zeros(1, 1, 65, 65)
    impulse[..., 32, 32] = 1.0
    narrow = gaussian_blur(impulse, (0.5, 0.5))
    wide = gaussian_blur(impulse, (2.0, 2.0))
    assert float(narrow.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(wide.max()) < float(narrow.max())


def ct_line_responses(scale: float, lr_width: int = 24) -> tuple[float, torch.Tensor, torch.Tensor]:
    """The ct LR's response to HR line impulses (one HR column lit, then the next, over 8 LR pixels
    of phases): (s, each response's centroid, its second moment), in LR pixels about the impulse."""
    hr_width = round(scale * lr_width)
    s = hr_width / lr_width
    columns = [k for k in range(hr_width) if 8 * s <= k + 0.5 < 16 * s]  # away from the reflected edges
    hr = torch.zeros(len(columns), 1, 8, hr_width, dtype=torch.float64)
    for i, k in enumerate(columns):
        hr[i, 0, :, k] = 1.0
    response = degrade(hr, (2, lr_width), "ct")[:, 0, 0]  # (impulses, lr_width)
    offset = (torch.arange(lr_width) + 0.5)[None] - ((torch.tensor(columns) + 0.5) / s)[:, None]
    mass = response.sum(dim=1)
    return s, (response * offset).sum(dim=1) / mass, (response * offset**2).sum(dim=1) / mass


@pytest.mark.parametrize("scale", [2, 2.5, 3.7, 4, 6.3])
def test_ct_psf_is_the_documented_gaussian_times_footprint_and_centred(scale):
    """sigma_eff^2 = sigma_g^2 + s^2 / 12 HR px^2 (Gaussian * the LR pixel's footprint), up to the
    1/12 HR px^2 the pixel grid moves it by; every impulse's response centred on it, at fractional
    scales too (whole-pixel pooling shifts it by up to 0.25 HR px and widens it by ~0.3 HR px^2)."""
    s, centroid, second_moment = ct_line_responses(scale)
    sigma_g2 = 0.25 * (s**2 - 1)
    measured = second_moment.mean().item() * s**2  # phase-averaged, in HR px^2
    assert abs(measured - (sigma_g2 + s**2 / 12)) <= 1 / 12 + 0.05, (measured, sigma_g2 + s**2 / 12)
    assert centroid.abs().max().item() * s < 0.08  # HR px
    # in LR pixels: 0.50 (x2) to 0.57; the old documented 0.5 sqrt(s^2 - 1) HR px alone is 0.43-0.49
    assert math.sqrt(1 / 3 - 1 / (4 * s**2)) == pytest.approx(math.sqrt(measured) / s, abs=0.025)


def test_ct_area_resampling_weighs_hr_pixels_by_the_fraction_of_them_inside_the_footprint():
    hr = torch.arange(5.0, dtype=torch.float64).view(1, 1, 1, 5).expand(1, 1, 2, 5)
    # 5 HR pixels onto 2 LR pixels: footprints [0, 2.5) and [2.5, 5), pixel 2 split half and half
    torch.testing.assert_close(area_resample(hr, (1, 2))[0, 0, 0],
                               torch.tensor([(0 + 1 + 0.5 * 2) / 2.5, (0.5 * 2 + 3 + 4) / 2.5], dtype=torch.float64))
    x = torch.rand(2, 3, 37, 29, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(area_resample(x, (9, 29)).transpose(-1, -2), area_resample(x.transpose(-1, -2), (29, 9)))
    torch.testing.assert_close(area_resample(x, (37, 29)), x)


def test_errors_name_the_argument():
    hr = ramp()
    with pytest.raises(ValueError, match="lr_size.*larger"):
        degrade(hr, (65, 10))
    with pytest.raises(ValueError, match="lr_size.*positive"):
        degrade(hr, (0, 10))
    with pytest.raises(ValueError, match="degradation.*'box'"):
        degrade(hr, 16, "box")
    with pytest.raises(ValueError, match="upsample mode"):
        upsample(hr, 128, "lanczos")


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
def test_upsample_and_resize_sizes(mode):
    lr = ramp(17, 23)
    assert upsample(lr, (64, 87), mode).shape == (1, 1, 64, 87)
    assert resize(lr, 9).shape == (1, 1, 9, 9)
    assert resize(lr, (17, 23)) is lr


def test_bicubic_degradation_is_antialiased():
    # a pixel-level checkerboard is beyond the LR Nyquist limit: antialiasing averages it away
    checker = torch.from_numpy(np.indices((64, 64)).sum(0) % 2 * 2.0 - 1.0).float()[None, None]
    assert float(degrade(checker, 16, "bicubic").abs().max()) < 0.05
    assert float(degrade(checker, 16, "ct").abs().max()) < 0.05


def fixture_slices(fixtures_dir, n=3):
    paths = sorted((fixtures_dir / "CT" / "chest").glob("*.png"))[:n]
    return torch.stack([torch.from_numpy(to_model_range(*read_slice(p), FULL_WINDOW)) for p in paths])[:, None]


def db(a, b):
    return psnr(unit_to_01(a), unit_to_01(b)).mean().item()


@pytest.mark.parametrize("kind", DEGRADATIONS)
@pytest.mark.parametrize("scale", [2, 3.5, 4])
def test_back_projection_makes_the_sr_consistent_with_its_lr_and_no_worse(fixtures_dir, kind, scale):
    """Real CT at 64 px: a bicubic SR back-projected agrees with its LR and moves towards the HR."""
    hr = fixture_slices(fixtures_dir)
    lr_size = round(64 / scale)
    lr = degrade(hr, lr_size, kind)
    sr = upsample(lr, (64, 64), "bicubic")
    projected = back_project(sr, lr, kind, iterations=20)
    before, after = db(degrade(sr, lr_size, kind), lr), db(degrade(projected, lr_size, kind), lr)
    assert after >= 60 and after > before + 10
    assert db(projected, hr) >= db(sr, hr)  # the low frequencies now match the truth's


def test_back_projection_keeps_what_the_degradation_cannot_see():
    """Detail in the null space of the degradation (above the LR's Nyquist) is left as it is."""
    lr = upsample(torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(2)) * 1.6 - 0.8, (8, 8))
    sr = back_project(upsample(lr, (32, 32)), lr, "bicubic", iterations=30)
    checker = 0.05 * (torch.arange(32)[:, None] + torch.arange(32)[None]).remainder(2).float() * 2 - 0.05
    with_detail = back_project(sr + checker, lr, "bicubic", iterations=30)
    assert torch.allclose(degrade(with_detail, 8), lr, atol=1e-3)
    assert (with_detail - sr - checker).abs().mean() < 0.1 * checker.abs().mean()


def test_back_projection_zero_steps_and_bad_arguments():
    sr, lr = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 4, 4)
    assert torch.equal(back_project(sr, lr, iterations=0), sr)
    with pytest.raises(ValueError, match="iterations"):
        back_project(sr, lr, iterations=-1)
    with pytest.raises(ValueError, match="differ in batch or channels"):
        back_project(sr, lr[:, :1])


def test_back_projection_stays_in_the_window():
    """Ringing at a sharp air edge would fall below -1024 HU; the clamp keeps it in [-1, 1]."""
    hr = torch.full((1, 1, 32, 32), -1.0)
    hr[..., 8:24, 8:24] = 0.5
    lr = degrade(hr, 8)
    sr = back_project(upsample(lr, (32, 32)), lr, iterations=30)
    assert sr.min() >= -1 and sr.max() <= 1
    assert back_project(upsample(lr, (32, 32)), lr, iterations=30, bounds=None).min() < -1


def test_back_projection_runs_in_float32_under_bf16_autocast():
    lr = torch.rand(1, 1, 8, 8) * 2 - 1
    sr = upsample(lr, (24, 24))
    ref = back_project(sr, lr, "ct", iterations=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = back_project(sr, lr, "ct", iterations=5)
    assert out.dtype == torch.float32 and torch.equal(out, ref)
