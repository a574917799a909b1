"""ldm/evaluation/runner.py: the interpolation baselines and re-windowed scoring."""

import numpy as np
import pytest
import torch

from ldm.data.degradation import upsample
from ldm.data.intensity import FULL_WINDOW, LUNG_WINDOW, hu_window
from ldm.evaluation.runner import BicubicBaseline, LanczosBaseline, Method, draw, rewindow


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


class _Sampler:
    """A stand-in sampled pipeline: K samples of value 1, 2, ..., K, and a count of its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def super_resolve(self, lr, out_size, seeds, n_samples=1):
        self.calls += 1
        ks = torch.arange(1, n_samples + 1, dtype=torch.float32)
        return ks.view(1, -1, 1, 1).expand(lr.shape[0], -1, *out_size).clone()


def test_rows_of_one_pipeline_share_its_draw():
    sampler, other = _Sampler(), _Sampler()
    methods = [Method("ldm (1 sample)", sampler, "ldm", 1), Method("ldm (mean of 4)", sampler, "ldm", 4),
               Method("other", other, "ldm", 1)]
    drawn = draw(methods, torch.zeros(2, 1, 4, 4), (8, 8), [1, 2])
    assert sampler.calls == 1 and other.calls == 1  # K = 4 drawn once; the 1-sample row is its first
    assert drawn["ldm (1 sample)"].shape == (2, 1, 8, 8) and drawn["ldm (1 sample)"].unique().tolist() == [1.0]
    assert drawn["ldm (mean of 4)"].shape == (2, 4, 8, 8) and drawn["ldm (mean of 4)"].mean().item() == 2.5
