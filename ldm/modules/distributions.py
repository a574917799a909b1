"""The diagonal Gaussian posterior of a KL-regularised latent (latent-diffusion's AutoencoderKL)."""

from __future__ import annotations

import torch


class DiagonalGaussian:
    """N(mean, exp(logvar)) per latent element, from (B, 2C, h, w) encoder moments."""

    def __init__(self, moments: torch.Tensor) -> None:
        # float32 even under bf16 autocast: the KL sums thousands of terms
        self.mean, logvar = moments.float().chunk(2, dim=1)  # (B, C, h, w) each
        # the clamp keeps exp() finite in early training, as in latent diffusion
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self) -> torch.Tensor:
        return self.mean + self.std * torch.randn_like(self.mean)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) summed over each sample's latent: (B,)."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).sum(dim=(1, 2, 3))
