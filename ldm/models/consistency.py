"""Data consistency at inference: any super-resolver's output back-projected onto its LR input.

eval_sr.py and sr.py --back_projection N wrap the trained models in BackProjected, so an SR is
corrected until its degradation matches the LR it came from (ldm.data.degradation.back_project).
A diffusion sample keeps the detail it drew where the degradation cannot see it, but no longer
contradicts the input where it can: the LR-consistency of the protocol goes from the model's own
to 80+ dB. Off by default: it changes the method, and a paper reports which one it ran.
"""

from __future__ import annotations

import torch

from ldm.data.degradation import DEGRADATIONS, back_project
from ldm.models.base import SuperResolver


class BackProjected:
    """resolver.super_resolve, then `iterations` back-projection steps per sample onto the LR.

    degradation: the LR's degradation model ("bicubic" or "ct", without noise): the protocol's in
    eval_sr.py, the run's training degradation in sr.py.
    """

    def __init__(self, resolver: SuperResolver, degradation: str, iterations: int) -> None:
        if degradation not in DEGRADATIONS:
            raise ValueError(f"back-projection degradation: expected one of {DEGRADATIONS}, got '{degradation}'")
        if iterations < 1:
            raise ValueError(f"--back_projection: must be >= 1 iterations to wrap a model, got {iterations}")
        self.resolver = resolver
        self.kind = resolver.kind
        self.degradation = degradation
        self.iterations = iterations

    def super_resolve(self, lr: torch.Tensor, out_size: tuple[int, int], **sampling: object) -> torch.Tensor:
        sr = self.resolver.super_resolve(lr, out_size, **sampling)  # (B, K, H, W): K samples as channels
        lr_k = lr.to(sr.device).expand(-1, sr.shape[1], -1, -1)
        return back_project(sr, lr_k, self.degradation, self.iterations)

    def describe(self) -> dict[str, object]:
        return {"iterations": self.iterations, "degradation": self.degradation}
