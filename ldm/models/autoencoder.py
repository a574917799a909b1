"""The first stage: a convolutional encoder and an implicit decoder that renders any output grid.

encode: slice (B, 1, H, W) -> latent (B, embed_dim, H/f, W/f)
decode: latent -> LatentDecoder features (B, out_ch, H/f, W/f) -> LIIF query -> (B, 1, Ho, Wo) for any Ho x Wo
Trained on L1 against the HR slice resized to an output size the data pipeline draws per batch
(Kim & Kim, CVPR 2024, stage 1). The latent diffusion model freezes it and calls encode/decode.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from ldm.metrics import psnr, unit_to_01, validation_metrics
from ldm.models.base import EMAMixin, check_out_size, init_from_checkpoint, model_input_size
from ldm.modules.diffusionmodules.model import Encoder, LatentDecoder
from ldm.modules.distributions import DiagonalGaussian
from ldm.modules.implicit.coords import sample_queries
from ldm.modules.implicit.liif import LIIF, Reading
from ldm.modules.losses import gradient_l1
from ldm.modules.resample import check_upsample_mode, upsample
from ldm.modules.tiles import blend_tiles
from ldm.util import ConfigError, instantiate_from_config

LATENTS = ("deterministic", "kl")
LOSSES = {"l1": F.l1_loss, "l2": F.mse_loss}
REGRESSOR_KEY = "model.params.regressor_config"


class ImplicitAutoencoder(EMAMixin, pl.LightningModule):
    """First stage with a deterministic or KL latent and a LIIF decoder.

    encoder_config: Encoder params (ch, ch_mult, num_res_blocks, z_channels[, dropout]);
    decoder_config: LatentDecoder params (ch, ch_mult, num_res_blocks, z_channels, out_ch[, dropout]);
    liif_config: LIIF params (hidden, feat_unfold). embed_dim: latent channels.
    regressor_config: target/params of a trained regression SR model (the LIIF baseline, with its
        params.ckpt_path): with lr_skip, the decoder corrects the regressor's SR of the LR instead
        of its bicubic reading. The regressor is frozen and saved with this model. None: bicubic
        (the paper has neither). See README, "Why the decoder learns".
    latent: "deterministic" (the paper) or "kl" (DiagonalGaussian, kl_weight as in latent diffusion).
    lr_skip: decode a correction to the bicubic reading of the LR (then decode needs lr).
    loss: "l1" (the paper) or "l2" on the output. The CT configs use l2 with lr_skip: in 300 steps
        of the demo's training, L1 moved the x4 reconstruction from the HR latent by +0.03 dB over
        bicubic and L2 by +1.9 dB (the L1 gradient is the residual's sign, as large on the
        float-rounding residual of air and flat tissue, where bicubic is exact, as on an edge).
    grad_loss_weight: weight of an L1 term on image gradients (0: plain L1, the paper).
    sr_fraction: the share of each training batch encoded from the upsampled LR instead of the HR
        (0: reconstruction only, the paper), so that the first stage alone super-resolves.
    sample_q: the loss on this many random output pixels per training image, not the whole grid
        (LIIF's protocol; an unbiased estimate of the same mean loss at a fraction of the decoder's
        and the regressor's cost). None: the whole grid (needed by grad_loss_weight).
    max_input_scale, cond_upsample: how super_resolve upsamples the LR before encoding.
    chunk_size: LIIF queries per MLP pass. ckpt_path: trained weights to start from.
    tile / tile_overlap: a latent larger than tile x tile pixels is encoded and decoded in
        overlapping tiles (ldm.modules.tiles; the mid blocks' attention is global), so a real-size
        slice runs in bounded memory; smaller ones, every training crop among them, run whole.
    """

    kind = "first_stage"

    def __init__(
        self,
        encoder_config: dict,
        decoder_config: dict,
        liif_config: dict | None = None,
        regressor_config: dict | None = None,
        embed_dim: int = 3,
        latent: str = "deterministic",
        kl_weight: float = 1e-6,
        lr_skip: bool = False,
        grad_loss_weight: float = 0.0,
        sr_fraction: float = 0.0,
        loss: str = "l1",
        sample_q: int | None = None,
        use_ema: bool = False,
        ema_decay: float = 0.999,
        max_input_scale: float = 8.0,
        chunk_size: int | None = 65536,
        ckpt_path: str | None = None,
        monitor: str = "val/psnr",
        cond_upsample: str = "bicubic",
        tile: int | None = 64,
        tile_overlap: int = 16,
    ) -> None:
        super().__init__()
        if latent not in LATENTS:
            raise ValueError(f"latent: expected one of {LATENTS}, got '{latent}'")
        check_upsample_mode(cond_upsample, "cond_upsample")
        self.embed_dim = embed_dim
        self.latent = latent
        self.kl_weight = kl_weight
        self.lr_skip = lr_skip
        self.grad_loss_weight = grad_loss_weight
        if not 0.0 <= sr_fraction <= 1.0:
            raise ValueError(f"sr_fraction: expected a value in [0, 1], got {sr_fraction}")
        self.sr_fraction = sr_fraction
        if loss not in LOSSES:
            raise ValueError(f"loss: expected one of {sorted(LOSSES)}, got '{loss}'")
        self.loss = loss
        if sample_q is not None and (sample_q < 1 or grad_loss_weight > 0):
            raise ValueError(f"sample_q: expected None or a positive count without grad_loss_weight, got {sample_q}")
        self.sample_q = sample_q
        self.max_input_scale = max_input_scale
        self.chunk_size = chunk_size
        self.monitor = monitor
        self.cond_upsample = cond_upsample
        if tile is not None and not 0 <= tile_overlap < tile:
            raise ValueError(f"tile_overlap: expected 0 <= tile_overlap < tile ({tile}), got {tile_overlap}")
        self.tile = tile
        self.tile_overlap = tile_overlap
        self.learning_rate = 1e-4
        self.encoder = Encoder(**encoder_config, embed_dim=embed_dim, double_z=latent == "kl")
        self.decoder = LatentDecoder(**decoder_config, embed_dim=embed_dim)
        # with lr_skip the decoder is told the LR's pixel size: it corrects a reading it cannot see
        liif_config = {"lr_cell": lr_skip, **(liif_config or {})}
        self.liif = LIIF(self.decoder.out_ch, out_dim=1, zero_init_output=lr_skip, **liif_config)
        # set True by loading the regressor's weights (here, or with any checkpoint of this model)
        self.register_buffer("regressor_loaded", torch.tensor(False))
        self.regressor = self._build_regressor(regressor_config) if regressor_config else None
        self.init_ema(use_ema, ema_decay)
        if ckpt_path:
            init_from_checkpoint(self, ckpt_path)

    def _build_regressor(self, config: dict) -> torch.nn.Module:
        if not self.lr_skip:
            raise ConfigError(f"{REGRESSOR_KEY}: needs lr_skip: true (the decoder corrects the regressor's SR)")
        regressor = instantiate_from_config(config, key=REGRESSOR_KEY)
        if not callable(getattr(regressor, "reading", None)):
            name = type(regressor).__name__
            raise ConfigError(f"{REGRESSOR_KEY}: {name} has no reading(lr) (the LIIF baseline has)")
        if isinstance(regressor, EMAMixin):
            regressor.init_ema(False)  # it runs on its averaged weights already; nothing to average
        self.regressor_loaded.fill_(bool((config.get("params") or {}).get("ckpt_path")))
        return regressor.eval().requires_grad_(False)

    def ema_target(self) -> torch.nn.Module:
        return self

    def train(self, mode: bool = True) -> ImplicitAutoencoder:
        """Lightning calls train() every epoch; the frozen regressor stays in eval mode."""
        super().train(mode)
        if self.regressor is not None:
            self.regressor.eval()
        return self

    def on_fit_start(self) -> None:
        if self.regressor is not None and not bool(self.regressor_loaded):
            key = f"{REGRESSOR_KEY}.params.ckpt_path"
            raise ConfigError(f"{key}: not set; the decoder corrects a trained regressor. "
                              f"Pass e.g. {key}=logs/<liif run>/checkpoints/last.ckpt")

    @property
    def downsample_factor(self) -> int:
        return self.encoder.downsample_factor

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, 1, H, W) -> z (B, embed_dim, H/f, W/f) and the per-sample KL (B,) of a KL latent."""
        moments = self.encoder(x)
        if self.latent == "deterministic":
            return moments, None
        posterior = DiagonalGaussian(moments)
        z = posterior.sample() if self.training else posterior.mode()
        return z, posterior.kl()

    def _tile(self, tile: int | None) -> int | None:
        """The tile to use: None asks for the configured one, 0 for none."""
        return self.tile if tile is None else (tile or None)

    def encode(self, x: torch.Tensor, tile: int | None = None) -> torch.Tensor:
        """Slice (B, 1, H, W) -> latent (B, embed_dim, H/f, W/f); a KL latent's mode in eval mode.

        A latent larger than the tile (latent pixels; None: `self.tile`, 0: never) is encoded from
        overlapping image tiles f times its size.
        """
        f = self.downsample_factor
        size = (x.shape[-2] // f, x.shape[-1] // f)
        return blend_tiles(lambda rows, cols: self._encode(x[..., rows.start * f: rows.stop * f,
                                                              cols.start * f: cols.stop * f])[0],
                           size, self._tile(tile), self.tile_overlap)

    def features(self, z: torch.Tensor, tile: int | None = None) -> torch.Tensor:
        """Latent (B, embed_dim, h, w) -> the LIIF's feature map (B, out_ch, h, w), tiled like encode."""
        return blend_tiles(lambda rows, cols: self.decoder(z[..., rows, cols]), tuple(z.shape[-2:]),
                           self._tile(tile), self.tile_overlap)

    def decode(
        self,
        z: torch.Tensor,
        out_size: tuple[int, int] | None = None,
        coords: torch.Tensor | None = None,
        cells: torch.Tensor | None = None,
        lr: torch.Tensor | None = None,
        tile: int | None = None,
    ) -> torch.Tensor:
        """Latent (B, embed_dim, h, w) -> image (B, 1, *out_size), or values (B, N, 1) at coords/cells (B, N, 2).

        lr (B, 1, h', w') is required with lr_skip and ignored without, so callers may always pass it.
        Differentiable in z (the alignment stage trains through the frozen decoder).
        """
        if self.lr_skip and lr is None:
            raise ValueError("decode: this first stage has lr_skip (it decodes a correction to the LR); pass lr=")
        skip = lr if self.lr_skip else None
        reading = self._regressor_reading(lr) if self.regressor is not None else None
        if (out_size is None) == (coords is None) or (coords is None) != (cells is None):
            raise ValueError("decode: give either out_size, or both coords and cells")
        feat = self.features(z, tile)  # (B, out_ch, h, w)
        if out_size is not None:
            return self.liif.render(feat, out_size, lr=skip, chunk_size=self.chunk_size, reading=reading)
        return self.liif(feat, coords, cells, lr=skip, chunk_size=self.chunk_size, reading=reading)

    def _regressor_reading(self, lr: torch.Tensor) -> Reading:
        """The frozen regressor's SR of lr at any query points (its LR features computed once, no gradient)."""
        with torch.no_grad():
            read = self.regressor.reading(lr)

        def reading(coords: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return read(coords, cells)

        return reading

    @torch.no_grad()
    def super_resolve(
        self, lr: torch.Tensor, out_size: tuple[int, int], n_samples: int = 1, **ignored: object
    ) -> torch.Tensor:
        """LR (B, 1, h, w) -> SR (B, 1, *out_size): upsample, encode, decode at the output size.

        Deterministic: always one sample (n_samples is accepted for the common interface).
        """
        out_size = check_out_size(lr, out_size)
        size = model_input_size(tuple(lr.shape[-2:]), out_size, self.max_input_scale, self.downsample_factor)
        x = upsample(lr, size, self.cond_upsample)
        return self.decode(self.encode(x), out_size, lr=lr)

    def _losses(self, batch: dict) -> dict[str, torch.Tensor]:
        gt, x = batch["gt"], batch["hr"]
        n_sr = round(self.sr_fraction * x.shape[0])
        if n_sr:
            up = upsample(batch["lr"][:n_sr], tuple(x.shape[-2:]), self.cond_upsample)
            x = torch.cat([up.to(x.dtype), x[n_sr:]])
        z, kl = self._encode(x)
        if self.sample_q:
            coords, cells, gt = sample_queries(gt, self.sample_q)  # gt values (B, q, 1)
            pred = self.decode(z, coords=coords, cells=cells, lr=batch["lr"])
        else:
            pred = self.decode(z, tuple(gt.shape[-2:]), lr=batch["lr"])
        rec = LOSSES[self.loss](pred.float(), gt.float())
        losses = {"loss": rec, self.loss: rec}
        if self.grad_loss_weight > 0:
            losses["grad"] = gradient_l1(pred.float(), gt.float())
            losses["loss"] = losses["loss"] + self.grad_loss_weight * losses["grad"]
        if kl is not None:
            losses["kl"] = kl.mean()
            # per-pixel, like the mean L1: latent diffusion's weights balance sums over an image
            losses["loss"] = losses["loss"] + self.kl_weight * losses["kl"] / batch["gt"][0].numel()
        return losses

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses = self._losses(batch)
        b = batch["gt"].shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=b)
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"}, batch_size=b)
        return losses["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        hr, lr, gt = batch["hr"], batch["lr"], batch["gt"]
        with self.ema_scope():
            pred = self.decode(self.encode(hr), tuple(gt.shape[-2:]), lr=lr)
            sr = self.super_resolve(lr, tuple(hr.shape[-2:]))
        metrics = validation_metrics(pred, gt)
        metrics["val/sr_psnr"] = psnr(unit_to_01(sr), unit_to_01(hr)).mean().item()
        self.log_dict(metrics, batch_size=hr.shape[0], sync_dist=True)

    @torch.no_grad()
    def log_images(self, batch: dict, max_images: int | None = None) -> dict[str, torch.Tensor]:
        """(B, 1, h, w) images in [-1, 1], in display order: the LR, the first stage's own SR of it,
        the reconstruction at HR size and at twice that, and the HR."""
        hr, lr = batch["hr"][:max_images], batch["lr"][:max_images]
        size = tuple(hr.shape[-2:])
        with self.ema_scope():
            z = self.encode(hr)
            return {
                "lr": lr,
                "sr": self.super_resolve(lr, size),
                "recon": self.decode(z, size, lr=lr),
                "recon_x2": self.decode(z, (2 * size[0], 2 * size[1]), lr=lr),
                "hr": hr,
            }

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.learning_rate)
