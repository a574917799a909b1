"""Arbitrary-scale CT super-resolution with a latent diffusion model and an implicit neural decoder."""
