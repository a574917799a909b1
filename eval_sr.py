"""Arbitrary-scale evaluation of a trained run against bicubic, Lanczos and other runs, on the same pairs.

    python eval_sr.py --exp logs/<run> --lr_size 64 --scale_ratio 2 3.7 8
    python eval_sr.py --exp logs/<ldm> --lr_size 64 --scale_ratio 4 --steps 50 --n_samples 8 --compare logs/<liif>
    python eval_sr.py --exp logs/<run> --lr_size 64 --scale_ratio 4 --data_root my_slices/   # every PNG there

Per slice: GT = the slice resized (antialiased, float) to round(N*S)^2, LR = the configured degradation
of GT to N^2 with the image's own seed, SR at the GT size. PSNR/SSIM/MAE are on [0, 1] of the run's
HU window (data.params.hu_window); MAE also in HU; lr_psnr checks the SR against its own input;
psnr/ssim_lung and _soft re-window the same HU values. Outputs go to <run>/eval/... unless --out.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import skimage
import torch

from ldm.checkpoint import CheckpointMismatchError, UnsafeCheckpointError
from ldm.data.slices import SplitListError
from ldm.evaluation.protocol import Protocol, SliceSet, SliceSetError, scale_name, scan, slice_paths
from ldm.evaluation.report import (
    format_table,
    image_writer,
    plot_vs_scale,
    scale_document,
    summary_document,
    write_csv,
    write_json,
)
from ldm.evaluation.runner import WINDOWS, BicubicBaseline, Method, baselines, evaluate
from ldm.experiment import Experiment, ExperimentError
from ldm.pipeline import BackProjected, Pipeline, add_model_run_options, build, check_model_run_options, load_run
from ldm.util import ConfigError

# Bad input answers with one line and exit code 2; anything else is a bug and keeps its traceback.
INPUT_ERRORS = (
    ExperimentError,
    ConfigError,
    CheckpointMismatchError,
    UnsafeCheckpointError,
    SplitListError,
    SliceSetError,
    FileNotFoundError,
    ValueError,
    RuntimeError,
)
SEEDING = (
    "image seed = crc32('<seed>:<slice path relative to the data root>'); it seeds the LR noise of "
    "that image and its diffusion noise (one generator per image), so an image's numbers depend only "
    "on --seed and its path, not on the batch it was sampled in"
)


class UsageError(ValueError):
    """A command-line value that cannot work."""


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", required=True, help="log dir of the run to evaluate (first stage, LIIF or LDM)")
    p.add_argument("--ckpt", default=None, help="checkpoint in the run (default: checkpoints/last.ckpt)")
    p.add_argument("--lr_size", type=int, required=True, help="LR side N in pixels")
    p.add_argument("--scale_ratio", type=float, nargs="+", required=True, help="scales S > 1; GT is round(N*S)")
    data = p.add_argument_group("slices (default: the run's test split)")
    data.add_argument("--split", choices=("test", "val"), default=None,
                      help="the data config's test_list/val_list (default test)")
    data.add_argument("--list", default=None, help="a list file of slices relative to --data_root")
    data.add_argument("--data_root", default=None,
                      help="root of --list / the split; given alone, every PNG under it is evaluated")
    data.add_argument("--first_k", type=int, default=None, help="only the first k slices of the list")
    data.add_argument("--every", type=int, default=1, help="only every n-th slice of the list (before --first_k)")
    proto = p.add_argument_group("protocol")
    proto.add_argument("--degradation", choices=("bicubic", "ct"), default=None,
                       help="LR model (default: the run's data.params.degradation, else bicubic)")
    proto.add_argument("--noise_hu", type=float, default=None, help="LR noise std in HU (default: the run's)")
    proto.add_argument("--seed", type=int, default=23, help="run seed; each image derives its own from it")
    proto.add_argument("--windows", action=argparse.BooleanOptionalAction, default=True,
                       help="also PSNR/SSIM in the lung [-1000, 400] and soft-tissue [-160, 240] windows")
    samp = p.add_argument_group("sampling (LDM runs; other models ignore it)")
    samp.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    samp.add_argument("--eta", type=float, default=None, help="DDIM eta (default: the model's)")
    samp.add_argument("--n_samples", type=int, default=1,
                      help="K samples per slice: metrics of their mean, a std map per slice, std_hu in the CSV")
    run = p.add_argument_group("run")
    run.add_argument("--compare", nargs="+", default=[], metavar="LOGDIR", help="other runs scored side by side")
    run.add_argument("--batch_size", type=int, default=1, help="slices per forward pass")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    run.add_argument("--no_ema", action="store_true", help="use the trained weights, not their EMA")
    run.add_argument("--trust_checkpoint", action="store_true",
                     help="allow checkpoints that need arbitrary unpickling (only from a trusted source)")
    run.add_argument("--save_image", action="store_true", help="16-bit SR PNGs and side-by-side panels")
    run.add_argument("--max_figures", type=int, default=None,
                     help="with --save_image, panels for the first N slices of each scale only (default: all)")
    run.add_argument("--out", default=None, help="output dir (default: <exp>/eval/<split>_lr<N>_x<S>_...)")
    run.add_argument("--overwrite", action="store_true", help="allow an existing, non-empty --out")
    run.add_argument("--no_progress", action="store_true", help="no progress bar")
    add_model_run_options(p.add_argument_group("running the trained models"), "the protocol's degradation")
    return p


def check_args(args: argparse.Namespace) -> None:
    for name in ("batch_size", "n_samples", "steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name}: must be >= 1, got {value}")
    if args.max_figures is not None and args.max_figures < 0:
        raise UsageError(f"--max_figures: must be >= 0, got {args.max_figures}")
    if args.eta is not None and args.eta < 0:
        raise UsageError(f"--eta: must be >= 0, got {args.eta:g}")
    if args.list and args.split:
        raise UsageError("--list and --split: give one of them")
    try:
        check_model_run_options(args)
    except ValueError as err:
        raise UsageError(str(err)) from err


def select_slices(args: argparse.Namespace, exp: Experiment) -> tuple[SliceSet, dict[str, Any]]:
    """The evaluated slices and how they were chosen (for metrics.json and the out-dir name)."""
    params = exp.data_params
    if args.list:
        root, list_file, label = args.data_root or params.get("root", "data/CT"), args.list, Path(args.list).stem
    elif args.data_root and not args.split:
        root, list_file, label = args.data_root, None, "folder"
    else:
        split = args.split or "test"
        list_file = params.get(f"{split}_list", f"data/{split}.txt")
        if not list_file:
            raise UsageError(f"{exp.config_path}: data.params.{split}_list is empty; pass --list or --data_root")
        root, label = args.data_root or params.get("root", "data/CT"), split
    slices = scan(slice_paths(root, list_file), root, args.lr_size, args.first_k, args.every)
    source = {"split": label, "root": str(root), "list": str(list_file) if list_file else None}
    return slices, source


def default_out(args: argparse.Namespace, exp: Experiment, protocol: Protocol, label: str) -> Path:
    parts = [label, f"lr{protocol.lr_size}", *(scale_name(s) for s in protocol.scale_ratios), protocol.degradation]
    if protocol.noise_hu > 0:
        parts.append(f"noise{protocol.noise_hu:g}")
    parts.append(f"seed{protocol.seed}")
    if args.sampler is not None and exp.kind == "ldm":
        parts.append(args.sampler)
    if args.steps is not None:
        parts.append(f"steps{args.steps}")
    if args.n_samples > 1:
        parts.append(f"k{args.n_samples}")
    if args.every > 1:
        parts.append(f"every{args.every}")
    if args.first_k is not None:
        parts.append(f"first{args.first_k}")
    if args.precision != "fp32":
        parts.append(args.precision)
    if args.back_projection:
        parts.append(f"bp{args.back_projection}")
    # an exported .safetensors model keeps its evaluations in <file stem>-eval/ beside it
    root = exp.logdir / "eval" if exp.logdir.is_dir() else exp.logdir.with_name(f"{exp.logdir.stem}-eval")
    return root / "_".join(parts)


def make_out_dir(args: argparse.Namespace, default: Path) -> Path:
    """Create the output dir; an earlier run's folder is never written into silently."""
    if args.out is not None:
        out = Path(args.out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
            raise UsageError(f"--out: {out} exists and is not empty (pass --overwrite to write into it)")
        out.mkdir(parents=True, exist_ok=True)
        return out
    out, n = default, 1
    while True:
        try:
            out.mkdir(parents=True)
            break
        except FileExistsError:
            n += 1
            out = default.with_name(f"{default.name}_{n}")
    if n > 1:
        print(f"note: {default} exists (an earlier run); writing to {out}")
    return out


def build_methods(args: argparse.Namespace, exp: Experiment, others: list[Experiment], data_kind: str,
                  degradation: str) -> list[Method]:
    """Baselines, then the --compare runs, then the evaluated run (the last row of each table).

    With --back_projection N the trained runs are back-projected onto their LR through the
    protocol's degradation, after any re-windowing; bicubic and Lanczos stay as they are, and
    "bicubic+bp" (bicubic back-projected the same way) joins them as the projection's own baseline.
    """
    methods = baselines()
    if args.back_projection:
        # the classical baseline for a projected model: what the projection alone makes of bicubic
        projected = BackProjected(BicubicBaseline(), degradation, args.back_projection)
        methods.append(Method("bicubic+bp", Pipeline(projected), "bicubic",
                              info={"back_projection": projected.describe()}))
    used = {m.name for m in methods}
    for run in [*others, exp]:
        name, n = run.name, 1
        while name in used:
            n += 1
            name = f"{run.name}-{n}"
        used.add(name)
        methods.extend(run_methods(args, run, name, exp, data_kind, degradation))
    return methods


def run_methods(args: argparse.Namespace, run: Experiment, name: str, exp: Experiment, data_kind: str,
                degradation: str) -> list[Method]:
    """The rows of one trained run: one, or for an LDM with --n_samples K > 1 two: `name (1 sample)`
    and `name (mean of K)`. The mean of K posterior samples is a regression-like estimate that
    scores higher than any one sample (up to 10 log10(2K/(K+1)) dB for an ideal sampler), so both
    are shown and named for what they score. Both rows share the pipeline, so the evaluation draws
    K samples once and the 1-sample row is the first of them (ldm.evaluation.runner.draw)."""
    pipeline = build(args, run, degradation, exp.hu_window if data_kind == "hu" else None)
    info = run.describe()
    if pipeline.back_projection is not None:
        info["back_projection"] = pipeline.back_projection
    if not pipeline.sampled:
        return [Method(name, pipeline, run.kind, info=info)]
    counts = [1] if args.n_samples == 1 else [1, args.n_samples]
    rows = []
    for k in counts:
        label = name if args.n_samples == 1 else (f"{name} (1 sample)" if k == 1 else f"{name} (mean of {k})")
        rows.append(Method(label, pipeline, run.kind, k, info={**info, "sampling": pipeline.record(k)}))
    return rows


def metadata(args: argparse.Namespace, argv: list[str], exp: Experiment, protocol: Protocol,
             slices: SliceSet, source: dict[str, Any], methods: list[Method]) -> dict[str, Any]:
    hu = slices.data_kind == "hu"
    sampling = methods[-1].pipeline.record(args.n_samples)  # the evaluated run's (the last row)
    return {
        "kind": exp.kind,
        "lr_size": protocol.lr_size,
        "sampler": sampling.get("sampler"),
        "steps": sampling.get("steps"),
        "eta": sampling.get("eta"),
        "n_samples": args.n_samples,
        "seed": protocol.seed,
        "seeding": SEEDING,
        "degradation": {"kind": protocol.degradation, "noise_hu": protocol.noise_hu},
        "hu_window": list(protocol.hu_window),
        "data_kind": slices.data_kind,
        "metric_range": (f"psnr/ssim/mae on [0, 1] of hu_window {list(protocol.hu_window)} HU; mae_hu = mae x "
                         f"{protocol.window_width:g} HU" if hu else "psnr/ssim/mae on [0, 1] of the 8-bit range"),
        "windows": {k: list(v) for k, v in WINDOWS.items()} if hu and args.windows else {},
        "data": source,
        "skipped": slices.skipped,
        "n_skipped": len(slices.skipped),
        "exp": str(exp.logdir),
        "config_sha256": exp.config_sha256,
        "ckpt_sha256": exp.ckpt_sha256,
        "ema": exp.ema,
        "method_info": {m.name: {"kind": m.kind, **m.info} for m in methods},
        "batch_size": args.batch_size,
        "device": str(args.device),
        "precision": args.precision,
        "compile": args.compile,
        "back_projection": {"iterations": args.back_projection, "degradation": protocol.degradation}
        if args.back_projection else None,
        "command": shlex.join(["python", "eval_sr.py", *argv]),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "scikit-image": skimage.__version__, "pillow": PIL.__version__},
    }


def setup(args: argparse.Namespace) -> tuple[Experiment, list[Experiment], Protocol, SliceSet, dict[str, Any]]:
    """Everything that can fail on bad input, before any output exists."""
    check_args(args)
    exp = load_run(args, args.exp, args.ckpt)
    params = exp.data_params
    protocol = Protocol(
        lr_size=args.lr_size,
        scale_ratios=tuple(args.scale_ratio),
        degradation=args.degradation or params.get("degradation", "bicubic"),
        noise_hu=float(args.noise_hu if args.noise_hu is not None else params.get("noise_hu", 0.0)),
        hu_window=exp.hu_window,
        seed=args.seed,
    )
    slices, source = select_slices(args, exp)
    others = [load_run(args, path) for path in args.compare]
    return exp, others, protocol, slices, source


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = get_parser().parse_args(argv)
    try:
        exp, others, protocol, slices, source = setup(args)
        out = make_out_dir(args, default_out(args, exp, protocol, source["split"]))
    except INPUT_ERRORS as err:
        print(f"error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 2

    for item in slices.skipped:
        print(f"warning: skipped {item['reason']}", file=sys.stderr)
    methods = build_methods(args, exp, others, slices.data_kind, protocol.degradation)
    ignored = [run.name for run in [*others, exp] if run.kind != "ldm"] if args.n_samples > 1 else []
    if ignored:
        print(f"note: --n_samples applies to LDM runs; deterministic {', '.join(ignored)} give one SR")
    print(f"kind: {exp.kind} ({exp.logdir}, {'EMA' if exp.ema else 'trained'} weights, step {exp.global_step})")
    print(f"images: {len(slices.slices)} from {source['list'] or source['root']}"
          + (f" ({len(slices.skipped)} skipped)" if slices.skipped else ""))
    print(f"outputs: {out}")
    largest = max(protocol.out_size(s)[0] for s in protocol.scale_ratios)
    small = sum(min(ref.shape) < largest for ref in slices.slices)
    if small:
        print(f"warning: {small} slice(s) smaller than the GT size {largest}; their GT is an interpolation "
              "(counted as gt_upsampled in metrics.json)", file=sys.stderr)

    several = len(protocol.scale_ratios) > 1
    folder = (lambda s: out / scale_name(s)) if several else (lambda s: out)
    sink = image_writer(folder, methods[-1].name, slices.data_kind, protocol.hu_window, args.save_image,
                        args.max_figures)
    results = evaluate(slices, methods, protocol, args.batch_size, args.windows, sink, not args.no_progress)

    meta = metadata(args, argv, exp, protocol, slices, source, methods)
    for result in results:
        write_json(folder(result.scale) / "metrics.json", scale_document(result, meta))
        write_csv(folder(result.scale) / "per_image.csv", result)
    if several:
        write_json(out / "summary.json", summary_document(results, meta))
        plot_vs_scale(out / "psnr_vs_scale.png", results, f"{exp.name}: LR {protocol.lr_size}, {protocol.degradation}")
    kinds = {m.name: m.kind for m in methods}
    header = (f"{exp.name} ({exp.kind}) | LR {protocol.lr_size} | {protocol.degradation} | "
              f"{meta['metric_range']} | seed {protocol.seed}")
    print(format_table(results, kinds, header))
    print(f"\nwrote {out}/" + ("summary.json, psnr_vs_scale.png, x*/metrics.json, x*/per_image.csv" if several
                              else "metrics.json, per_image.csv"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
