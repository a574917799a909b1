"""The forward (noising) process: beta schedules and the closed-form q(x_t | x_0) algebra.

Buffers live on the module, so they follow the model's device; every method works on the
device of the tensors it is given (the reference sampler forced CUDA).
"""

from __future__ import annotations

import math

import torch
from torch import nn

BETA_SCHEDULES = ("linear", "cosine")


def make_beta_schedule(
    schedule: str,
    n_timestep: int,
    linear_start: float = 1e-4,
    linear_end: float = 2e-2,
    cosine_s: float = 8e-3,
) -> torch.Tensor:
    """Betas (n_timestep,) in float64.

    "linear" is linear in sqrt(beta), as in latent diffusion (not Ho et al.'s linear in beta);
    "cosine" is Nichol & Dhariwal (2021), with betas clipped at 0.999.
    """
    if n_timestep < 1:
        raise ValueError(f"timesteps: expected >= 1, got {n_timestep}")
    if schedule == "linear":
        return torch.linspace(linear_start**0.5, linear_end**0.5, n_timestep, dtype=torch.float64) ** 2
    if schedule == "cosine":
        steps = torch.arange(n_timestep + 1, dtype=torch.float64) / n_timestep
        f = torch.cos((steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        alphas_cumprod = f / f[0]
        return (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(max=0.999)
    raise ValueError(f"beta_schedule: expected one of {BETA_SCHEDULES}, got '{schedule}'")


def uniform_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """`steps` timesteps, descending, with LDM's "uniform" stride T // steps.

    Anchored at T - 1 so the first step sees the noise level x_T was drawn at (LDM's +1 offset
    starts at T - stride + 1 and cannot run steps = T).
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps: expected 1 <= steps <= {num_timesteps}, got {steps}")
    stride = num_timesteps // steps
    return [num_timesteps - 1 - i * stride for i in range(steps)]


def _at(values: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """values[t] as (B, 1, ..., 1) on x's device, to broadcast against x (B, ...).

    Kept in float32 (not cast to x's dtype): a bf16 coefficient would cost the x_0 / eps
    conversions their precision; type promotion returns float32 for bf16 x.
    """
    return values[t.to(values.device)].to(x.device).reshape(t.shape[0], *([1] * (x.ndim - 1)))


class DiffusionSchedule(nn.Module):
    """Float32 buffers of a discrete diffusion schedule and the x_0 / eps / v conversions.

    t is a (B,) long tensor of timesteps in [0, timesteps). The buffers are saved with the
    model, so a checkpoint carries the schedule it was trained with.
    """

    def __init__(
        self,
        timesteps: int = 1000,
        beta_schedule: str = "linear",
        linear_start: float = 1e-4,
        linear_end: float = 2e-2,
        cosine_s: float = 8e-3,
    ) -> None:
        super().__init__()
        betas = make_beta_schedule(beta_schedule, timesteps, linear_start, linear_end, cosine_s)
        # float64 for the cumulative product, float32 buffers for the model
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        buffers = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
            "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1.0).sqrt(),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.to(torch.float32))

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    def timesteps(self, steps: int) -> list[int]:
        """The samplers' discretisation: `steps` descending timesteps (uniform_timesteps)."""
        return uniform_timesteps(self.num_timesteps, steps)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps."""
        return _at(self.sqrt_alphas_cumprod, t, x0) * x0 + _at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def predict_start_from_noise(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)."""
        return _at(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - _at(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps

    def predict_noise_from_start(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """eps = (x_t / sqrt(a_t) - x_0) / sqrt(1 / a_t - 1)."""
        return (_at(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / _at(self.sqrt_recipm1_alphas_cumprod, t, x_t)

    def get_v(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v = sqrt(a_t) eps - sqrt(1 - a_t) x_0 (Salimans & Ho 2022)."""
        return _at(self.sqrt_alphas_cumprod, t, x0) * noise - _at(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0

    def predict_start_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x_0 = sqrt(a_t) x_t - sqrt(1 - a_t) v."""
        return _at(self.sqrt_alphas_cumprod, t, x_t) * x_t - _at(self.sqrt_one_minus_alphas_cumprod, t, x_t) * v

    def predict_noise_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """eps = sqrt(1 - a_t) x_t + sqrt(a_t) v."""
        return _at(self.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t + _at(self.sqrt_alphas_cumprod, t, x_t) * v
