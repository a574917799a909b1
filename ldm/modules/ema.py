"""Exponential moving average of a module's parameters, saved with the model's state_dict."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class EMA(nn.Module):
    """Shadow copies of `model`'s trainable parameters, kept as buffers so checkpoints carry them.

    decay warms up as min(decay, (1 + n) / (10 + n)) so that early averages do not hold on to
    the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay: expected 0 < decay < 1, got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.register_buffer("num_updates", torch.tensor(0, dtype=torch.long))
        params = dict(model.named_parameters())
        for i, name in enumerate(self.names):
            self.register_buffer(f"shadow_{i}", params[name].detach().clone().float())

    def shadows(self) -> list[torch.Tensor]:
        return [getattr(self, f"shadow_{i}") for i in range(len(self.names))]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        n = float(self.num_updates)
        decay = min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay
        params = dict(model.named_parameters())
        current = [params[name].detach().float() for name in self.names]
        shadows = self.shadows()
        torch._foreach_lerp_(shadows, current, 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        for name, shadow in zip(self.names, self.shadows(), strict=True):
            params[name].copy_(shadow.to(params[name].dtype))

    @contextlib.contextmanager
    def average_parameters(self, model: nn.Module) -> Iterator[None]:
        """Swap the EMA weights into `model` for the block, then restore the trained ones."""
        params = dict(model.named_parameters())
        stored = [params[name].detach().clone() for name in self.names]
        self.copy_to(model)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, value in zip(self.names, stored, strict=True):
                    params[name].copy_(value)
