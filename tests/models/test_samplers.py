import math

import pytest
import torch

from ldm.models.diffusion.samplers import SAMPLERS, Sampling, sample_ddim, sampler_function, seeded_randn
from ldm.models.diffusion.schedule import DiffusionSchedule, uniform_timesteps


@pytest.fixture(scope="module")
def schedule():
    return DiffusionSchedule(1000, "linear", 0.0015, 0.0155)


def oracle(schedule, x0):
    """A model that knows x_0, so it returns the true eps of any x_t."""
    return lambda x_t, t: schedule.predict_noise_from_start(x_t, t, x0.to(x_t.device))


def toy_model(x_t, t, cond):
    """A fixed, input-dependent eps predictor (no weights) standing in for a trained denoiser."""
    return torch.tanh(x_t + cond) * (t.float() / 1000.0)[:, None, None, None]


def with_timesteps(schedule, options):
    """A test's {"steps": n, ...} as sampler keywords: the schedule's n timesteps instead of n (all T without)."""
    options = dict(options)
    timesteps = schedule.timesteps(options.pop("steps", schedule.num_timesteps))
    return {**options, "timesteps": timesteps}


def test_timesteps_are_uniform_descending_and_start_at_T_minus_1():
    ts = uniform_timesteps(1000, 50)
    assert len(ts) == 50 and ts[0] == 999 and ts[-1] == 19
    assert all(a - b == 20 for a, b in zip(ts, ts[1:], strict=False))
    assert uniform_timesteps(1000, 1000) == list(range(999, -1, -1))
    with pytest.raises(ValueError, match="steps"):
        uniform_timesteps(1000, 0)
    with pytest.raises(ValueError, match="steps"):
        uniform_timesteps(1000, 1001)


def test_seeded_noise_is_drawn_on_the_cpu():
    a = seeded_randn((2, 3), torch.Generator().manual_seed(5), torch.device("cpu"))
    torch.testing.assert_close(a, torch.randn((2, 3), generator=torch.Generator().manual_seed(5)))


def on_the_noising_path(schedule, x0, x_T):
    """x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps with eps the one that put x_T on q(x_T | x_0)."""
    a = schedule.alphas_cumprod.double()
    eps = (x_T.double() - a[-1].sqrt() * x0) / (1 - a[-1]).sqrt()
    return lambda t: (a[t].sqrt() * x0 + (1 - a[t]).sqrt() * eps if t >= 0 else x0.double()).float()


@pytest.mark.parametrize("steps", [1000, 10])
def test_ddim_eta0_with_the_true_eps_follows_the_noising_path_to_x0(schedule, steps):
    """Deterministic DDIM keeps the eps it started with: every step lands on the point of x_0's own
    noising path at the next timestep (the eps direction carries it there), the last on x_0."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 8, 8, generator=g)
    x_T = torch.randn(2, 3, 8, 8, generator=g)
    path, seen = on_the_noising_path(schedule, x0, x_T), []
    out = SAMPLERS["ddim"](oracle(schedule, x0), x_T, schedule, callback=seen.append, disable=True,
                           timesteps=schedule.timesteps(steps), eta=0.0)
    timesteps = uniform_timesteps(1000, steps)[1:] + [-1]
    for step, t_next in zip(seen, timesteps, strict=True):
        torch.testing.assert_close(step["x"], path(t_next), atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(out, x0, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("sampler,options", [("ddpm", {"steps": 20}), ("ddim", {"steps": 20, "eta": 1.0})],
                         ids=["ddpm-20", "ddim-eta1-20"])
def test_ancestral_steps_with_the_true_eps_keep_q_xt_given_x0(schedule, sampler, options):
    """Sampling q(x_prev | x_t, x_0) from a sample of q(x_t | x_0) gives a sample of q(x_prev | x_0):
    at every step (x - sqrt(a) x_0) / sqrt(1 - a) is standard normal over the pixels. A step that
    misplaces the posterior mean or scales its noise moves that mean or std; the last step lands on
    x_0 whatever the update, so x_0 at the end alone proves nothing."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 1, 128, 128, generator=g)
    x_T = on_the_noising_path(schedule, x0, torch.randn(1, 1, 128, 128, generator=g))(999)
    a, seen = schedule.alphas_cumprod.double(), []
    out = SAMPLERS[sampler](oracle(schedule, x0), x_T, schedule, callback=seen.append, disable=True, generator=g,
                            **with_timesteps(schedule, options))
    for step, t_next in zip(seen[:-1], uniform_timesteps(1000, options["steps"])[1:], strict=True):
        z = (step["x"].double() - a[t_next].sqrt() * x0) / (1 - a[t_next]).sqrt()
        assert abs(z.mean().item()) < 0.03 and abs(z.std().item() - 1.0) < 0.03, (t_next, z.mean(), z.std())
    torch.testing.assert_close(out, x0, atol=1e-3, rtol=1e-3)


def run(sampler, schedule, device, seed, **options):
    g = torch.Generator().manual_seed(seed)
    x_T = seeded_randn((2, 3, 8, 8), g, torch.device(device))
    cond = seeded_randn((2, 3, 8, 8), g, torch.device(device))
    return SAMPLERS[sampler](
        toy_model, x_T, schedule.to(device), extra_args={"cond": cond}, disable=True, generator=g,
        **with_timesteps(schedule, options)
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
    sample_ddim(lambda x_t, t: torch.zeros_like(x_t), x, schedule, schedule.timesteps(5), callback=seen.append,
                disable=True)
    assert [s["i"] for s in seen] == [0, 1, 2, 3, 4]
    assert [s["t"] for s in seen] == uniform_timesteps(1000, 5)
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


def ddim_output_on_gaussian_data(schedule, mean, std, steps, eta):
    """Mean and std of DDIM's output from x_T ~ N(0, 1) given the exact eps of data N(mean, std^2).

    The exact eps is affine in x_t, so each step of Song et al.'s update (eq. 12)
    x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps + sigma z is x_prev = A x_t + B + sigma z,
    and N(m, v) goes to N(A m + B, A^2 v + sigma^2): the distribution the algorithm defines, in closed form.
    With eta = 1 this is also strided DDPM's (Ho et al.'s posterior is DDIM's eta = 1 step).
    """
    a = schedule.alphas_cumprod.double().tolist()
    timesteps = uniform_timesteps(schedule.num_timesteps, steps)
    m, v = 0.0, 1.0
    for i, t in enumerate(timesteps):
        a_t, a_prev = a[t], (a[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0)
        k = math.sqrt(1 - a_t) / (a_t * std**2 + 1 - a_t)  # eps = k (x_t - sqrt(a_t) mean)
        x0_gain, x0_offset = (1 - math.sqrt(1 - a_t) * k) / math.sqrt(a_t), math.sqrt(1 - a_t) * k * mean
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        c = math.sqrt(max(1 - a_prev - sigma**2, 0.0))
        gain = math.sqrt(a_prev) * x0_gain + c * k
        offset = math.sqrt(a_prev) * x0_offset - c * k * math.sqrt(a_t) * mean
        m, v = gain * m + offset, gain**2 * v + sigma**2
    return m, math.sqrt(v)


MEAN, STD = 0.3, 0.5  # the data: N(MEAN, STD^2) per pixel, narrower than the noise


def sample_gaussian_data(schedule, sampler, seed=0, shape=(4, 1, 128, 128), **options):
    eps, _ = gaussian_data_model(schedule, MEAN, STD)
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(shape, generator=g, dtype=torch.float64)
    return SAMPLERS[sampler](eps, x_T, schedule, disable=True, generator=g, **with_timesteps(schedule, options))


@pytest.mark.parametrize(
    "sampler,options",
    [
        ("ddim", {"steps": 50, "eta": 1.0}),  # the default sampler
        ("ddim", {"steps": 10, "eta": 1.0}),
        ("ddim", {"steps": 50, "eta": 0.0}),
        ("ddpm", {"steps": 20}),
        ("ddpm", {"steps": 50}),
    ],
    ids=["ddim-eta1-50", "ddim-eta1-10", "ddim-eta0-50", "ddpm-20", "ddpm-50"],
)
def test_samplers_draw_the_distribution_their_update_defines(schedule, sampler, options):
    """65k pixels of Gaussian data with the exact eps: the samples' mean and std are the closed-form
    ones (Monte Carlo error ~0.3%). A sampler that drops the eps direction, scales the noise or
    misplaces the posterior mean is off by 25% or more."""
    out = sample_gaussian_data(schedule, sampler, **options)
    mean, std = ddim_output_on_gaussian_data(schedule, MEAN, STD, options["steps"], options.get("eta", 1.0))
    assert abs(out.mean().item() - mean) < 0.01 and abs(out.std().item() / std - 1) < 0.015, (
        out.mean().item(), mean, out.std().item(), std)


def test_dpmpp_2m_draws_the_distribution_of_the_exact_ode(schedule):
    _, exact = gaussian_data_model(schedule, MEAN, STD)
    out = sample_gaussian_data(schedule, "dpmpp_2m", steps=20)
    ends = exact(torch.tensor([0.0, 1.0], dtype=torch.float64), uniform_timesteps(1000, 20)[-1])
    mean, std = ends[0].item(), (ends[1] - ends[0]).item()  # the exact map is affine in x_T ~ N(0, 1)
    assert abs(out.mean().item() - mean) < 0.01 and abs(out.std().item() / std - 1) < 0.015


def test_the_closed_form_and_the_samplers_reach_the_data_distribution_with_all_steps(schedule):
    """The check of the check: with all T steps the last x_0 estimate is taken at t = 0 and both
    the closed form and the samples are the data's N(MEAN, STD^2), up to discretisation (~1%)."""
    mean, std = ddim_output_on_gaussian_data(schedule, MEAN, STD, 1000, eta=1.0)
    assert abs(mean - MEAN) < 0.01 and abs(std / STD - 1) < 0.02
    out = sample_gaussian_data(schedule, "ddpm", shape=(1, 1, 64, 64))
    assert abs(out.mean().item() - MEAN) < 0.02 and abs(out.std().item() / STD - 1) < 0.03
    # with fewer steps the last estimate is the posterior mean at t = T // steps - 1: narrower
    assert ddim_output_on_gaussian_data(schedule, MEAN, STD, 10, eta=1.0)[1] < 0.8 * STD


def test_dpmpp_2m_solves_the_ode_in_far_fewer_steps_than_ddim(schedule):
    eps, exact = gaussian_data_model(schedule, mean=0.3, std=0.5)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def error(sampler, steps, **options):
        out = SAMPLERS[sampler](eps, x_T, schedule, schedule.timesteps(steps), disable=True, **options)
        return (out - exact(x_T, uniform_timesteps(1000, steps)[-1])).abs().max().item()

    # the check of the check: DDIM converges towards the exact map (slowly: the last, small-t
    # steps are long in log-SNR, and first order)
    assert error("ddim", 1000, eta=0.0) < error("ddim", 100, eta=0.0) / 3 < 0.02
    for steps in (10, 20, 50):  # measured: 5x, 200x, 8x smaller
        assert error("dpmpp_2m", steps) < error("ddim", steps, eta=0.0) / 4
    assert error("dpmpp_2m", 20) < error("ddim", 100, eta=0.0) / 10  # 20 steps beat DDIM's 100


def test_dpmpp_2m_one_step_is_ddim_and_it_is_deterministic(schedule):
    g = torch.Generator().manual_seed(0)
    x0, x_T = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    out = SAMPLERS["dpmpp_2m"](oracle(schedule, x0), x_T, schedule, schedule.timesteps(10), disable=True)
    torch.testing.assert_close(out, x0, atol=1e-3, rtol=1e-3)  # the true eps: back to x_0
    five = schedule.timesteps(5)
    with_gen = SAMPLERS["dpmpp_2m"](toy_model, x_T, schedule, five, extra_args={"cond": x0}, disable=True,
                                    generator=torch.Generator().manual_seed(3))
    without = SAMPLERS["dpmpp_2m"](toy_model, x_T, schedule, five, extra_args={"cond": x0}, disable=True)
    assert torch.equal(with_gen, without)  # no noise is drawn
    # its first step (no earlier estimate to correct with) is DDIM's with eta = 0
    dpm_steps, ddim_steps = [], []
    four = schedule.timesteps(4)
    SAMPLERS["dpmpp_2m"](toy_model, x_T, schedule, four, extra_args={"cond": x0}, callback=dpm_steps.append,
                         disable=True)
    sample_ddim(toy_model, x_T, schedule, four, extra_args={"cond": x0}, callback=ddim_steps.append, disable=True,
                eta=0.0)
    torch.testing.assert_close(dpm_steps[0]["x"], ddim_steps[0]["x"])
    assert not torch.allclose(dpm_steps[1]["x"], ddim_steps[1]["x"])  # then the second-order correction


def test_sampling_resolves_defaults_checks_the_name_and_runs_the_schedules_timesteps(schedule):
    ddim = Sampling.resolve("ddim", None, None, num_timesteps=1000, default_steps=20, default_eta=0.5)
    assert ddim.record() == {"sampler": "ddim", "steps": 20, "eta": 0.5, "tile": None}
    assert Sampling.resolve("ddpm", None, 0.3, num_timesteps=1000, default_steps=20, default_eta=1.0).record() == {
        "sampler": "ddpm", "steps": 1000, "eta": None, "tile": None}  # eta is DDIM's only
    assert Sampling.resolve("dpmpp_2m", 7, None, num_timesteps=1000, default_steps=20, default_eta=1.0).eta is None
    with pytest.raises(ValueError, match="--sampler: expected one of ddim, ddpm, dpmpp_2m, got 'euler'"):
        sampler_function("euler", "--sampler")
    with pytest.raises(ValueError, match="sampler"):
        Sampling.resolve("euler", 10, None, num_timesteps=1000, default_steps=20, default_eta=1.0)
    seen = []
    Sampling("ddim", 4, 0.0).run(lambda x_t, t: torch.zeros_like(x_t), torch.zeros(1, 1, 2, 2), schedule,
                                 callback=seen.append, disable=True)
    assert [s["t"] for s in seen] == schedule.timesteps(4) == [999, 749, 499, 249]
