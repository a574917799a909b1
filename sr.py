"""Super-resolve your own CT slices and volumes with a trained run, at any scale.

    python sr.py --exp logs/<run> --input scan.png --scale 4 --out sr/
    python sr.py --exp logs/<ldm> --input series/ --scale 2.5 --steps 50 --n_samples 8 --out sr/
    python sr.py --exp logs/<run> --input case7.nii.gz --out_size 512 512 --out sr/

The input slice IS the LR: the SR is round(h*S) x round(w*S) (or --out_size H W). Inputs: PNG
(16-bit HU+1024 or 8-bit), DICOM (HU via RescaleSlope/Intercept), NIfTI/Analyze/NRRD volumes, a
folder holding a DICOM series, or a folder of them (sub-folders are mirrored under --out).
A PNG or a single DICOM slice gives a PNG of the same name: 16-bit HU+1024, or 8-bit when the
input was 8-bit. A volume or DICOM series gives one volume, <name>.nii.gz (--format nifti, the
default): int16 HU, its slices super-resolved in order, with the input's voxel axes, direction
cosines and field of view: in-plane spacing x in/out size, the first voxel centre moved by
(new - old spacing)/2 along each in-plane axis, the through-plane axis unchanged, so the SR
overlays the input in a viewer. --format png writes its slices as <name>_slice_<NNN>.png instead.
With --n_samples K > 1 (LDM runs) the SR is the mean of K samples and <name>_std.png /
<name>_std.nii.gz holds the per-pixel standard deviation in HU (16-bit PNG: pixel value = std
in HU, 8-bit levels for 8-bit input; NIfTI: float32 HU). Existing files of the same name in --out
are replaced, each written whole or not at all. A file that cannot be read is reported in one
line and skipped; the exit code is 1 if any failed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ldm.checkpoint import CheckpointMismatchError, UnsafeCheckpointError
from ldm.data.intensity import from_model_range
from ldm.data.volumes import hu_to_int16, resampled, write_nifti
from ldm.evaluation.protocol import image_seed
from ldm.evaluation.report import write_sr, write_std
from ldm.experiment import Experiment, ExperimentError
from ldm.inference import InputSlice, InputVolume, find_inputs, lr_batch, output_size, read_input
from ldm.pipeline import Pipeline, Result, add_model_run_options, build, check_model_run_options, load_run
from ldm.util import ConfigError, first_line, run_record, write_json_atomic

VOLUME_FORMATS = ("nifti", "png")
NIFTI_SUFFIX = ".nii.gz"
SETUP_ERRORS = (ExperimentError, ConfigError, CheckpointMismatchError, UnsafeCheckpointError, ValueError,
                RuntimeError, FileNotFoundError)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", required=True, help="log dir of a trained run (first stage, LIIF or LDM)")
    p.add_argument("--ckpt", default=None, help="checkpoint in the run (default: checkpoints/last.ckpt)")
    p.add_argument("--input", required=True,
                   help="PNG, DICOM, NIfTI/Analyze/NRRD volume, a DICOM series folder, or a folder of them")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", choices=VOLUME_FORMATS, default="nifti",
                   help="output of a volume: nifti (one <name>.nii.gz, int16 HU, the input's geometry; default) "
                        "or png (its slices as <name>_slice_<NNN>.png). Slice inputs always give PNGs")
    p.add_argument("--scale", type=float, default=None, help="scale S > 1: SR = round(h*S) x round(w*S)")
    p.add_argument("--out_size", type=int, nargs=2, default=None, metavar=("H", "W"), help="SR size instead")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (LDM; default: the model's)")
    p.add_argument("--eta", type=float, default=None, help="DDIM eta (LDM; default: the model's)")
    p.add_argument("--n_samples", type=int, default=1, help="K LDM samples: SR = their mean, plus a std map")
    p.add_argument("--seed", type=int, default=23, help="each slice derives its own seed from it and its name")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch_size", type=int, default=1,
                   help="slices of one size per forward pass (a volume's slices; faster on a GPU). Each slice "
                        "keeps its own seed, so the output does not depend on it")
    p.add_argument("--no_ema", action="store_true", help="use the trained weights, not their EMA")
    p.add_argument("--trust_checkpoint", action="store_true",
                   help="allow checkpoints that need arbitrary unpickling (only from a trusted source)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    add_model_run_options(p, "the run's training degradation (data.params.degradation)")
    return p


def check_args(args: argparse.Namespace) -> None:
    if args.scale is None and args.out_size is None:
        raise ValueError("give --scale S or --out_size H W")
    if args.scale is not None and args.out_size is not None:
        raise ValueError("give --scale or --out_size, not both")
    if args.scale is not None and not args.scale > 1:
        raise ValueError(f"--scale: must be > 1 (super-resolution), got {args.scale:g}")
    if args.out_size is not None and min(args.out_size) < 1:
        raise ValueError(f"--out_size: must be positive, got {args.out_size}")
    for name in ("n_samples", "steps", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name}: must be >= 1, got {value}")
    check_model_run_options(args)


SliceRunner = Callable[[list[InputSlice], tuple[int, int], list[str]], list[Result | None]]


def slice_runner(pipeline: Pipeline, exp: Experiment, args: argparse.Namespace) -> SliceRunner:
    """run(items, size, failed): slices of one shape and kind in one forward pass, each with the
    seed of its name -> per slice its Result, or None where it failed (a line added to failed)."""

    def run(items: list[InputSlice], size: tuple[int, int], failed: list[str]) -> list[Result | None]:
        seeds = [image_seed(args.seed, item.name) for item in items]
        return pipeline.super_resolve_each(lr_batch(items, exp.hu_window), size, seeds,
                                           [item.name for item in items], args.n_samples, failed)

    return run


def std_in_hu(std: torch.Tensor, hu_window: tuple[float, float]) -> np.ndarray:
    """A sample std in model units ([-1, 1] over the window) -> HU: the window's half-width per unit."""
    return std.numpy().astype(np.float32) * np.float32((hu_window[1] - hu_window[0]) / 2.0)


def super_resolve_volume(run: SliceRunner, item: InputVolume, size: tuple[int, int], args: argparse.Namespace,
                         failed: list[str], sink: Callable[[int, InputSlice, Result], None]) -> bool:
    """A volume's slices in order, in batches of --batch_size under one progress bar, each handed to
    sink(index, slice, result); False as soon as a slice failed (its line in failed)."""
    slices = item.slices()
    with tqdm(total=len(slices), unit="slice", desc=item.name, disable=args.no_progress) as bar:
        for start in range(0, len(slices), args.batch_size):
            batch = slices[start:start + args.batch_size]
            for index, (one, result) in enumerate(zip(batch, run(batch, size, failed), strict=True), start):
                if result is None:
                    return False
                sink(index, one, result)
            bar.update(len(batch))
    return True


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = get_parser().parse_args(argv)
    try:
        check_args(args)
        inputs = find_inputs(args.input)
        exp = load_run(args, args.exp, args.ckpt)
    except SETUP_ERRORS as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    pipeline = build(args, exp, str(exp.data_params.get("degradation", "bicubic")))
    if args.n_samples > 1 and not pipeline.sampled:
        print(f"note: {exp.kind} runs are deterministic; --n_samples ignored")
    print(f"kind: {exp.kind} ({exp.logdir}), {len(inputs)} input(s) -> {out}")

    run = slice_runner(pipeline, exp, args)
    written, volumes, failed, claimed = 0, [], [], {}
    batch: list[tuple[InputSlice, Path, tuple[int, int]]] = []  # slice files waiting for one forward pass

    def claim(target: Path, path: Path) -> Path:
        if target.exists() and target.resolve() == path.resolve():
            raise ValueError(f"{path}: its output would overwrite the input (choose another --out)")
        if target in claimed:
            raise ValueError(f"{path}: output {target.name} is also the output of {claimed[target]}")
        claimed[target] = path
        return target

    def flush() -> None:
        nonlocal written
        pending = list(batch)
        batch.clear()
        if not pending:
            return
        for (item, target, _), result in zip(pending, run([i for i, _, _ in pending], pending[0][2], failed),
                                             strict=True):
            if result is not None:
                write_sr(target, result[0], item.kind, exp.hu_window)
                if result[1] is not None:
                    write_std(out / f"{item.name}_std.png", result[1], item.kind, exp.hu_window)
                written += 1

    def volume(path: Path, item: InputVolume) -> None:
        """One volume in, one NIfTI volume (and its std) out, or its slices as PNGs (--format png)."""
        nonlocal written
        size = output_size(item.volume.hu.shape[1:], args.scale, args.out_size)
        count, lines = len(item.volume.hu), []
        if args.format == "png":
            targets = [claim(out / f"{one.name}.png", path) for one in item.slices()]

            def write_png(index: int, one: InputSlice, result: Result) -> None:
                write_sr(targets[index], result[0], "hu", exp.hu_window)
                if result[1] is not None:
                    write_std(out / f"{one.name}_std.png", result[1], "hu", exp.hu_window)

            done = super_resolve_volume(run, item, size, args, lines, write_png)
            failed.extend(f"{path}: {line}" for line in lines)
            written += count if done else 0
            return
        target = claim(out / f"{item.name}{NIFTI_SUFFIX}", path)
        sampled = pipeline.sampled and args.n_samples > 1  # deterministic runs have no std to write
        std_target = claim(out / f"{item.name}_std{NIFTI_SUFFIX}", path) if sampled else None
        mean = np.empty((count, *size), dtype=np.int16)  # int16 HU: what is written, half of float32 in memory
        std = np.zeros((count, *size), dtype=np.float32) if std_target is not None else None

        def collect(index: int, one: InputSlice, result: Result) -> None:
            mean[index] = hu_to_int16(from_model_range(result[0].numpy(), "hu", exp.hu_window))
            if std is not None and result[1] is not None:
                std[index] = std_in_hu(result[1], exp.hu_window)

        done = super_resolve_volume(run, item, size, args, lines, collect)
        failed.extend(f"{path}: {line}" for line in lines)
        if not done:
            return  # nothing of a failed volume is written
        if item.volume.assumed:
            print(f"note: {path}: {item.volume.assumed}", file=sys.stderr)
        write_nifti(target, resampled(item.volume, mean))
        if std_target is not None:
            write_nifti(std_target, resampled(item.volume, std), np.float32)
        written += count
        volumes.append(target.relative_to(out).as_posix())

    for path, stem in tqdm(inputs, unit="file", desc="sr", disable=args.no_progress or len(inputs) == 1):
        try:
            item = read_input(path, stem)
            if isinstance(item, InputVolume):
                volume(path, item)
                continue
            target = claim(out / f"{item.name}.png", path)
            size = output_size(item.values.shape, args.scale, args.out_size)
            if batch and (item.values.shape, item.kind, size) != (batch[0][0].values.shape, batch[0][0].kind,
                                                                   batch[0][2]):
                flush()  # a batch holds slices of one size and kind
            batch.append((item, target, size))
            if len(batch) == args.batch_size:
                flush()
        except ValueError as err:  # SliceReadError, VolumeError and the checks above: report, go on
            failed.append(first_line(err))
    flush()

    print(f"wrote {written} slice(s)" + (f" ({len(volumes)} volume(s))" if volumes else "") + f" to {out}")
    if written:
        write_json_atomic(out / "sr_run.json", run_record(
            "sr.py", argv, seed=args.seed, sampling=pipeline.record(args.n_samples), precision=args.precision,
            compile=args.compile, back_projection=pipeline.back_projection, batch_size=args.batch_size,
            **exp.describe(),
            format=args.format, written=written, volumes=volumes, failed=failed))
    if failed:
        print(f"failed ({len(failed)}):", file=sys.stderr)
        for line in failed:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
