import pytest
import torch

from ldm.models.diffusion.samplers import SAMPLERS, sample_ddim, sample_ddpm, sampling_timesteps, seeded_randn
from ldm.models.diffusion.schedule import DiffusionSchedule


@pytest.fixture(scope="module")
def schedule():
    return DiffusionSchedule(1000, "linear", 0.0015, 0.0155)


def oracle(schedule, x0):
    """A model that knows x_0, so it returns the true eps of any x_t."""
    return lambda x_t, t: schedule.predict_noise_from_start(x_t, t, x0.to(x_t.device))


def toy_model(x_t, t, cond):
    """A fixed, input-dependent eps predictor (no weights) standing in for a trained denoiser."""
    return torch.tanh(x_t + cond) * (t.float() / 1000.0)[:, None, None, None]


def test_timesteps_are_uniform_descending_and_start_at_T_minus_1():
    ts = sampling_timesteps(1000, 50)
    assert len(ts) == 50 and ts[0] == 999 and ts[-1] == 19
    assert all(a - b == 20 for a, b in zip(ts, ts[1:], strict=False))
    assert sampling_timesteps(1000, 1000) == list(range(999, -1, -1))
    with pytest.raises(ValueError, match="steps"):
        sampling_timesteps(1000, 0)
    with pytest.raises(ValueError, match="steps"):
        sampling_timesteps(1000, 1001)


def test_seeded_noise_is_drawn_on_the_cpu():
    a = seeded_randn((2, 3), torch.Generator().manual_seed(5), torch.device("cpu"))
    torch.testing.assert_close(a, torch.randn((2, 3), generator=torch.Generator().manual_seed(5)))


@pytest.mark.parametrize("steps", [1000, 10])
def test_ddim_eta0_with_the_true_eps_recovers_x0(schedule, steps):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 8, 8, generator=g)
    x_T = torch.randn(2, 3, 8, 8, generator=g)
    out = sample_ddim(oracle(schedule, x0), x_T, schedule, disable=True, steps=steps, eta=0.0)
    torch.testing.assert_close(out, x0, atol=1e-3, rtol=1e-3)


def test_ddpm_with_the_true_eps_recovers_x0(schedule):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 8, 8, generator=g)
    x_T = torch.randn(2, 3, 8, 8, generator=g)
    out = sample_ddpm(oracle(schedule, x0), x_T, schedule, disable=True, steps=20, generator=g)
    torch.testing.assert_close(out, x0, atol=1e-3, rtol=1e-3)


def run(sampler, schedule, device, seed, **options):
    g = torch.Generator().manual_seed(seed)
    x_T = seeded_randn((2, 3, 8, 8), g, torch.device(device))
    cond = seeded_randn((2, 3, 8, 8), g, torch.device(device))
    return SAMPLERS[sampler](
        toy_model, x_T, schedule.to(device), extra_args={"cond": cond}, disable=True, generator=g, **options
    )


@pytest.mark.parametrize("sampler,options", [("ddim", {"steps": 10, "eta": 1.0}), ("ddpm", {"steps": 10})])
def test_fixed_seed_is_deterministic(schedule, sampler, options):
    a = run(sampler, schedule, "cpu", 7, **options)
    b = run(sampler, schedule, "cpu", 7, **options)
    c = run(sampler, schedule, "cpu", 8, **options)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_fixed_seed_gives_the_same_numbers_on_cuda(schedule):
    cpu = run("ddim", schedule, "cpu", 7, steps=10, eta=1.0)
    cuda = run("ddim", DiffusionSchedule(1000, "linear", 0.0015, 0.0155), "cuda", 7, steps=10, eta=1.0)
    assert cuda.device.type == "cuda"
    torch.testing.assert_close(cuda.cpu(), cpu, atol=1e-4, rtol=1e-4)


def test_callback_sees_every_step(schedule):
    seen = []
    x = torch.zeros(1, 1, 4, 4)
    sample_ddim(lambda x_t, t: torch.zeros_like(x_t), x, schedule, callback=seen.append, disable=True, steps=5)
    assert [s["i"] for s in seen] == [0, 1, 2, 3, 4]
    assert [s["t"] for s in seen] == sampling_timesteps(1000, 5)
    assert set(seen[0]) == {"x", "i", "t", "pred_x0"}


def gaussian_data_model(schedule, mean, std):
    """For data x_0 ~ N(mean, std^2) per element: the exact eps predictor, and what an exact ODE
    solver returns for x_T when its last timestep is t_last (the probability-flow ODE keeps
    z = (x - alpha mean) / sqrt(alpha^2 std^2 + sigma^2), and the final step to t = 0 takes the
    x_0 estimate, here the exact posterior mean)."""
    a = schedule.alphas_cumprod.double()

    def eps(x_t, t):
        alpha, sigma = a[t].sqrt().view(-1, 1, 1, 1), (1 - a[t]).sqrt().view(-1, 1, 1, 1)
        return (sigma * (x_t.double() - alpha * mean) / (alpha**2 * std**2 + sigma**2)).to(x_t.dtype)

    def exact(x_T, t_last):
        spread = (a * std**2 + (1 - a)).sqrt()
        z = (x_T.double() - a[-1].sqrt() * mean) / spread[-1]
        x_last = a[t_last].sqrt() * mean + spread[t_last] * z
        return mean + a[t_last].sqrt() * std**2 * (x_last - a[t_last].sqrt() * mean) / spread[t_last] ** 2

    return eps, exact


def test_dpmpp_2m_solves_the_ode_in_far_fewer_steps_than_ddim(schedule):
    eps, exact = gaussian_data_model(schedule, mean=0.3, std=0.5)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def error(sampler, steps, **options):
        out = SAMPLERS[sampler](eps, x_T, schedule, disable=True, steps=steps, **options)
        return (out - exact(x_T, sampling_timesteps(1000, steps)[-1])).abs().max().item()

    # the check of the check: DDIM converges towards the exact map (slowly: the last, small-t
    # steps are long in log-SNR, and first order)
    assert error("ddim", 1000, eta=0.0) < error("ddim", 100, eta=0.0) / 3 < 0.02
    for steps in (10, 20, 50):  # measured: 5x, 200x, 8x smaller
        assert error("dpmpp_2m", steps) < error("ddim", steps, eta=0.0) / 4
    assert error("dpmpp_2m", 20) < error("ddim", 100, eta=0.0) / 10  # 20 steps beat DDIM's 100


def test_dpmpp_2m_one_step_is_ddim_and_it_is_deterministic(schedule):
    g = torch.Generator().manual_seed(0)
    x0, x_T = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    out = SAMPLERS["dpmpp_2m"](oracle(schedule, x0), x_T, schedule, disable=True, steps=10)
    torch.testing.assert_close(out, x0, atol=1e-3, rtol=1e-3)  # the true eps: back to x_0
    with_gen = SAMPLERS["dpmpp_2m"](toy_model, x_T, schedule, extra_args={"cond": x0}, disable=True, steps=5,
                                    generator=torch.Generator().manual_seed(3))
    without = SAMPLERS["dpmpp_2m"](toy_model, x_T, schedule, extra_args={"cond": x0}, disable=True, steps=5)
    assert torch.equal(with_gen, without)  # no noise is drawn
    # its first step (no earlier estimate to correct with) is DDIM's with eta = 0
    dpm_steps, ddim_steps = [], []
    SAMPLERS["dpmpp_2m"](toy_model, x_T, schedule, extra_args={"cond": x0}, callback=dpm_steps.append, disable=True,
                         steps=4)
    sample_ddim(toy_model, x_T, schedule, extra_args={"cond": x0}, callback=ddim_steps.append, disable=True, steps=4,
                eta=0.0)
    torch.testing.assert_close(dpm_steps[0]["x"], ddim_steps[0]["x"])
    assert not torch.allclose(dpm_steps[1]["x"], ddim_steps[1]["x"])  # then the second-order correction
