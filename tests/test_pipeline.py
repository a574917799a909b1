"""ldm/pipeline.py: a run re-windowed or back-projected (any super-resolver's samples made consistent
with their LR)."""

import zlib

import numpy as np
import pytest
import torch

from ldm.data.degradation import degrade, upsample
from ldm.data.intensity import FULL_WINDOW, LUNG_WINDOW, hu_window
from ldm.models.base import check_out_size
from ldm.models.diffusion.samplers import Sampling
from ldm.pipeline import BackProjected, Pipeline, Rewindowed, image_seed


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


class Seeded:
    """A stand-in sampling model: bicubic plus noise drawn from each slice's own seed; it runs out of
    memory on batches larger than `fits`."""

    kind = "ldm"

    def __init__(self, fits=None):
        self.fits = fits

    def super_resolve(self, lr, out_size, n_samples=1, seed=None, **sampling):
        check_out_size(lr, out_size)
        if self.fits is not None and lr.shape[0] > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        noise = [torch.randn(n_samples, *out_size, generator=torch.Generator().manual_seed(s)) for s in seed]
        return upsample(lr, out_size, "bicubic") + 0.05 * torch.stack(noise)


def test_a_batch_that_runs_out_of_memory_is_redone_one_slice_at_a_time_with_the_same_outputs(capsys):
    lr = torch.rand(3, 1, 8, 8) * 2 - 1
    seeds, names = [11, 12, 13], ["a", "b", "c"]
    sampling = Sampling("ddim", 2, 1.0)
    whole, split, failed = [], [], []
    for fits, results in ((None, whole), (1, split)):
        pipeline = Pipeline(Seeded(fits), sampling=sampling)
        results += pipeline.super_resolve_each(lr, (16, 16), seeds, names, 2, failed)
    assert not failed and "out of memory for a .. c (3 slices); retrying them one at a time" in capsys.readouterr().err
    for (mean, std), (mean_split, std_split) in zip(whole, split, strict=True):
        assert mean.shape == std.shape == (16, 16)
        assert torch.equal(mean, mean_split) and torch.equal(std, std_split)
    assert Pipeline(Seeded(), sampling=sampling).record(2) == {"sampler": "ddim", "steps": 2, "eta": 1.0, "tile": None,
                                                             "n_samples": 2}


def test_a_slice_that_fails_is_one_line_and_the_batch_returns_none():
    failed = []
    results = Pipeline(Seeded(fits=0), sampling=Sampling("ddim", 2, 1.0)).super_resolve_each(
        torch.zeros(1, 1, 8, 8), (16, 16), [1], ["big"], 1, failed)
    assert results == [None] and len(failed) == 1
    assert failed[0].startswith("big: out of memory") and "--tile" in failed[0]
    failed = []
    pipeline = Pipeline(Seeded(), sampling=Sampling("ddim", 2, 1.0))
    results = pipeline.super_resolve_each(torch.zeros(2, 1, 8, 8), (0, 16), [1, 2], ["a", "b"], 1, failed)
    assert results == [None, None] and failed == ["a .. b (2 slices): out_size: must be positive, got (0, 16)"]


def test_image_seed_is_a_stable_hash_of_seed_and_path():
    assert image_seed(23, "chest/a.png") == zlib.crc32(b"23:chest/a.png")
    assert image_seed(23, "chest/a.png") != image_seed(24, "chest/a.png") != image_seed(23, "chest/b.png")
