"""The regression baseline: EDSR-baseline features of the LR slice + the LIIF query (Chen et al., CVPR 2021).

LR (B, 1, h, w) -> EDSR (B, n_feats, h, w) -> LIIF at any grid -> (B, 1, H, W).
Trained with LIIF's protocol: the data pipeline cuts 48 px LR patches at scale ~ U(1, 4)
(lr-fixed batches, gt = the HR patch) and the model regresses randomly sampled gt pixels with L1.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from ldm.metrics import validation_metrics
from ldm.models.base import EMAMixin, check_out_size, init_from_checkpoint
from ldm.modules.edsr import EDSR
from ldm.modules.implicit.coords import sample_queries
from ldm.modules.implicit.liif import LIIF, Reading


class LIIFBaseline(EMAMixin, pl.LightningModule):
    """encoder_config: EDSR params (n_resblocks, n_feats, res_scale); liif_config: LIIF params
    (feat_unfold defaults to True, as in LIIF); lr_skip: predict a correction to the LR's bicubic
    reading; sample_q: query pixels per training sample; lr_decay_steps / lr_decay_gamma: step
    decay of the learning rate by optimiser steps (None: constant); chunk_size: queries per MLP pass.
    """

    kind = "liif"

    def __init__(
        self,
        encoder_config: dict | None = None,
        liif_config: dict | None = None,
        lr_skip: bool = False,
        sample_q: int = 2304,
        lr_decay_steps: int | None = None,
        lr_decay_gamma: float = 0.5,
        use_ema: bool = False,
        ema_decay: float = 0.999,
        chunk_size: int | None = 65536,
        ckpt_path: str | None = None,
        monitor: str = "val/psnr",
    ) -> None:
        super().__init__()
        self.lr_skip = lr_skip
        self.sample_q = sample_q
        self.lr_decay_steps = lr_decay_steps
        self.lr_decay_gamma = lr_decay_gamma
        self.chunk_size = chunk_size
        self.monitor = monitor
        self.learning_rate = 1e-4
        self.encoder = EDSR(**(encoder_config or {}))
        liif_config = {"feat_unfold": True, **(liif_config or {})}
        self.liif = LIIF(self.encoder.out_dim, out_dim=1, zero_init_output=lr_skip, **liif_config)
        self.init_ema(use_ema, ema_decay)
        if ckpt_path:
            init_from_checkpoint(self, ckpt_path)

    def ema_target(self) -> torch.nn.Module:
        return self

    def query(self, lr: torch.Tensor, coords: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """LR (B, 1, h, w), coords and cells (B, N, 2) -> values (B, N, 1)."""
        return self.liif(self.encoder(lr), coords, cells, lr=lr if self.lr_skip else None, chunk_size=self.chunk_size)

    def reading(self, lr: torch.Tensor) -> Reading:
        """The SR of lr (B, 1, h, w) as a function of (coords, cells) (B, n, 2) -> (B, n, 1), its
        features computed once: what a first stage with this model as its regressor corrects."""
        return self.liif.reader(self.encoder(lr), lr=lr if self.lr_skip else None)

    @torch.no_grad()
    def super_resolve(
        self, lr: torch.Tensor, out_size: tuple[int, int], n_samples: int = 1, **ignored: object
    ) -> torch.Tensor:
        """LR (B, 1, h, w) -> SR (B, 1, *out_size); deterministic, so always one sample."""
        out_size = check_out_size(lr, out_size)
        skip = lr if self.lr_skip else None
        return self.liif.render(self.encoder(lr), out_size, lr=skip, chunk_size=self.chunk_size)

    def _loss(self, batch: dict) -> torch.Tensor:
        """L1 at sample_q gt pixels drawn independently for each sample."""
        coords, cells, values = sample_queries(batch["gt"], self.sample_q)  # (B, q, 2), (B, q, 2), (B, q, 1)
        return F.l1_loss(self.query(batch["lr"], coords, cells), values.float())

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["gt"].shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        lr, gt = batch["lr"], batch["gt"]
        with self.ema_scope():
            sr = self.super_resolve(lr, tuple(gt.shape[-2:]))
        self.log_dict(validation_metrics(sr, gt), batch_size=gt.shape[0], sync_dist=True)

    @torch.no_grad()
    def log_images(self, batch: dict, max_images: int | None = None) -> dict[str, torch.Tensor]:
        """(B, 1, h, w) images in [-1, 1], in display order: LR, SR at the gt size, gt."""
        lr, gt = batch["lr"][:max_images], batch["gt"][:max_images]
        with self.ema_scope():
            return {"lr": lr, "sr": self.super_resolve(lr, tuple(gt.shape[-2:])), "gt": gt}

    def configure_optimizers(self) -> torch.optim.Optimizer | dict:
        optimizer = torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=self.learning_rate)
        if self.lr_decay_steps is None:
            return optimizer
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=self.lr_decay_steps, gamma=self.lr_decay_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
