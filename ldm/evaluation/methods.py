"""The super-resolvers an evaluation compares, behind one call: LR batch -> (B, K, H, W) on the CPU.

Baselines are super-resolvers too (bicubic through the same float resampling the data pipeline
uses, Lanczos through PIL on float32 images), so every method sees the same LR tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from ldm.data.degradation import upsample
from ldm.data.intensity import Window, hu_window, unit_to_hu
from ldm.models.base import SuperResolver, check_out_size
from ldm.precision import autocast


class BicubicBaseline:
    """Bicubic interpolation of the LR (PyTorch, float, align_corners=False)."""

    kind = "bicubic"

    def super_resolve(self, lr: torch.Tensor, out_size: tuple[int, int], **sampling: object) -> torch.Tensor:
        return upsample(lr, check_out_size(lr, out_size), mode="bicubic")


class LanczosBaseline:
    """Lanczos-3 interpolation of the LR (PIL on 32-bit float images: no 8-bit rounding)."""

    kind = "lanczos"

    def super_resolve(self, lr: torch.Tensor, out_size: tuple[int, int], **sampling: object) -> torch.Tensor:
        h, w = check_out_size(lr, out_size)
        images = lr.detach().float().cpu().numpy()[:, 0]
        # a float32 array becomes a mode 'F' image: PIL resamples it in float, never through 8 bits
        floats = [Image.fromarray(np.ascontiguousarray(x, dtype=np.float32)) for x in images]
        out = [np.asarray(im.resize((w, h), Image.Resampling.LANCZOS)) for im in floats]
        return torch.from_numpy(np.stack(out))[:, None].to(lr.device)


class Rewindowed:
    """A model trained with another HU window, run on the evaluation's LR and scored in its window.

    LR goes through HU into the model's window and SR comes back the same way, so a run
    trained on [-1000, 400] and one trained on the full range are compared on the same pairs.
    """

    def __init__(self, model: SuperResolver, model_window: Window, eval_window: Window) -> None:
        self.model = model
        self.kind = model.kind
        self.model_window = model_window
        self.eval_window = eval_window

    def super_resolve(self, lr: torch.Tensor, out_size: tuple[int, int], **sampling: object) -> torch.Tensor:
        lr_hu = unit_to_hu(lr.detach().float().cpu().numpy(), self.eval_window)
        lr_model = torch.from_numpy(hu_window(lr_hu, self.model_window)).to(lr.device)
        sr = self.model.super_resolve(lr_model, out_size, **sampling)
        sr_hu = unit_to_hu(sr.detach().float().cpu().numpy(), self.model_window)
        return torch.from_numpy(hu_window(sr_hu, self.eval_window)).to(lr.device)


@dataclass
class Method:
    """One column of the comparison.

    sampling: keyword arguments of super_resolve (steps, eta, n_samples for an LDM).
    seeded: pass each image's seed (stochastic samplers), so a result does not depend on the batch.
    info: provenance written to metrics.json (kind, log dir, checkpoint sha256 ...).
    precision: "fp32" or "bf16" for the trained models; the interpolation baselines stay fp32.
    """

    name: str
    resolver: SuperResolver
    kind: str
    sampling: dict[str, Any] = field(default_factory=dict)
    seeded: bool = False
    device: str | torch.device = "cpu"
    info: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"  # ldm.precision: bf16 runs the model under autocast

    @torch.no_grad()
    def __call__(self, lr: torch.Tensor, out_size: tuple[int, int], seeds: Sequence[int]) -> torch.Tensor:
        """LR (B, 1, h, w) -> SR samples (B, K, H, W), float32 on the CPU."""
        kwargs = dict(self.sampling)
        if self.seeded:
            kwargs["seed"] = [int(s) for s in seeds]
        with autocast(self.device, self.precision):
            sr = self.resolver.super_resolve(lr.to(self.device), out_size, **kwargs)
        expected = (lr.shape[0], *out_size)
        if sr.ndim != 4 or (sr.shape[0], *sr.shape[-2:]) != expected:
            raise RuntimeError(
                f"{self.name}: super_resolve returned shape {tuple(sr.shape)}, expected (B, K, H, W) = "
                f"({expected[0]}, K, {expected[1]}, {expected[2]})"
            )
        return sr.detach().float().cpu()


def baselines() -> list[Method]:
    return [Method("bicubic", BicubicBaseline(), "bicubic"), Method("lanczos", LanczosBaseline(), "lanczos")]
