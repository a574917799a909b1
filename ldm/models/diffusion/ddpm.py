"""Latent diffusion super-resolution (Kim & Kim, CVPR 2024), stages 2 and 3.

A UNet denoises the latent of a frozen implicit autoencoder, conditioned on the encoded,
upsampled LR slice; the implicit decoder turns the sampled latent into an image of any size.
Stage 2 trains the UNet on eps (or v); stage 3 (`alignment`) fine-tunes it through the fixed
decoder so that decoded x_0 estimates match the HR slice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities.rank_zero import rank_zero_info
from torch import nn

from ldm import metrics
from ldm.checkpoint import CheckpointMismatchError, UnsafeCheckpointError
from ldm.models.base import EMAMixin, check_out_size, init_from_checkpoint, model_input_size
from ldm.models.diffusion.samplers import Sampling, sampler_function, seeded_randn
from ldm.models.diffusion.schedule import DiffusionSchedule
from ldm.modules.implicit.coords import sample_queries
from ldm.modules.resample import check_upsample_mode, upsample
from ldm.modules.tiles import tiled
from ldm.util import ConfigError, instantiate_from_config

FIRST_STAGE_CKPT_KEY = "model.params.first_stage_config.params.ckpt_path"


@contextlib.contextmanager
def _checkpoint_errors_name(key: str) -> Iterator[None]:
    """Prefix a checkpoint's load errors with the config key that named it: the user's handle on it."""
    try:
        yield
    except (CheckpointMismatchError, UnsafeCheckpointError, FileNotFoundError) as err:
        raise type(err)(f"{key}: {err}") from err


def alignment_weights(alphas_cumprod_t: torch.Tensor, max_weight: float | None) -> torch.Tensor:
    """w_t = a_t / (1 - a_t) per sample, (B,) -> (B,), clamped at max_weight (None: unclamped).

    The paper's weight is the signal-to-noise ratio: 0.005 at t = T - 1 but ~670 at t = 0 for the
    linear 0.0015 -> 0.0155 schedule, so one small-t sample would carry almost all of a batch's
    gradient. Truncating it (Min-SNR weighting, Hang et al. 2023, uses 5) bounds that.
    """
    weights = alphas_cumprod_t.float() / (1.0 - alphas_cumprod_t.float())
    return weights if max_weight is None else weights.clamp(max=max_weight)


def alignment_loss(
    x0_hat: torch.Tensor, z0: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """mean_b w_b (MSE_b(x0_hat, z0) + MSE_b(sr, hr)): each sample's errors times its own weight.

    The reference code multiplied a (B, 1, 1, 1) weight by a (B,) loss, which broadcasts to
    (B, 1, 1, B) and averages the weights over the batch; here the per-sample MSEs are (B,).
    """
    latent_mse = (x0_hat.float() - z0.float()).pow(2).flatten(1).mean(dim=1)  # (B,)
    image_mse = (sr.float() - hr.float()).pow(2).flatten(1).mean(dim=1)  # (B,)
    return (weights * (latent_mse + image_mse)).mean()


class LatentDiffusionSR(EMAMixin, pl.LightningModule):
    """LDM super-resolver: super_resolve(lr, out_size) -> (B, n_samples, H, W).

    first_stage_config: target/params of the implicit autoencoder; params.ckpt_path (a stage-1
        checkpoint, required to train) is loaded by it, so a first stage that does not fit the
        config fails at start-up naming the mismatching keys. Frozen and always in eval mode.
    unet_config: target/params of the denoiser (in_channels = 2 x latent channels).
    parameterization: "eps" or "v" (the UNet's target).
    scale_factor / scale_by_std: the latent scale; with scale_by_std it is set to 1 / std(E(hr))
        on the first training batch and then kept (a buffer in the state_dict).
    cond_upsample: how the LR is brought to the model's input size before the encoder.
    max_input_scale: the input (and latent) size is at most this x the LR size (see
        ldm.models.base.model_input_size); the decoder scales the rest.
    residual: diffuse the latent's residual to the condition, z_0 - cond, instead of z_0 itself
        (as SRDiff diffuses HR - up(LR)); with scale_by_std the residual is scaled to unit std
        too (residual_scale). The sample is cond + residual: the LR's content comes through the
        condition unchanged and the denoiser only has to supply the detail (see README).
    alignment: stage 3, the loss through the decoder; align_weight_max clamps its weight;
        align_sample_q: its image term on this many random HR pixels per sample (the first
        stage's sample_q: the same mean, a fraction of the decode); None: the whole HR grid.
    ckpt_path: initialise the whole model (first stage, UNet, EMA, latent scale) from a
        stage-2 checkpoint; the fine-tune then starts from that run's EMA weights.
    sampler / sample_steps / sample_eta: super_resolve's defaults ("ddim", "ddpm" or "dpmpp_2m";
        eta is DDIM's); sample_steps_val: the few steps of the validation PSNR and of log_images.
    sample_tile / sample_tile_overlap: a latent larger than sample_tile x sample_tile pixels is
        denoised in overlapping tiles (ldm.modules.tiles), so sampling memory is bounded
        whatever the output size; None denoises every latent whole. The first stage encodes and
        decodes with the same tile in super_resolve.
    """

    kind = "ldm"

    def __init__(
        self,
        first_stage_config: dict[str, Any],
        unet_config: dict[str, Any],
        timesteps: int = 1000,
        beta_schedule: str = "linear",
        linear_start: float = 0.0015,
        linear_end: float = 0.0155,
        parameterization: str = "eps",
        scale_factor: float = 1.0,
        scale_by_std: bool = True,
        cond_upsample: str = "bicubic",
        use_ema: bool = True,
        ema_decay: float = 0.9999,
        max_input_scale: float = 8.0,
        residual: bool = False,
        alignment: bool = False,
        align_weight_max: float | None = 5.0,
        align_sample_q: int | None = None,
        ckpt_path: str | None = None,
        monitor: str = "val/loss",
        sample_steps: int = 50,
        sample_eta: float = 1.0,
        sample_steps_val: int = 10,
        sampler: str = "ddim",
        sample_tile: int | None = 64,
        sample_tile_overlap: int = 16,
    ) -> None:
        super().__init__()
        if parameterization not in ("eps", "v"):
            raise ValueError(f"parameterization: expected 'eps' or 'v', got '{parameterization}'")
        check_upsample_mode(cond_upsample, "cond_upsample")
        sampler_function(sampler, "model.params.sampler")
        self.parameterization = parameterization
        self.scale_by_std = scale_by_std
        self.cond_upsample = cond_upsample
        self.max_input_scale = float(max_input_scale)
        self.residual = residual
        self.alignment = alignment
        self.align_weight_max = align_weight_max
        if align_sample_q is not None and align_sample_q < 1:
            raise ValueError(f"align_sample_q: expected None or a positive count, got {align_sample_q}")
        self.align_sample_q = align_sample_q
        self.monitor = monitor
        self.sample_steps = sample_steps
        self.sample_eta = sample_eta
        self.sample_steps_val = sample_steps_val
        self.sampler = sampler
        self.sample_tile = sample_tile
        self.sample_tile_overlap = sample_tile_overlap
        self.learning_rate = 1e-4  # main.py sets base_learning_rate x scaling

        # set True by a load (stage-1 weights here, or any checkpoint of this model), checked before training
        self.register_buffer("first_stage_loaded", torch.tensor(False))
        self.first_stage = self._build_first_stage(first_stage_config)
        self.unet = instantiate_from_config(unet_config, key="model.params.unet_config")
        latent_channels = self.first_stage.embed_dim
        if (self.unet.in_channels, self.unet.out_channels) != (2 * latent_channels, latent_channels):
            raise ValueError(
                f"model.params.unet_config.params: in_channels/out_channels must be {2 * latent_channels}/"
                f"{latent_channels} (z_t and the condition, {latent_channels} latent channels each), "
                f"got {self.unet.in_channels}/{self.unet.out_channels}"
            )
        self.schedule = DiffusionSchedule(timesteps, beta_schedule, linear_start, linear_end)
        self.register_buffer("latent_scale", torch.tensor(float(scale_factor)))
        # the residual's own scale in latent_scale units (1: unscaled, and always 1 without residual)
        self.register_buffer("residual_scale", torch.tensor(1.0))
        # without scale_by_std the configured scale_factor is final from the start
        self.register_buffer("latent_scale_set", torch.tensor(not scale_by_std))
        self.init_ema(use_ema, ema_decay)

        self.ckpt_path = ckpt_path
        if ckpt_path:
            with _checkpoint_errors_name("model.params.ckpt_path"):
                init_from_checkpoint(self, ckpt_path)  # strict; the UNet then holds the stage-2 EMA weights
            # the fine-tune averages its own trajectory, with a fresh warm-up
            self.init_ema(use_ema, ema_decay)

    def _build_first_stage(self, config: dict[str, Any]) -> nn.Module:
        """The autoencoder loads params.ckpt_path itself (strictly, onto its EMA weights if it kept an EMA)."""
        ckpt_path = (config.get("params") or {}).get("ckpt_path")
        with _checkpoint_errors_name(FIRST_STAGE_CKPT_KEY):
            first_stage = instantiate_from_config(config, key="model.params.first_stage_config")
        if isinstance(first_stage, EMAMixin):
            # its weights are already the averaged ones; a frozen model's EMA would only double the checkpoint
            first_stage.init_ema(False)
        self.first_stage_loaded.fill_(bool(ckpt_path))
        first_stage.eval()
        first_stage.requires_grad_(False)
        return first_stage

    def ema_target(self) -> nn.Module:
        return self.unet

    def train(self, mode: bool = True) -> LatentDiffusionSR:
        """Lightning calls train() every epoch; the frozen first stage must stay in eval mode."""
        super().train(mode)
        self.first_stage.eval()
        return self

    @property
    def input_multiple(self) -> int:
        """Input sizes are multiples of this: the encoder's f times the UNet's own downsampling."""
        return self.first_stage.downsample_factor * self.unet.downsample_factor

    # -- the pieces ---------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, x: torch.Tensor, tile: int | None = None) -> torch.Tensor:
        """Image (B, 1, H, W) -> scaled latent (B, C, H / f, W / f), float32 (tile: as in super_resolve)."""
        return self.first_stage.encode(x, tile).float() * self.latent_scale

    def condition(self, lr: torch.Tensor, size: tuple[int, int], tile: int | None = None) -> torch.Tensor:
        """LR (B, 1, h, w) -> the latent of the LR upsampled to `size`, (B, C, H / f, W / f)."""
        return self.encode(upsample(lr, size, self.cond_upsample), tile)

    def decode(
        self,
        z: torch.Tensor,
        out_size: tuple[int, int] | None,
        lr: torch.Tensor,
        tile: int | None = None,
        coords: torch.Tensor | None = None,
        cells: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scaled latent -> image (B, 1, *out_size), or values (B, N, 1) at coords and cells (B, N, 2)
        (out_size None); differentiable (the alignment loss needs it)."""
        return self.first_stage.decode(z / self.latent_scale, out_size=out_size, coords=coords, cells=cells,
                                       lr=lr if self.first_stage.lr_skip else None, tile=tile)

    def to_diffusion(self, z0: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Scaled latent -> the variable the diffusion runs on: z0 itself, or (z0 - cond) x residual_scale."""
        return (z0 - cond) * self.residual_scale if self.residual else z0

    def from_diffusion(self, x0: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The inverse of to_diffusion: a sampled (or estimated) x_0 back to the scaled latent."""
        return cond + x0 / self.residual_scale if self.residual else x0

    def denoise(self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The UNet's raw prediction (eps or v), float32: z_t, cond (B, C, h, w), t (B,)."""
        return self.unet(torch.cat([z_t, cond], dim=1), t).float()  # (B, 2C, h, w) -> (B, C, h, w)

    def predict_eps(self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """eps whatever the parameterisation: the samplers' model."""
        out = self.denoise(z_t, t, cond)
        return out if self.parameterization == "eps" else self.schedule.predict_noise_from_v(z_t, t, out)

    # -- the latent scale ---------------------------------------------------------------------

    @torch.no_grad()
    def set_latent_scale(self, hr: torch.Tensor, lr: torch.Tensor) -> None:
        """latent_scale = 1 / std(E(hr)) so that the diffusion sees unit-variance latents; with
        `residual`, residual_scale = 1 / std of the scaled residual z_0 - cond, likewise."""
        z = self.first_stage.encode(hr).float()
        self.latent_scale.fill_(1.0 / z.flatten().std().item())
        rank_zero_info(f"latent scale set to {self.latent_scale.item():.6g} = 1 / std of the first batch's latents")
        if self.residual:
            cond = self.condition(lr, tuple(hr.shape[-2:]))
            residual = z * self.latent_scale - cond
            self.residual_scale.fill_(1.0 / residual.flatten().std().clamp_min(1e-6).item())
            rank_zero_info(f"residual scale set to {self.residual_scale.item():.6g} = 1 / std of its residuals")
        self.latent_scale_set.fill_(True)

    def on_train_start(self) -> None:
        # after any checkpoint restore: the flags now say what the weights really are
        if self.alignment and not self.ckpt_path:
            raise ConfigError(
                "model.params.ckpt_path: not set; alignment (stage 3) fine-tunes a trained stage-2 model. "
                "Pass its checkpoint, e.g. model.params.ckpt_path=logs/<stage2-run>/checkpoints/last.ckpt"
            )
        if not bool(self.first_stage_loaded):
            raise ConfigError(
                f"{FIRST_STAGE_CKPT_KEY}: not set; the LDM trains on a frozen, trained first stage. "
                f"Pass its checkpoint, e.g. {FIRST_STAGE_CKPT_KEY}=logs/<stage1-run>/checkpoints/last.ckpt"
            )
        if bool(self.latent_scale_set):
            rank_zero_info(f"latent scale {self.latent_scale.item():.6g} (stored; not recomputed)")

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        if not bool(self.latent_scale_set):
            self.set_latent_scale(batch["hr"], batch["lr"])

    # -- training -----------------------------------------------------------------------------

    def loss(self, batch: dict[str, Any], t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The stage's loss at timesteps t (B,) and noise (B, C, h, w); the input size is hr's."""
        hr, lr = batch["hr"], batch["lr"]
        size = tuple(hr.shape[-2:])
        if size[0] % self.input_multiple or size[1] % self.input_multiple:
            raise ValueError(f"hr size {size}: must be a multiple of {self.input_multiple} (f x UNet downsampling)")
        # the HR target and the condition through the frozen encoder in one pass: half the launches,
        # twice the batch (GroupNorm is per sample, so each latent is what a separate pass gives)
        z0, cond = self.encode(torch.cat([hr, upsample(lr, size, self.cond_upsample)])).chunk(2)  # (B, C, h, w) each
        x0 = self.to_diffusion(z0, cond)
        if not self.alignment:
            return self.latent_loss(x0, cond, t, noise)
        x_t = self.schedule.q_sample(x0, t, noise)
        out = self.denoise(x_t, t, cond)
        eps = out if self.parameterization == "eps" else self.schedule.predict_noise_from_v(x_t, t, out)
        z0_hat = self.from_diffusion(self.schedule.predict_start_from_noise(x_t, t, eps), cond)
        # gradients through the fixed decoder: sr (B, 1, H, W), or (B, q, 1) at q random HR pixels
        if self.align_sample_q:
            coords, cells, hr = sample_queries(hr, self.align_sample_q)
            sr = self.decode(z0_hat, None, lr, coords=coords, cells=cells)
        else:
            sr = self.decode(z0_hat, size, lr)
        weights = alignment_weights(self.schedule.alphas_cumprod[t], self.align_weight_max)
        return alignment_loss(z0_hat, z0, sr, hr, weights)

    def latent_loss(self, x0: torch.Tensor, cond: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Stage 2's loss: MSE of the UNet's eps (or v) at x_t = q_sample(x0, t, noise), x0 = to_diffusion(z0, cond).

        All of a stage-2 step but the frozen encoder; bench/training.py times it alone (stage 'unet').
        """
        out = self.denoise(self.schedule.q_sample(x0, t, noise), t, cond)
        target = noise if self.parameterization == "eps" else self.schedule.get_v(x0, noise, t)
        return F.mse_loss(out, target)

    def _latent_shape(self, hr: torch.Tensor) -> tuple[int, ...]:
        f = self.first_stage.downsample_factor
        return (hr.shape[0], self.unet.out_channels, hr.shape[-2] // f, hr.shape[-1] // f)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        hr = batch["hr"]
        t = torch.randint(0, self.schedule.num_timesteps, (hr.shape[0],), device=hr.device)
        noise = torch.randn(self._latent_shape(hr), device=hr.device)
        loss = self.loss(batch, t, noise)
        self.log("train/loss", loss, prog_bar=True, batch_size=hr.shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        hr, gt = batch["hr"], batch["gt"]
        # fixed t and noise per batch, so val/loss moves only with the weights
        generator = torch.Generator().manual_seed(batch_idx)
        t = torch.randint(0, self.schedule.num_timesteps, (hr.shape[0],), generator=generator).to(hr.device)
        noise = torch.randn(self._latent_shape(hr), generator=generator).to(hr.device)
        with self.ema_scope():
            loss = self.loss(batch, t, noise)
        sr = self.super_resolve(batch["lr"], tuple(gt.shape[-2:]), steps=self.sample_steps_val, seed=batch_idx)
        psnr = metrics.psnr(metrics.unit_to_01(sr), metrics.unit_to_01(gt)).mean()
        self.log("val/loss", loss, prog_bar=True, batch_size=hr.shape[0], sync_dist=True)
        self.log("val/psnr", psnr.item(), batch_size=hr.shape[0], sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # the first stage is frozen and the schedule has no parameters: only the denoiser learns
        return torch.optim.AdamW(self.unet.parameters(), lr=self.learning_rate)

    # -- sampling -----------------------------------------------------------------------------

    def sampling(
        self, sampler: str | None = None, steps: int | None = None, eta: float | None = None,
        tile: int | None = None,
    ) -> Sampling:
        """What super_resolve samples with for these arguments, None meaning the model's defaults
        (sampler, sample_steps, sample_eta, sample_tile); tile=0 denoises latents whole. eval_sr.py
        and sr.py record exactly this (Sampling.record)."""
        tile = self.sample_tile if tile is None else tile
        if tile is not None and tile < 0:
            raise ValueError(f"tile: expected >= 0 latent pixels (0: no tiles), got {tile}")
        multiple = self.unet.downsample_factor
        if tile:  # a tile is a whole number of the UNet's coarsest cells
            tile = max(multiple, tile // multiple * multiple)
        return Sampling.resolve(sampler or self.sampler, steps, eta, num_timesteps=self.schedule.num_timesteps,
                                default_steps=self.sample_steps, default_eta=self.sample_eta, tile=tile or None)

    @torch.no_grad()
    def super_resolve(
        self,
        lr: torch.Tensor,
        out_size: tuple[int, int],
        steps: int | None = None,
        eta: float | None = None,
        n_samples: int = 1,
        sampler: str | None = None,
        seed: int | Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        tile: int | None = None,
    ) -> torch.Tensor:
        """LR (B, 1, h, w) in [-1, 1] -> SR (B, n_samples, H, W) in [-1, 1], out_size = (H, W).

        The LR is upsampled to the model input size (model_input_size: the output size, at most
        max_input_scale x the LR, rounded up to `input_multiple`) and encoded as the condition.
        The UNet and the encoder are convolutional, so inputs larger than the training size (a
        512 x 512 clinical slice at x2 or x4 from 128 or 256 px LR) run on a larger latent; the
        implicit decoder then renders each sampled latent at exactly out_size.
        sampler: None (the model's `sampler`), "ddim" (steps default sample_steps, eta default
        sample_eta), "dpmpp_2m" (DPM-Solver++(2M), deterministic; steps default sample_steps) or
        "ddpm" (ancestral; steps None = all T). seed or a CPU generator makes the result repeatable on any device;
        a list of B seeds gives each image its own noise, so its result does not depend on the
        batch it was sampled in.
        tile: latent tile size in pixels (None: the model's sample_tile; 0: denoise whole).
        Uses the EMA weights when the model keeps an EMA.
        """
        out_hw = check_out_size(lr, out_size)
        sampling = self.sampling(sampler, steps, eta, tile)
        if n_samples < 1:
            raise ValueError(f"n_samples: expected >= 1, got {n_samples}")
        b, k = lr.shape[0], n_samples
        if generator is None and isinstance(seed, int):
            generator = torch.Generator().manual_seed(seed)
        elif generator is None and seed is not None:
            if len(seed) != b:
                raise ValueError(f"seed: expected one seed per image ({b}), got {len(seed)}")
            generator = [torch.Generator().manual_seed(int(s)) for s in seed]
        in_hw = model_input_size(tuple(lr.shape[-2:]), out_hw, self.max_input_scale, self.input_multiple)
        tile = sampling.tile or 0  # the UNet's tile bounds the first stage's too (0: all whole)
        cond = self.condition(lr, in_hw, tile).repeat_interleave(k, dim=0)  # (B K, C, h', w'), each image's K adjacent
        x_T = seeded_randn((b * k, self.unet.out_channels, *cond.shape[-2:]), generator, lr.device)
        with self.ema_scope():
            denoiser = tiled(self.predict_eps, sampling.tile, self.sample_tile_overlap, self.unet.downsample_factor)
            x0 = sampling.run(denoiser, x_T, self.schedule, extra_args={"cond": cond}, generator=generator,
                              disable=not progress)
        z0 = self.from_diffusion(x0, cond)
        z0 = z0.reshape(b, k, *z0.shape[1:])  # (B, K, C, h', w')
        # one decode per sample index bounds the decoder's memory at large out_size
        sr = [self.decode(z0[:, i], out_hw, lr, tile) for i in range(k)]
        return torch.cat(sr, dim=1).float()  # (B, K, H, W)

    @torch.no_grad()
    def log_images(self, batch: dict[str, Any], max_images: int | None = None) -> dict[str, torch.Tensor]:
        """Display-ordered images (B, 1, h, w) in [-1, 1]: LR, samples at the HR size and at 2x, HR."""
        lr, hr = batch["lr"][:max_images], batch["hr"][:max_images]
        size = tuple(hr.shape[-2:])
        double = (2 * size[0], 2 * size[1])
        return {
            "lr": lr,
            "sample": self.super_resolve(lr, size, steps=self.sample_steps_val, seed=0),
            "sample_x2": self.super_resolve(lr, double, steps=self.sample_steps_val, seed=0),
            "hr": hr,
        }
