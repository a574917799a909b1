"""ldm/evaluation/runner.py: the baselines, re-windowed scoring and runs trained with another window."""

import numpy as np
import pytest
import torch

from ldm.data.degradation import upsample
from ldm.data.intensity import FULL_WINDOW, LUNG_WINDOW, hu_window
from ldm.evaluation.runner import BicubicBaseline, LanczosBaseline, Rewindowed, rewindow


def test_lanczos_works_in_float_not_8_bit():
    lr = torch.full((2, 1, 8, 8), 0.123456)
    sr = LanczosBaseline().super_resolve(lr, (19, 21))
    assert sr.shape == (2, 1, 19, 21) and sr.dtype == torch.float32
    assert torch.allclose(sr, lr[:, :, :1, :1].expand_as(sr), atol=1e-6)  # 8-bit would round to k/255
    smooth = upsample(torch.rand(1, 1, 4, 4), 16, mode="bilinear")
    assert (LanczosBaseline().super_resolve(smooth, (32, 32)) - BicubicBaseline().super_resolve(smooth, (32, 32))
            ).abs().max() < 0.05


def test_rewindow_by_hand():
    x = torch.from_numpy(hu_window(np.array([-300.0, -1000.0, 400.0, 1000.0]), FULL_WINDOW))
    assert rewindow(x, FULL_WINDOW, LUNG_WINDOW).tolist() == pytest.approx([0.5, 0.0, 1.0, 1.0], abs=1e-6)


def test_a_run_with_another_window_sees_its_own_range():
    seen = {}

    class Identity:
        kind = "liif"

        def super_resolve(self, lr, out_size, **sampling):
            seen["lr"] = lr
            return upsample(lr, out_size)

    lr = torch.from_numpy(hu_window(np.full((1, 1, 4, 4), -300.0), FULL_WINDOW))
    sr = Rewindowed(Identity(), LUNG_WINDOW, FULL_WINDOW).super_resolve(lr, (8, 8))
    assert torch.allclose(seen["lr"], torch.zeros_like(seen["lr"]), atol=1e-6)  # -300 HU is the lung window's middle
    assert torch.allclose(sr, lr[:, :, :1, :1].expand_as(sr), atol=1e-6)
