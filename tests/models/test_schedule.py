import pytest
import torch

from ldm.models.diffusion.schedule import DiffusionSchedule, make_beta_schedule


def test_linear_schedule_is_linear_in_sqrt_beta():
    betas = make_beta_schedule("linear", 1000, 0.0015, 0.0155)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(0.0015) and betas[-1].item() == pytest.approx(0.0155)
    steps = betas.sqrt().diff()
    assert torch.allclose(steps, steps[0].expand_as(steps))


def test_cosine_schedule_is_a_valid_beta_sequence():
    betas = make_beta_schedule("cosine", 100)
    assert ((betas > 0) & (betas <= 0.999)).all()


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="beta_schedule"):
        make_beta_schedule("quadratic", 10)


def test_buffers_are_float32_and_alphas_decrease():
    schedule = DiffusionSchedule(1000, "linear", 0.0015, 0.0155)
    assert schedule.num_timesteps == 1000
    for name, buf in schedule.named_buffers():
        assert buf.dtype == torch.float32, name
    assert (schedule.alphas_cumprod.diff() < 0).all()
    assert "alphas_cumprod" in schedule.state_dict()


@pytest.fixture
def noised():
    schedule = DiffusionSchedule(1000, "linear", 0.0015, 0.0155)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 8, 8, generator=g)
    noise = torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    return schedule, x0, noise, t, schedule.q_sample(x0, t, noise)


def test_q_sample_and_predictions_invert_each_other(noised):
    schedule, x0, noise, t, x_t = noised
    torch.testing.assert_close(schedule.predict_start_from_noise(x_t, t, noise), x0, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(schedule.predict_noise_from_start(x_t, t, x0), noise, atol=1e-3, rtol=1e-4)


def test_v_helpers_invert_each_other(noised):
    schedule, x0, noise, t, x_t = noised
    v = schedule.get_v(x0, noise, t)
    torch.testing.assert_close(schedule.predict_start_from_v(x_t, t, v), x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(schedule.predict_noise_from_v(x_t, t, v), noise, atol=1e-5, rtol=1e-5)


def test_q_sample_matches_the_closed_form_per_sample(noised):
    schedule, x0, noise, t, x_t = noised
    a = schedule.alphas_cumprod
    for i, ti in enumerate(t.tolist()):
        expected = a[ti].sqrt() * x0[i] + (1 - a[ti]).sqrt() * noise[i]
        torch.testing.assert_close(x_t[i], expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_schedule_runs_on_the_tensors_device(noised):
    schedule, x0, noise, t, x_t = noised
    schedule = schedule.to("cuda")
    out = schedule.q_sample(x0.to("cuda"), t.to("cuda"), noise.to("cuda"))
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), x_t)
