"""Sampling speed of the latent diffusion super-resolver, and what fewer steps cost in quality.

    python bench/sampling.py                                   # random weights, GPU config, all rows
    python bench/sampling.py --exp logs/<ldm run> --data_root data/CT --compile
    python bench/sampling.py --tiny --device cpu               # harness check (CI)

Rows: every (LR -> output size, sampler, steps, batch, fp32/bf16 autocast, eager/torch.compile'd
UNet), plus the reference settings (DDIM, 200 steps, fp32, batch 8, eager); --samplers ddim
dpmpp_2m compares DDIM with DPM-Solver++(2M) at the same step counts. Each row times whole
super_resolve(lr, out_size, steps=, eta=, seed=) calls (condition encoding, the DDIM loop and the
implicit decode): slices/s = batch / median latency, and the speed-up over the reference row of
the same size. FLOPs come from torch.utils.flop_counter (one count per batch: fixed part + steps x
per-step part), MFU is achieved FLOP/s over the card's measured bf16 matmul peak.

Quality: at the largest batch, every row's samples are compared with the fp32 eager 200-step
samples of the same LR and seed (psnr_vs_ref_steps), so speed is never bought with quality
unknowingly. With --exp and --data_root the LR comes from real slices (eval_sr.py's protocol) and
PSNR against the ground truth is reported too (delta_psnr_gt: vs the 200-step samples' PSNR).
With random weights the quality columns are smoke numbers only, and labelled so in the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `python bench/sampling.py`
from bench.common import (  # noqa: E402
    Reference,
    add_speedups,
    argv_of,
    autocast,
    base_parser,
    bf16_matmul_peak_tflops,
    build_random_model,
    compile_variants,
    compiled,
    count_flops,
    finish_args,
    format_table,
    free_memory,
    measure,
    metadata,
    random_images,
    write_json,
)
from ldm.models.diffusion.samplers import SAMPLERS  # noqa: E402

SIZES = ["64:256", "32:256"]  # x4 and x8 onto the 256 px training size
STEPS = [25, 50, 200]
BATCHES = [1, 64]
REFERENCE = Reference(steps=200, dtype="fp32", batch=8)
TINY = {"sizes": ["16:64", "8:64"], "steps": [2, 4], "batches": [1, 2], "reference": Reference(steps=4, batch=2)}

COLUMNS = [
    ("size", "lr->out", ""), ("sampler", "sampler", ""), ("steps", "steps", "d"), ("batch", "batch", "d"),
    ("dtype", "dtype", ""),
    ("compile", "compile", ""), ("latency_s", "latency s", ".4g"), ("slices_per_s", "slices/s", ".4g"),
    ("speedup_vs_reference", "x ref", ".3g"), ("psnr_vs_ref_steps", "PSNR vs ref", ".2f"),
    ("delta_psnr_gt", "dPSNR gt", ".3f"), ("mfu", "MFU", ".1%"), ("peak_mem_gib", "peak GiB", ".2f"),
    ("status", "status", ""),
]


def parser() -> argparse.ArgumentParser:
    p = base_parser("sampling", __doc__, "configs/latent-diffusion/ct256-f4.yaml",
                    "configs/latent-diffusion/ct-tiny.yaml", repeats=3, warmup=1)
    p.add_argument("--sizes", nargs="+", default=None, help=f"LR:out pixel sides (default {' '.join(SIZES)})")
    p.add_argument("--steps", nargs="+", type=int, default=None, help=f"DDIM steps (default {STEPS})")
    p.add_argument("--batch", nargs="+", type=int, default=None, help=f"batch sizes (default {BATCHES})")
    p.add_argument("--ref_steps", type=int, default=None, help="reference row's steps (default 200; --tiny 4)")
    p.add_argument("--ref_batch", type=int, default=None, help="reference row's batch (default 8; --tiny 2)")
    p.add_argument("--eta", type=float, default=None, help="DDIM eta (default: the model's sample_eta)")
    p.add_argument("--samplers", nargs="+", default=None, choices=sorted(SAMPLERS),
                   help="samplers to time at every step count (default: the model's; the reference row is DDIM)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, the same for every row")
    p.add_argument("--no_flops", action="store_true", help="skip the FLOP count (and MFU)")
    real = p.add_argument_group("a trained run on real slices (for meaningful quality columns)")
    real.add_argument("--exp", default=None, help="log dir of a trained LDM run (ldm.experiment.load_experiment)")
    real.add_argument("--ckpt", default=None, help="checkpoint in --exp (default last.ckpt)")
    real.add_argument("--data_root", default=None, help="slice root; LR/GT pairs as eval_sr.py makes them")
    real.add_argument("--list", default="data/test.txt",
                      help="split list file; its entries are relative to --data_root")
    real.add_argument("--trust_checkpoint", action="store_true", help="allow pickled checkpoints")
    return p


def parse_size(text: str) -> tuple[int, int]:
    try:
        lr, out = (int(v) for v in text.split(":"))
    except ValueError as err:
        raise SystemExit(f"--sizes: expected LR:OUT like 64:256, got '{text}'") from err
    if not 0 < lr < out:
        raise SystemExit(f"--sizes: need 0 < LR < OUT, got '{text}'")
    return lr, out


def real_pairs(args: argparse.Namespace, hu_window: tuple[float, float], degradation: str, noise_hu: float,
               lr_size: int, out_size: int, n: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """n (GT, LR) pairs from the listed slices, made as eval_sr.py makes them (per-image seeds);
    slices repeat cyclically when the list is shorter than n. Returns lr, gt, distinct slices."""
    from ldm.evaluation.protocol import Protocol, load, scan, slice_paths
    from ldm.pipeline import image_seed

    protocol = Protocol(lr_size, (out_size / lr_size,), degradation, noise_hu, hu_window)
    refs = scan(slice_paths(args.data_root, args.list), args.data_root, lr_size).slices
    pairs = [protocol.pair(load(ref, hu_window), out_size / lr_size, image_seed(protocol.seed, ref.name))
             for ref in refs[:n]]
    gts, lrs = zip(*(pairs[i % len(pairs)] for i in range(n)), strict=True)
    return torch.cat(lrs), torch.cat(gts), len(pairs)


def make_inputs(args: argparse.Namespace, exp: Any, lr_size: int, out_size: int, n: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
    """LR batch (n, 1, lr, lr) and its GT (or None): real slices with --data_root, else random images."""
    if args.data_root:
        from ldm.data.intensity import FULL_WINDOW

        data = exp.data_params if exp else {}
        window = exp.hu_window if exp else FULL_WINDOW
        lr, gt, distinct = real_pairs(args, window, data.get("degradation") or "bicubic",
                                      float(data.get("noise_hu") or 0.0), lr_size, out_size, n)
        info = {"inputs": f"real slices ({args.list} under {args.data_root}), eval_sr.py's pairs",
                "distinct_slices": distinct}
        return lr.to(device), gt.to(device), info
    from ldm.data.degradation import degrade

    hr = random_images(n, (out_size, out_size), seed=1, device=device)
    # no GT: a random-weight model's PSNR against random images would mean nothing
    return degrade(hr, lr_size), None, {"inputs": "random smooth images, bicubic-degraded", "distinct_slices": n}


def flop_model(model: Any, lr: torch.Tensor, out: int, batch: int, seed: int) -> tuple[int, int]:
    """(fixed, per step) FLOPs of super_resolve at this batch: one UNet call per step for every
    sampler, so the cost is linear in the steps (counted with DDIM)."""
    run = lambda steps: count_flops(lambda: model.super_resolve(lr[:batch], (out, out), steps=steps, seed=seed,
                                                                sampler="ddim"))[0]
    one, two = run(1), run(2)
    return one - (two - one), two - one


def psnr_mean(a: torch.Tensor, b: torch.Tensor) -> float:
    from ldm.metrics import psnr, unit_to_01

    return psnr(unit_to_01(a[:, :1]), unit_to_01(b[:, :1])).mean().item()


def time_row(row: dict[str, Any], call: Any, device: torch.device, warmup: int, repeats: int) -> bool:
    """Time call() into row (latency, slices/s, peak memory); False (status 'oom') when it ran out of memory."""
    result = measure(call, device, warmup, repeats)
    if result is None:
        row["status"] = "oom"
        return False
    t = result.timing
    row["status"] = result.status
    row.update(latency_s=t.median_s, latency_min_s=t.min_s, latency_max_s=t.max_s,
               slices_per_s=row["batch"] / t.median_s, peak_mem_gib=result.peak_mem_gib,
               peak_mem_extra_gib=result.peak_mem_extra_gib)
    return True


def bench_size(args: argparse.Namespace, model: Any, exp: Any, lr_size: int, out: int, steps_list: list[int],
               batches: list[int], samplers: list[str], ref: Reference, eta: float, peak: float | None,
               compile_errors: dict[str, str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every row of one LR -> output size, with the quality columns at the largest batch."""
    from ldm.models.base import model_input_size

    device = torch.device(args.device)
    qbatch = max(batches + [ref.batch])
    lr, gt, inputs_info = make_inputs(args, exp, lr_size, out, qbatch, device)
    in_hw = model_input_size((lr_size, lr_size), (out, out), model.max_input_scale, model.input_multiple)
    latent = [n // model.first_stage.downsample_factor for n in in_hw]
    all_batches = sorted(set(batches + [ref.batch, qbatch]))
    flops = {} if args.no_flops else {b: flop_model(model, lr, out, b, args.seed) for b in all_batches}

    def sample(steps: int, batch: int, sampler: str) -> torch.Tensor:
        return model.super_resolve(lr[:batch], (out, out), steps=steps, eta=eta, seed=args.seed, sampler=sampler)

    rows: list[dict[str, Any]] = []
    outputs: dict[tuple[str, str, bool, int], torch.Tensor] = {}
    for use_compile, dtype in itertools.product(compile_variants(args.compile), args.dtype):
        grid = list(itertools.product(samplers, steps_list, batches))
        if (dtype, use_compile) == (ref.dtype, ref.compile) and (ref.sampler, ref.steps, ref.batch) not in grid:
            grid.append((ref.sampler, ref.steps, ref.batch))
        if (dtype, use_compile) == ("fp32", False) and (ref.sampler, ref.steps, qbatch) not in grid:
            grid.append((ref.sampler, ref.steps, qbatch))  # the quality reference, even when not a grid row
        compiling = (compiled([(model.unet, "forward")], lambda: sample(1, batches[0], samplers[0]), args.compile_mode)
                     if use_compile else contextlib.nullcontext(None))
        with autocast(device, dtype), compiling as error:
            if error:
                compile_errors[f"{lr_size}->{out} {dtype}"] = error
                continue
            for sampler, steps, batch in grid:
                row: dict[str, Any] = {
                    "size": f"{lr_size}->{out}", "lr_size": lr_size, "out_size": out, "scale": out / lr_size,
                    "latent": latent, "sampler": sampler, "steps": steps, "batch": batch, "dtype": dtype,
                    "compile": use_compile, "eta": eta if sampler == "ddim" else None, "status": "ok",
                }
                holder: dict[str, torch.Tensor] = {}

                def call(steps: int = steps, batch: int = batch, sampler: str = sampler, holder: dict = holder) -> None:
                    holder["out"] = sample(steps, batch, sampler)

                warmup = max(args.warmup, 1) if use_compile else args.warmup  # a new shape recompiles
                rows.append(row)
                if not time_row(row, call, device, warmup, args.repeats):
                    continue
                if batch in flops:
                    fixed, per_step = flops[batch]
                    total = fixed + steps * per_step
                    achieved = total / row["latency_s"] / 1e12
                    row.update(tflop=total / 1e12, achieved_tflops=achieved, mfu=achieved / peak if peak else None)
                if batch == qbatch:
                    outputs[(sampler, dtype, use_compile, steps)] = holder["out"].float()

    reference_key = (ref.sampler, "fp32", False, ref.steps)
    reference_out = outputs.get(reference_key)
    for row in rows:
        key = (row["sampler"], row["dtype"], row["compile"], row["steps"])
        if row["batch"] != qbatch or key not in outputs:
            continue
        # fewer steps against the same sampler's ref.steps samples (a deterministic ODE solver
        # against stochastic DDIM would measure two different posterior samples, not step error)
        own_key = (row["sampler"], "fp32", False, ref.steps)
        own_ref = outputs.get(own_key)
        ok = own_ref is not None and key != own_key
        row["psnr_vs_ref_steps"] = psnr_mean(outputs[key], own_ref) if ok else None
        if gt is not None:
            row["psnr_gt"] = psnr_mean(outputs[key], gt)
            if reference_out is not None:
                row["delta_psnr_gt"] = row["psnr_gt"] - psnr_mean(reference_out, gt)
    return rows, inputs_info


def main(argv: Sequence[str] | None = None) -> int:
    argv = argv_of(argv)
    args = finish_args(parser().parse_args(argv))
    device = torch.device(args.device)
    tiny = args.tiny
    sizes = [parse_size(s) for s in (args.sizes or (TINY["sizes"] if tiny else SIZES))]
    steps_list = args.steps or (TINY["steps"] if tiny else STEPS)
    batches = args.batch or (TINY["batches"] if tiny else BATCHES)
    default_ref = TINY["reference"] if tiny else REFERENCE
    ref = Reference(steps=args.ref_steps or default_ref.steps, batch=args.ref_batch or default_ref.batch)
    if min(steps_list + batches + [ref.steps, ref.batch]) < 1:
        raise SystemExit("--steps/--batch/--ref_steps/--ref_batch: must be >= 1")

    exp = None
    if args.exp:
        from ldm.experiment import load_experiment

        exp = load_experiment(args.exp, ckpt=args.ckpt, trust_checkpoint=args.trust_checkpoint, device=device)
        if exp.kind != "ldm":
            raise SystemExit(f"--exp {args.exp}: a {exp.kind} run; the sampling bench needs an LDM run")
        model, model_info = exp.model, exp.describe()
    else:
        torch.manual_seed(0)
        model = build_random_model(args.config, device).eval().requires_grad_(False)
        model_info = {"config": args.config, "weights": "random"}
    eta = model.sample_eta if args.eta is None else args.eta
    samplers = args.samplers or [model.sampler]
    peak = bf16_matmul_peak_tflops(device)

    rows: list[dict[str, Any]] = []
    compile_errors: dict[str, str] = {}
    inputs_info: dict[str, Any] = {}
    for lr_size, out in sizes:
        size_rows, inputs_info = bench_size(args, model, exp, lr_size, out, steps_list, batches, samplers, ref, eta,
                                            peak, compile_errors)
        rows += size_rows
        free_memory(device)
    add_speedups(rows, ref, group="size", metric="slices_per_s")

    quality = f"trained run {args.exp}" if exp else "random weights: SMOKE NUMBER, says nothing about quality"
    document = {
        "meta": metadata(args, argv),
        "model": model_info,
        "bf16_matmul_peak_tflops": peak,
        "reference": ref.describe(),
        "quality_batch": max(batches + [ref.batch]),
        "quality_basis": quality,
        "quality_reference": f"psnr_vs_ref_steps: each sampler's own fp32 eager {ref.steps}-step samples of the "
                             f"same LR and seed; delta_psnr_gt: PSNR against the GT minus that of the "
                             f"{ref.steps}-step {ref.sampler} reference's samples",
        "samplers": samplers,
        "inputs": inputs_info,
        "sizes": "LR side -> output side in px; latent = model input size / f (ldm.models.base.model_input_size)",
        "compiled": "the denoiser UNet's forward (torch.compile, dynamic=False)" if args.compile else None,
        "compile_errors": compile_errors,
        "rows": rows,
    }
    write_json(args.out, document)
    print(f"sampling on {document['meta']['card']}; quality columns: {quality}")
    print(format_table(rows, COLUMNS))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
