"""ldm/evaluation/runner.py: the interpolation baselines and re-windowed scoring."""

import numpy as np
import pytest
import torch

from ldm.data.degradation import upsample
from ldm.data.intensity import FULL_WINDOW, LUNG_WINDOW, hu_window
from ldm.evaluation.runner import BicubicBaseline, LanczosBaseline, rewindow


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
