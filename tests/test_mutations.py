"""Mutation check: break the method on purpose and see the tests that guard it fail.

Each case swaps one piece of the method for a plausible wrong version (the kind of bug the
audit of issue 14 found the suite blind to), runs the named tests in-process with the swap
active, and asserts that every one of them fails. A guard that still passes under its mutation
is a test that cannot fail. Run alone: `python -m pytest tests/test_mutations.py -v`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

import ldm.data.degradation
import ldm.metrics
import ldm.models.diffusion.ddpm
import ldm.models.diffusion.samplers as samplers

TESTS = Path(__file__).parent


def ddim_without_the_eps_direction(model, x, schedule, timesteps, extra_args=None, callback=None, disable=None,
                                   eta=1.0, generator=None):
    """DDIM whose step drops sqrt(1 - a_prev - sigma^2) eps and triples the noise."""
    extra_args = extra_args or {}
    for i, t, a_t, a_prev in samplers._steps(schedule, timesteps, disable):
        _, pred_x0 = samplers._eps_and_x0(model, x, t, a_t, extra_args)
        sigma = eta * math.sqrt((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev))
        x = math.sqrt(a_prev) * pred_x0 + 3 * sigma * samplers.seeded_randn(x.shape, generator, x.device, x.dtype)
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "pred_x0": pred_x0})
    return x


def ddpm_without_the_posterior_mean(model, x, schedule, timesteps, extra_args=None, callback=None, disable=None,
                                    generator=None):
    """Ancestral sampling whose step is centred on sqrt(a_prev) x0_hat, not the posterior mean."""
    extra_args = extra_args or {}
    for i, t, a_t, a_prev in samplers._steps(schedule, timesteps, disable):
        _, pred_x0 = samplers._eps_and_x0(model, x, t, a_t, extra_args)
        variance = (1.0 - a_t / a_prev) * (1.0 - a_prev) / (1.0 - a_t)
        x = math.sqrt(a_prev) * pred_x0 + math.sqrt(variance) * samplers.seeded_randn(x.shape, generator, x.device,
                                                                                        x.dtype)
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "pred_x0": pred_x0})
    return x


def latent_loss_without_the_condition(self, z0, cond, t, noise):
    return _latent_loss(self, z0, torch.zeros_like(cond), t, noise)


def batch_mean_alignment_weights(alphas_cumprod_t, max_weight):
    """The reference code's broadcast bug: every sample gets the batch's mean weight."""
    weights = _alignment_weights(alphas_cumprod_t, max_weight)
    return weights.mean().expand_as(weights)


def ssim_with_sample_covariance(*args, **kwargs):
    return structural_similarity(*args, **{**kwargs, "use_sample_covariance": True})


def ct_with_whole_pixel_pooling(x, size):
    """What the ct degradation did before: adaptive average pooling over whole HR pixels."""
    return F.interpolate(x, size=size, mode="area")


_latent_loss = ldm.models.diffusion.ddpm.LatentDiffusionSR.latent_loss
_alignment_weights = ldm.models.diffusion.ddpm.alignment_weights

SAMPLERS_TESTS = "models/test_samplers.py"
DDPM_TESTS = "models/test_ddpm.py"


def swap_sampler(name: str, fn: Callable) -> Callable[[pytest.MonkeyPatch], None]:
    return lambda mp: mp.setitem(samplers.SAMPLERS, name, fn)


MUTATIONS = {
    "ddim drops the eps direction, triples the noise": (
        swap_sampler("ddim", ddim_without_the_eps_direction),
        [f"{SAMPLERS_TESTS}::test_ddim_eta0_with_the_true_eps_follows_the_noising_path_to_x0[1000]",
         f"{SAMPLERS_TESTS}::test_ddim_eta0_with_the_true_eps_follows_the_noising_path_to_x0[10]",
         f"{SAMPLERS_TESTS}::test_ancestral_steps_with_the_true_eps_keep_q_xt_given_x0[ddim-eta1-20]",
         f"{SAMPLERS_TESTS}::test_samplers_draw_the_distribution_their_update_defines[ddim-eta1-50]",
         f"{SAMPLERS_TESTS}::test_samplers_draw_the_distribution_their_update_defines[ddim-eta1-10]",
         f"{SAMPLERS_TESTS}::test_samplers_draw_the_distribution_their_update_defines[ddim-eta0-50]"],
    ),
    "ddpm ignores the posterior mean": (
        swap_sampler("ddpm", ddpm_without_the_posterior_mean),
        [f"{SAMPLERS_TESTS}::test_ancestral_steps_with_the_true_eps_keep_q_xt_given_x0[ddpm-20]",
         f"{SAMPLERS_TESTS}::test_samplers_draw_the_distribution_their_update_defines[ddpm-20]",
         f"{SAMPLERS_TESTS}::test_samplers_draw_the_distribution_their_update_defines[ddpm-50]",
         f"{SAMPLERS_TESTS}::test_the_closed_form_and_the_samplers_reach_the_data_distribution_with_all_steps"],
    ),
    "the stage-2 loss drops the condition": (
        lambda mp: mp.setattr(ldm.models.diffusion.ddpm.LatentDiffusionSR, "latent_loss",
                              latent_loss_without_the_condition),
        [f"{DDPM_TESTS}::test_the_loss_encodes_target_and_condition_as_separate_passes_would"],
    ),
    "the alignment weight is the batch mean": (
        lambda mp: mp.setattr(ldm.models.diffusion.ddpm, "alignment_weights", batch_mean_alignment_weights),
        [f"{DDPM_TESTS}::test_alignment_loss_trains_the_unet_through_the_frozen_decoder"],
    ),
    "ssim with the sample covariance": (
        lambda mp: mp.setattr(ldm.metrics, "structural_similarity", ssim_with_sample_covariance),
        ["test_metrics.py::test_ssim_is_wang_et_al_on_textured_images", "test_metrics.py::test_ssim_of_known_pairs"],
    ),
    "ct degradation pools whole HR pixels": (
        lambda mp: mp.setattr(ldm.data.degradation, "area_resample", ct_with_whole_pixel_pooling),
        ["data/test_degradation.py::test_ct_psf_is_the_documented_gaussian_times_footprint_and_centred[2.5]",
         "data/test_degradation.py::test_ct_psf_is_the_documented_gaussian_times_footprint_and_centred[3.7]",
         "data/test_degradation.py::test_ct_psf_is_the_documented_gaussian_times_footprint_and_centred[6.3]"],
    ),
}


class Outcomes:
    """A pytest plugin recording how each test ended: 'passed', 'assertion' (failed an assert in
    its body: the guard caught the mutation) or the phase and error it broke with otherwise (an
    import or fixture error would make any guard 'fail', and proves nothing)."""

    def __init__(self) -> None:
        self.ended: dict[str, str] = {}

    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo) -> None:
        name = item.nodeid.split("tests/", 1)[-1]
        if call.excinfo is None:
            self.ended.setdefault(name, "passed")
        elif call.when == "call" and call.excinfo.errisinstance(AssertionError):
            self.ended[name] = "assertion"
        else:
            self.ended[name] = f"{call.when}: {call.excinfo.exconly()}"


def run_guards(guards: list[str], basetemp: Path) -> dict[str, str]:
    """How each named test ends, run in this process (so a monkeypatched swap is seen).

    basetemp: the inner session's temporary folder, inside this test's own, so that it does not
    number and clean up folders beside the outer session's."""
    outcomes = Outcomes()
    pytest.main(["-q", "-p", "no:cacheprovider", "-p", "no:xdist", "--no-header", "--tb=no", "-rN",
                 f"--basetemp={basetemp}", *[str(TESTS / g) for g in guards]], plugins=[outcomes])
    assert set(outcomes.ended) == set(guards), f"not all guards ran: {sorted(set(guards) - set(outcomes.ended))}"
    return outcomes.ended


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_the_guarding_tests_fail_under_the_mutation(mutation, monkeypatch, tmp_path):
    apply, guards = MUTATIONS[mutation]
    apply(monkeypatch)
    survivors = {g: how for g, how in run_guards(guards, tmp_path / "inner").items() if how != "assertion"}
    assert not survivors, f"with '{mutation}' these did not fail an assertion: {survivors}"


def test_the_guards_pass_without_a_mutation(tmp_path):
    """The control: this harness reports a passing test as passing."""
    guards = MUTATIONS["ssim with the sample covariance"][1] + MUTATIONS["ct degradation pools whole HR pixels"][1]
    assert set(run_guards(guards, tmp_path / "inner").values()) == {"passed"}
