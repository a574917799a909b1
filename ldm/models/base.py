"""What every super-resolver shares: the `super_resolve` entry point and the input-size rule.

eval_sr.py, sr.py, the demo and bench/ call only `super_resolve(lr, out_size, **sampling)`
and read `kind`; nothing outside a model knows its internals.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from typing import Protocol

import torch
from torch import nn

from ldm.checkpoint import load_checkpoint, load_weights, state_dict_of
from ldm.modules.ema import EMA


class SuperResolver(Protocol):
    kind: str  # "first_stage", "liif" or "ldm"

    def super_resolve(
        self, lr: torch.Tensor, out_size: tuple[int, int], **sampling: object
    ) -> torch.Tensor:
        """LR (B, 1, h, w) in [-1, 1] -> SR (B, 1, *out_size) in [-1, 1]."""
        ...


def check_out_size(lr: torch.Tensor, out_size: tuple[int, int]) -> tuple[int, int]:
    if lr.ndim != 4 or lr.shape[1] != 1:
        raise ValueError(f"lr: expected a (B, 1, h, w) tensor, got shape {tuple(lr.shape)}")
    h, w = (int(v) for v in out_size)
    if h <= 0 or w <= 0:
        raise ValueError(f"out_size: must be positive, got {(h, w)}")
    return h, w


def model_input_size(
    lr_hw: tuple[int, int], out_hw: tuple[int, int], max_input_scale: float, multiple: int
) -> tuple[int, int]:
    """The size the LR is upsampled to before the encoder (and so the latent size x f).

    It follows the output size, so a 512 px clinical slice runs on a larger latent, but never
    exceeds max_input_scale x the LR size: past that the latent stays put and the implicit
    decoder does the rest of the scaling (the paper's latent is tied to the training size).
    Rounded up to `multiple` (the encoder's f times the denoiser's own downsampling).
    """
    size = []
    for lr_n, out_n in zip(lr_hw, out_hw, strict=True):
        n = min(out_n, lr_n * max_input_scale)
        size.append(max(multiple, math.ceil(n / multiple) * multiple))
    return size[0], size[1]


class EMAMixin:
    """EMA bookkeeping shared by the trainable models (mix in before pl.LightningModule).

    A model calls `init_ema(use_ema, decay)` after building the module whose weights are
    averaged (`ema_target()`); validation, sampling and evaluation run inside `ema_scope()`.
    """

    ema: EMA | None

    def ema_target(self) -> nn.Module:
        raise NotImplementedError

    def init_ema(self, use_ema: bool, decay: float = 0.9999) -> None:
        self.ema = EMA(self.ema_target(), decay) if use_ema else None

    @contextlib.contextmanager
    def ema_scope(self) -> Iterator[None]:
        if self.ema is None:
            yield
            return
        with self.ema.average_parameters(self.ema_target()):
            yield

    def use_ema_weights(self) -> None:
        """Copy the EMA weights into the model for good (evaluation, export)."""
        if self.ema is not None:
            self.ema.copy_to(self.ema_target())

    def on_train_batch_end(self, *args: object, **kwargs: object) -> None:
        if self.ema is not None:
            self.ema.update(self.ema_target())


def init_from_checkpoint(model: EMAMixin, path: str | os.PathLike[str]) -> None:
    """Load a trained model's weights (weights_only) and run on their EMA average when it has one.

    A model built without EMA ignores the checkpoint's EMA buffers and takes the trained weights.
    """
    state = state_dict_of(load_checkpoint(path))
    ignore = ("ema.",) if model.ema is None else ()
    load_weights(model, state, source=str(path), ignore_prefixes=ignore)
    model.use_ema_weights()
