"""BackProjected: any super-resolver's samples made consistent with their LR."""

import pytest
import torch

from ldm.data.degradation import degrade, upsample
from ldm.models.consistency import BackProjected


class Blurry:
    """A stand-in model: K noisy bicubic samples (B, K, H, W), which contradict the LR a little."""

    kind = "ldm"

    def super_resolve(self, lr, out_size, n_samples=1, **sampling):
        g = torch.Generator().manual_seed(0)
        up = upsample(lr, out_size, "bicubic")
        return up.repeat(1, n_samples, 1, 1) + 0.05 * torch.randn(lr.shape[0], n_samples, *out_size, generator=g)


@pytest.mark.parametrize("kind", ["bicubic", "ct"])
def test_every_sample_is_projected_onto_its_own_lr(kind):
    # an LR made by the degradation from an image in the window, as real inputs are (an arbitrary
    # LR may have no consistent image inside [-1, 1] at all)
    hr = upsample(torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8, (24, 24))
    lr = degrade(hr, 8, kind)
    model = BackProjected(Blurry(), kind, iterations=20)
    assert model.kind == "ldm" and model.describe() == {"iterations": 20, "degradation": kind}
    sr = model.super_resolve(lr, (24, 24), n_samples=3)
    raw = Blurry().super_resolve(lr, (24, 24), n_samples=3)
    assert sr.shape == (2, 3, 24, 24)
    for k in range(3):
        before = (degrade(raw[:, k : k + 1], 8, kind) - lr).abs().max()
        after = (degrade(sr[:, k : k + 1], 8, kind) - lr).abs().max()
        assert after < 0.05 * before
    assert (sr[:, 0] - sr[:, 1]).abs().mean() > 0.01  # the samples keep their own detail


def test_bad_settings_name_the_flag():
    with pytest.raises(ValueError, match="--back_projection"):
        BackProjected(Blurry(), "bicubic", 0)
    with pytest.raises(ValueError, match="degradation"):
        BackProjected(Blurry(), "gaussian", 5)
