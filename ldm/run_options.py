"""The flags eval_sr.py and sr.py share for running trained models: sampler, data consistency,
compilation and precision; added and checked in one place so the two scripts cannot drift apart."""

from __future__ import annotations

import argparse

import torch

from ldm.models.diffusion.samplers import SAMPLERS, sampler_function
from ldm.precision import PRECISIONS, check_precision


def add_model_run_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, degradation: str) -> None:
    """--sampler, --tile N, --back_projection N, --compile, --precision; `degradation` names the D that
    back-projection goes through (the protocol's in eval_sr.py, the run's training one in sr.py)."""
    parser.add_argument("--sampler", default=None, metavar="{" + ",".join(sorted(SAMPLERS)) + "}",
                        help="LDM sampler: ddim, dpmpp_2m (DPM-Solver++(2M): deterministic, fewer steps) or ddpm "
                             "(default: the model's)")
    parser.add_argument("--tile", type=int, default=None, metavar="N",
                        help="LDM: encode, denoise and decode latents larger than N x N latent pixels in overlapping "
                             "tiles, which bounds memory at any output size (default: the model's sample_tile, 64; "
                             "0: never tile)")
    parser.add_argument("--back_projection", type=int, default=0, metavar="N",
                        help=f"N steps of back-projection of each trained model's SR onto its LR through {degradation}"
                             ", so it does not contradict its input (data consistency; default 0: off)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the trained models' hot parts (UNet, encoder, decoder, LIIF query); "
                             "falls back to eager with a warning where compilation fails")
    parser.add_argument("--precision", default="fp32", metavar="{" + ",".join(PRECISIONS) + "}",
                        help="bf16: the trained models under bfloat16 autocast (faster on a GPU; default fp32)")


def check_model_run_options(args: argparse.Namespace) -> None:
    """ValueError naming the flag for a bad --sampler, --back_projection, --device or --precision."""
    if args.back_projection < 0:
        raise ValueError(f"--back_projection: must be >= 0, got {args.back_projection}")
    if args.tile is not None and args.tile < 0:
        raise ValueError(f"--tile: must be >= 0 latent pixels (0: never tile), got {args.tile}")
    if args.sampler is not None:
        sampler_function(args.sampler, "--sampler")
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise ValueError(f"--device: {err}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device: CUDA is not available here (use --device cpu)")
    check_precision(args.precision, device)
