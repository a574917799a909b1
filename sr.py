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
from ldm.data.intensity import from_model_range, write_sr, write_std
from ldm.data.volumes import hu_to_int16, resampled, write_nifti
from ldm.experiment import Experiment, ExperimentError
from ldm.inference import InputSlice, InputVolume, find_inputs, lr_batch, output_size, read_input
from ldm.pipeline import (
    Pipeline,
    Result,
    add_model_run_options,
    build,
    check_model_run_options,
    image_seed,
    load_run,
)
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


def std_in_hu(std: torch.Tensor, hu_window: tuple[float, float]) -> np.ndarray:
    """A sample std in model units ([-1, 1] over the window) -> HU: the window's half-width per unit."""
    return std.numpy().astype(np.float32) * np.float32((hu_window[1] - hu_window[0]) / 2.0)


class Writer:
    """What sr.py makes of its inputs under --out: slice files gathered into forward passes of one
    size and kind, a volume's slices in order into one NIfTI volume (or PNGs).

    Each output is claimed once: never over its input, never the output of two inputs. `written`
    counts the slices written, `volumes` the volume files, `failed` holds a line per failure.
    """

    def __init__(self, out: Path, exp: Experiment, pipeline: Pipeline, args: argparse.Namespace) -> None:
        self.out, self.exp, self.pipeline, self.args = out, exp, pipeline, args
        self.written, self.volumes, self.failed = 0, [], []
        self.claimed: dict[Path, Path] = {}
        self.batch: list[tuple[InputSlice, Path, tuple[int, int]]] = []  # slice files waiting for one forward pass

    def run(self, items: list[InputSlice], size: tuple[int, int], failed: list[str]) -> list[Result | None]:
        """Slices of one shape and kind in one forward pass, each with the seed of its name -> per
        slice its Result, or None where it failed (a line added to failed)."""
        seeds = [image_seed(self.args.seed, item.name) for item in items]
        return self.pipeline.super_resolve_each(lr_batch(items, self.exp.hu_window), size, seeds,
                                                [item.name for item in items], self.args.n_samples, failed)

    def claim(self, target: Path, path: Path) -> Path:
        if target.exists() and target.resolve() == path.resolve():
            raise ValueError(f"{path}: its output would overwrite the input (choose another --out)")
        if target in self.claimed:
            raise ValueError(f"{path}: output {target.name} is also the output of {self.claimed[target]}")
        self.claimed[target] = path
        return target

    def add_slice(self, path: Path, item: InputSlice) -> None:
        """A slice file joins the waiting batch, run when it is full (--batch_size)."""
        target = self.claim(self.out / f"{item.name}.png", path)
        size = output_size(item.values.shape, self.args.scale, self.args.out_size)
        first = self.batch[0] if self.batch else None
        if first and (item.values.shape, item.kind, size) != (first[0].values.shape, first[0].kind, first[2]):
            self.flush()  # a batch holds slices of one size and kind
        self.batch.append((item, target, size))
        if len(self.batch) == self.args.batch_size:
            self.flush()

    def flush(self) -> None:
        """Run the waiting slice files and write their PNGs (and std maps)."""
        pending = list(self.batch)
        self.batch.clear()
        if not pending:
            return
        results = self.run([item for item, _, _ in pending], pending[0][2], self.failed)
        for (item, target, _), result in zip(pending, results, strict=True):
            if result is not None:
                write_sr(target, result[0], item.kind, self.exp.hu_window)
                if result[1] is not None:
                    write_std(self.out / f"{item.name}_std.png", result[1], item.kind, self.exp.hu_window)
                self.written += 1

    def volume_slices(self, item: InputVolume, size: tuple[int, int], failed: list[str],
                      sink: Callable[[int, InputSlice, Result], None]) -> bool:
        """A volume's slices in order, in batches of --batch_size under one progress bar, each handed to
        sink(index, slice, result); False as soon as a slice failed (its line in failed)."""
        slices, step = item.slices(), self.args.batch_size
        with tqdm(total=len(slices), unit="slice", desc=item.name, disable=self.args.no_progress) as bar:
            for start in range(0, len(slices), step):
                batch = slices[start:start + step]
                for index, (one, result) in enumerate(zip(batch, self.run(batch, size, failed), strict=True), start):
                    if result is None:
                        return False
                    sink(index, one, result)
                bar.update(len(batch))
        return True

    def volume(self, path: Path, item: InputVolume) -> None:
        """One volume in, one NIfTI volume (and its std) out, or its slices as PNGs (--format png)."""
        out, window = self.out, self.exp.hu_window
        size = output_size(item.volume.hu.shape[1:], self.args.scale, self.args.out_size)
        count, lines = len(item.volume.hu), []
        if self.args.format == "png":
            targets = [self.claim(out / f"{one.name}.png", path) for one in item.slices()]

            def write_png(index: int, one: InputSlice, result: Result) -> None:
                write_sr(targets[index], result[0], "hu", window)
                if result[1] is not None:
                    write_std(out / f"{one.name}_std.png", result[1], "hu", window)

            done = self.volume_slices(item, size, lines, write_png)
            self.failed.extend(f"{path}: {line}" for line in lines)
            self.written += count if done else 0
            return
        target = self.claim(out / f"{item.name}{NIFTI_SUFFIX}", path)
        sampled = self.pipeline.sampled and self.args.n_samples > 1  # deterministic runs have no std to write
        std_target = self.claim(out / f"{item.name}_std{NIFTI_SUFFIX}", path) if sampled else None
        mean = np.empty((count, *size), dtype=np.int16)  # int16 HU: what is written, half of float32 in memory
        std = np.zeros((count, *size), dtype=np.float32) if std_target is not None else None

        def collect(index: int, one: InputSlice, result: Result) -> None:
            mean[index] = hu_to_int16(from_model_range(result[0].numpy(), "hu", window))
            if std is not None and result[1] is not None:
                std[index] = std_in_hu(result[1], window)

        done = self.volume_slices(item, size, lines, collect)
        self.failed.extend(f"{path}: {line}" for line in lines)
        if not done:
            return  # nothing of a failed volume is written
        if item.volume.assumed:
            print(f"note: {path}: {item.volume.assumed}", file=sys.stderr)
        write_nifti(target, resampled(item.volume, mean))
        if std_target is not None:
            write_nifti(std_target, resampled(item.volume, std), np.float32)
        self.written += count
        self.volumes.append(target.relative_to(out).as_posix())


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

    writer = Writer(out, exp, pipeline, args)
    for path, stem in tqdm(inputs, unit="file", desc="sr", disable=args.no_progress or len(inputs) == 1):
        try:
            item = read_input(path, stem)
            if isinstance(item, InputVolume):
                writer.volume(path, item)
            else:
                writer.add_slice(path, item)
        except ValueError as err:  # SliceReadError, VolumeError and the checks above: report, go on
            writer.failed.append(first_line(err))
    writer.flush()
    written, volumes, failed = writer.written, writer.volumes, writer.failed
    print(f"wrote {written} slice(s)" + (f" ({len(volumes)} volume(s))" if volumes else "") + f" to {out}")
    if written:
        write_json_atomic(out / "sr_run.json", run_record(
            "sr.py", argv, seed=args.seed, sampling=pipeline.record(args.n_samples), precision=args.precision,
            compile=args.compile, back_projection=pipeline.back_projection, batch_size=args.batch_size,
            **exp.describe(), format=args.format, written=written, volumes=volumes, failed=failed))
    if failed:
        print(f"failed ({len(failed)}):", file=sys.stderr)
        for line in failed:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
