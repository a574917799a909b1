"""Samplers over an eps-predicting model, in the style of k-diffusion's sampling.py.

Every sampler is `(model, x, schedule, timesteps, extra_args=None, callback=None, disable=None, **options)`:
  model(x_t, t, **extra_args) -> eps   x_t (B, ...), t (B,) long timesteps; a v-model is wrapped
                                       by its caller so samplers stay parameterisation-free
  x                                    the starting noise x_T (B, ...)
  schedule                             a DiffusionSchedule
  timesteps                            the descending timesteps to visit, made by the schedule
                                       (schedule.timesteps(steps)): the discretisation is passed
                                       in, so another spacing is a new function there, not an
                                       edit of every sampler
  callback({"x", "i", "t", "pred_x0"}) after every step; disable: turn the tqdm bar off.
Returns the sample x_0. `Sampling` resolves a sampler's name, steps and eta once (defaults, the
name check, what is recorded) and runs it.

Seeding: the per-step noise is drawn on the CPU from `generator` (a CPU torch.Generator) and
then moved to x's device (asynchronously on CUDA), so a fixed seed gives the same numbers on CPU
and CUDA.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from ldm.models.diffusion.schedule import DiffusionSchedule

Model = Callable[..., torch.Tensor]
Callback = Callable[[dict[str, Any]], None]


Generators = torch.Generator | Sequence[torch.Generator] | None


def seeded_randn(
    shape: Sequence[int], generator: Generators, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Standard normal noise drawn on the CPU from `generator` (a CPU generator, or None for the
    global CPU RNG), then moved to `device`: the same seed gives the same numbers on any device.

    A sequence of n generators draws the rows in n equal consecutive groups, one generator each,
    so every image of a batch gets noise of its own whatever else shares the batch.
    """
    if generator is None or isinstance(generator, torch.Generator):
        noise = torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
    else:
        rows, n = shape[0], len(generator)
        if rows % n:
            raise ValueError(f"seeded_randn: {rows} rows do not split over {n} generators")
        per = (rows // n, *shape[1:])
        noise = torch.cat([torch.randn(per, generator=g, dtype=torch.float32) for g in generator])
    return to_device_async(noise, torch.device(device)).to(dtype)


def to_device_async(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on `device` without stalling the host: through pinned memory on CUDA.

    A copy from pageable memory waits for the GPU's queue to drain, so drawing each DDIM step's
    noise on the CPU would stop the host from queueing step i + 1 while step i runs. A pinned
    copy is queued like a kernel; torch's pinned allocator keeps the buffer until it is done.
    """
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _steps(
    schedule: DiffusionSchedule, timesteps: Sequence[int], disable: bool | None
) -> Iterator[tuple[int, int, float, float]]:
    """(i, t, a_t, a_prev) along the sampling timesteps; a_prev = 1 after the last one (clean)."""
    # one host copy up front: the per-step coefficients are then plain float64 scalars
    alphas = schedule.alphas_cumprod.detach().double().cpu().tolist()
    timesteps = [int(t) for t in timesteps]
    for i, t in enumerate(tqdm(timesteps, disable=disable, leave=False)):
        a_prev = alphas[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0
        yield i, t, alphas[t], a_prev


def _eps_and_x0(
    model: Model, x: torch.Tensor, t: int, a_t: float, extra_args: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    eps = model(x, t_batch, **extra_args).to(x.dtype)
    pred_x0 = (x - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)
    return eps, pred_x0


@torch.no_grad()
def sample_ddim(
    model: Model,
    x: torch.Tensor,
    schedule: DiffusionSchedule,
    timesteps: Sequence[int],
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    eta: float = 1.0,
    generator: Generators = None,
) -> torch.Tensor:
    """DDIM (Song et al. 2021), eta = 0 deterministic, eta = 1 the DDPM posterior variance."""
    extra_args = extra_args or {}
    for i, t, a_t, a_prev in _steps(schedule, timesteps, disable):
        eps, pred_x0 = _eps_and_x0(model, x, t, a_t, extra_args)
        sigma = eta * math.sqrt((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev))
        x = math.sqrt(a_prev) * pred_x0 + math.sqrt(max(1.0 - a_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * seeded_randn(x.shape, generator, x.device, x.dtype)
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "pred_x0": pred_x0})
    return x


@torch.no_grad()
def sample_ddpm(
    model: Model,
    x: torch.Tensor,
    schedule: DiffusionSchedule,
    timesteps: Sequence[int],
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    generator: Generators = None,
) -> torch.Tensor:
    """Ancestral sampling (Ho et al. 2020) from the posterior q(x_prev | x_t, x_0), all T steps or strided."""
    extra_args = extra_args or {}
    for i, t, a_t, a_prev in _steps(schedule, timesteps, disable):
        eps, pred_x0 = _eps_and_x0(model, x, t, a_t, extra_args)
        # a strided chain is a DDPM whose betas are 1 - a_t / a_prev (Nichol & Dhariwal's respacing)
        beta = 1.0 - a_t / a_prev
        mean = (math.sqrt(a_prev) * beta * pred_x0 + math.sqrt(1.0 - beta) * (1.0 - a_prev) * x) / (1.0 - a_t)
        variance = beta * (1.0 - a_prev) / (1.0 - a_t)
        x = mean + math.sqrt(variance) * seeded_randn(x.shape, generator, x.device, x.dtype) if variance > 0 else mean
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "pred_x0": pred_x0})
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    model: Model,
    x: torch.Tensor,
    schedule: DiffusionSchedule,
    timesteps: Sequence[int],
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    generator: Generators = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022): the probability-flow ODE, second order from the last two
    x_0 estimates; deterministic (generator is unused, kept for a common signature).

    In VP form with alpha = sqrt(a_t), sigma = sqrt(1 - a_t), lambda = log(alpha / sigma) and
    h = lambda_next - lambda: x_next = (sigma_next / sigma) x - alpha_next expm1(-h) D, where D is
    the x_0 estimate, corrected to D + (D - D_prev) / (2 r), r = h_prev / h, after the first step.
    One step of it is DDIM with eta = 0; at 15-25 steps it reaches what DDIM needs several times
    as many for (tested on an analytic model whose ODE solution is known). The last step lands
    on x_0 (a_prev = 1) and takes the estimate itself.
    """
    extra_args = extra_args or {}
    d_prev, h_prev = None, None
    for i, t, a_t, a_prev in _steps(schedule, timesteps, disable):
        _, d = _eps_and_x0(model, x, t, a_t, extra_args)
        if a_prev >= 1.0:  # the clean end: lambda is infinite, the step is the estimate itself
            x = d
        else:
            lam, lam_next = 0.5 * math.log(a_t / (1.0 - a_t)), 0.5 * math.log(a_prev / (1.0 - a_prev))
            h = lam_next - lam
            d_used = d if d_prev is None else d + (d - d_prev) * (h / (2.0 * h_prev))
            x = math.sqrt((1.0 - a_prev) / (1.0 - a_t)) * x - math.sqrt(a_prev) * math.expm1(-h) * d_used
            d_prev, h_prev = d, h
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "pred_x0": d})
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddim": sample_ddim, "ddpm": sample_ddpm, "dpmpp_2m": sample_dpmpp_2m,
}


def sampler_function(name: str, key: str = "sampler") -> Callable[..., torch.Tensor]:
    """The sampler called `name`, or a ValueError naming `key`: the one check of sampler names."""
    if name not in SAMPLERS:
        raise ValueError(f"{key}: expected one of {', '.join(sorted(SAMPLERS))}, got '{name}'")
    return SAMPLERS[name]


@dataclass(frozen=True)
class Sampling:
    """A sampler with its options resolved: what super_resolve runs and what eval_sr.py and sr.py
    record. steps: how many timesteps (DDPM without steps: all T); eta: DDIM's, None for the
    samplers it does not apply to; tile: the latent tile in pixels, None when latents are
    denoised whole."""

    sampler: str
    steps: int
    eta: float | None
    tile: int | None = None

    @classmethod
    def resolve(
        cls, sampler: str, steps: int | None, eta: float | None, *, num_timesteps: int, default_steps: int,
        default_eta: float, tile: int | None = None,
    ) -> Sampling:
        """Fill the defaults: steps default_steps (DDPM: num_timesteps), eta default_eta for DDIM."""
        sampler_function(sampler)
        if sampler == "ddpm":
            return cls(sampler, steps or num_timesteps, None, tile)
        ddim_eta = default_eta if eta is None else eta
        return cls(sampler, steps or default_steps, ddim_eta if sampler == "ddim" else None, tile)

    def record(self) -> dict[str, Any]:
        """{"sampler", "steps", "eta", "tile"}: what a run's JSON records."""
        return asdict(self)

    def run(
        self, model: Model, x: torch.Tensor, schedule: DiffusionSchedule, extra_args: dict[str, Any] | None = None,
        generator: Generators = None, disable: bool | None = None, callback: Callback | None = None,
    ) -> torch.Tensor:
        """The sampler over schedule.timesteps(steps) from x_T = x (tiles are the caller's: `model`)."""
        options: dict[str, Any] = {"generator": generator}
        if self.eta is not None:
            options["eta"] = self.eta
        return sampler_function(self.sampler)(
            model, x, schedule, schedule.timesteps(self.steps), extra_args=extra_args, callback=callback,
            disable=disable, **options,
        )
