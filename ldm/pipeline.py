"""Running a trained model: the one place eval_sr.py and sr.py share, read in this order.

flags   --sampler, --tile, --back_projection, --compile, --precision: added and checked here, so the
        two scripts cannot drift apart
build   a run loaded as the flags ask (EMA or trained weights, --trust_checkpoint, --device) made into
        a Pipeline: its hot parts compiled (--compile), re-windowed when it runs in another HU window
        than it was trained in, back-projected onto its LR (--back_projection), with the sampler
        flags and what they resolve to (LatentDiffusionSR.sampling(...).record(), for the JSON)
run     one LR batch under autocast (--precision), each slice with its own seed, so that a result
        does not depend on the batch; a batch that runs out of memory is redone one slice at a time,
        with the same outputs

Data consistency (--back_projection N): BackProjected corrects an SR until its degradation matches
the LR it came from (ldm.data.degradation.back_project). A diffusion sample keeps the detail it drew
where the degradation cannot see it, but no longer contradicts the input where it can: the
LR-consistency of the protocol goes from the model's own to 80+ dB. Off by default: it changes the
method, and a paper reports which one it ran.
"""

from __future__ import annotations

import argparse
import os
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ldm.compile import compile_parts, hot_parts
from ldm.data.degradation import DEGRADATIONS, back_project
from ldm.data.intensity import Window, hu_window, unit_to_hu
from ldm.experiment import Experiment, load_experiment
from ldm.models.base import SuperResolver
from ldm.models.diffusion.samplers import SAMPLERS, Sampling, sampler_function
from ldm.precision import PRECISIONS, autocast, check_precision
from ldm.util import first_line, is_out_of_memory

# super_resolve keywords an LDM takes from the command line; one not given is the model's default
SAMPLER_FLAGS = ("sampler", "steps", "eta", "tile")

# ---- flags -------------------------------------------------------------------------------------


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


# ---- what a run may be wrapped in --------------------------------------------------------------


class Rewindowed:
    """A model trained with another HU window, run on LR in `window` and answering in it.

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


def image_seed(seed: int, name: str) -> int:
    """A stable 32-bit seed per image (crc32 of the run seed and the slice's relative path): the
    seed of its sampling noise in eval_sr.py and sr.py, and of its LR noise in the evaluation.

    Python's hash() is salted per process, so it would not reproduce across runs.
    """
    return zlib.crc32(f"{seed}:{name}".encode())


# ---- build -------------------------------------------------------------------------------------

Result = tuple[torch.Tensor, torch.Tensor | None]  # per slice: SR mean (H, W), std of the samples (H, W) or None


@dataclass
class Pipeline:
    """A super-resolver made ready to run: wrapped as the flags ask, on its device, in its precision.

    options: the sampler flags given (super_resolve keywords; one not given is the model's default).
    sampling: what they resolve to for a sampling model (an LDM), None for a deterministic one.
    back_projection: BackProjected.describe() when it is back-projected, else None.
    The interpolation baselines run as pipelines too: CPU, fp32, nothing to sample.
    """

    resolver: SuperResolver
    device: str | torch.device = "cpu"
    precision: str = "fp32"  # ldm.precision: bf16 runs the model under autocast
    options: dict[str, Any] = field(default_factory=dict)
    sampling: Sampling | None = None
    back_projection: dict[str, object] | None = None

    @property
    def sampled(self) -> bool:
        """Stochastic: --n_samples applies and each slice draws its noise from its own seed."""
        return self.sampling is not None

    def record(self, n_samples: int) -> dict[str, Any]:
        """What it samples with, defaults resolved, and the sample count (for metrics.json and
        sr_run.json); {} for a deterministic model."""
        if self.sampling is None:
            return {}
        return {**self.sampling.record(), "n_samples": n_samples}

    @torch.no_grad()
    def super_resolve(
        self, lr: torch.Tensor, out_size: tuple[int, int], seeds: Sequence[int], n_samples: int = 1
    ) -> torch.Tensor:
        """LR (B, 1, h, w) in [-1, 1] -> samples (B, K, H, W), float32 on the CPU (K = n_samples when
        sampled, else the model's one). A sampled model draws slice i's noise from seeds[i]."""
        keywords = dict(self.options)
        if self.sampled:
            keywords.update(n_samples=n_samples, seed=[int(s) for s in seeds])
        with autocast(self.device, self.precision):
            sr = self.resolver.super_resolve(lr.to(self.device), out_size, **keywords)
        return sr.detach().float().cpu()

    def super_resolve_each(
        self,
        lr: torch.Tensor,
        out_size: tuple[int, int],
        seeds: Sequence[int],
        names: Sequence[str],
        n_samples: int,
        failed: list[str],
    ) -> list[Result | None]:
        """One batch as super_resolve, reduced per slice to (SR mean, std of its samples or None),
        or None where it failed, with a line in `failed` naming the slices: an error of the input
        (ValueError, e.g. an output size the model refuses) fails the batch, and the caller goes
        on. A batch that runs out of memory is redone one slice at a time; each slice keeps its
        seed, so the outputs are the same."""
        label = names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]} ({len(names)} slices)"
        try:
            samples = self.super_resolve(lr, out_size, seeds, n_samples)
        except ValueError as err:
            failed.append(f"{label}: {first_line(err)}")
            return [None] * len(names)
        except RuntimeError as err:
            if not is_out_of_memory(err):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(names) > 1:
                print(f"note: out of memory for {label}; retrying them one at a time", file=sys.stderr)
                return [result for i in range(len(names)) for result in self.super_resolve_each(
                    lr[i : i + 1], out_size, seeds[i : i + 1], names[i : i + 1], n_samples, failed)]
            failed.append(f"{label}: out of memory ({first_line(err)}); lower --tile (LDM latent tiles), "
                          f"--n_samples or the output size, or run on a device with more memory")
            return [None]
        stds = samples.std(dim=1, correction=0) if samples.shape[1] > 1 else [None] * len(names)
        return list(zip(samples.mean(dim=1), stds, strict=True))


def load_run(args: argparse.Namespace, logdir: str | os.PathLike[str], ckpt: str | None = None) -> Experiment:
    """A run loaded as the flags ask: its EMA weights unless --no_ema, --trust_checkpoint, on --device."""
    return load_experiment(logdir, ckpt, use_ema=not args.no_ema, trust_checkpoint=args.trust_checkpoint,
                           device=args.device)


def build(args: argparse.Namespace, run: Experiment, degradation: str, window: Window | None = None) -> Pipeline:
    """`run` as the flags ask: compiled (--compile), answering in `window` when that is not the window
    it was trained in, back-projected through `degradation` (--back_projection N), with the sampler
    flags when it is an LDM."""
    resolver: SuperResolver = run.model
    if args.compile:
        compile_parts(hot_parts(run.model))
    if window is not None and window != run.hu_window:
        resolver = Rewindowed(run.model, run.hu_window, window)
    back_projection = None
    if args.back_projection:
        resolver = BackProjected(resolver, degradation, args.back_projection)
        back_projection = resolver.describe()
    if run.kind != "ldm":  # deterministic models take no sampler keywords
        return Pipeline(resolver, args.device, args.precision, back_projection=back_projection)
    options = {k: getattr(args, k) for k in SAMPLER_FLAGS if getattr(args, k) is not None}
    sampling = run.model.sampling(args.sampler, args.steps, args.eta, args.tile)
    return Pipeline(resolver, args.device, args.precision, options, sampling, back_projection)
