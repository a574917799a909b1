"""Training throughput and model FLOP utilisation of each stage's optimisation step.

    python bench/training.py                                    # stage 1 and stage 2, GPU configs
    python bench/training.py --stages stage1 stage2 stage3 liif --compile
    python bench/training.py --tiny --device cpu                # harness check (CI)

A step is what Lightning runs per batch, without the Trainer: on_train_batch_start (the LDM's
latent scale on the first batch), training_step under autocast for bf16 (as precision=bf16-mixed),
backward, the optimiser step (the model's configure_optimizers, its scheduler if any) and the EMA
update (on_train_batch_end). Batches are random smooth slices at the config's sizes (data.params:
batch_size, resize, the val_scale LR, the middle of gt_size_range; LIIF: lr_size x val_scale).
Stages: stage1 = ImplicitAutoencoder; stage2 = LatentDiffusionSR (only the UNet trains, the first
stage is frozen); stage3 = the alignment fine-tune (UNet through the fixed decoder); liif = the
EDSR-LIIF baseline; unet = stage 2's step on ready latents (LatentDiffusionSR.latent_loss: the UNet
alone, as if the frozen encoder's latents were cached), issue 8's "UNet MFU".
FLOPs per step: torch.utils.flop_counter over one step after a first one (forward and backward:
matmuls, convolutions, attention), also per top-level module class (flops_by_module: e.g. the
frozen Encoder vs the UNetModel of stage 2). MFU = FLOPs per step / median step time / the
card's measured bf16 matmul peak (bench.common.bf16_matmul_peak_tflops); None on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `python bench/training.py`
from bench.common import (  # noqa: E402
    argv_of,
    autocast,
    base_parser,
    bf16_matmul_peak_tflops,
    build_random_model,
    card_name,
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
from ldm.config import load_config  # noqa: E402
from ldm.data.degradation import degrade, resize  # noqa: E402

# stage -> (GPU config, tiny config)
STAGES = {
    "stage1": ("configs/first-stage/ct256-f4.yaml", "configs/first-stage/ct-tiny.yaml"),
    "stage2": ("configs/latent-diffusion/ct256-f4.yaml", "configs/latent-diffusion/ct-tiny.yaml"),
    "stage3": ("configs/latent-diffusion/ct256-f4-align.yaml", "configs/latent-diffusion/ct-tiny-align.yaml"),
    "liif": ("configs/baselines/liif-edsr.yaml", "configs/baselines/liif-tiny.yaml"),
}
# the stage-2 UNet alone on ready latents: what a stage-2 step costs without the frozen encoder
STAGES["unet"] = STAGES["stage2"]

COLUMNS = [
    ("stage", "stage", ""), ("batch", "batch", "d"), ("dtype", "dtype", ""), ("compile", "compile", ""),
    ("step_s", "step s", ".4g"), ("images_per_s", "images/s", ".4g"), ("tflop_per_step", "TFLOP/step", ".3g"),
    ("achieved_tflops", "TFLOP/s", ".3g"), ("mfu", "MFU", ".1%"), ("peak_mem_gib", "peak GiB", ".2f"),
    ("status", "status", ""),
]


def parser() -> argparse.ArgumentParser:
    p = base_parser("training", __doc__, None, None, repeats=10, warmup=3)
    p.add_argument("--stages", nargs="+", default=["stage1", "stage2"], choices=sorted(STAGES),
                   help="which steps to time (default stage1 stage2)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: each config's data.params.batch_size)")
    return p


def make_batch(data: dict[str, Any], batch: int, device: torch.device, seed: int = 0) -> dict[str, Any]:
    """A training batch shaped as ldm.data.batches.SRBatches makes it, from random smooth slices."""
    scale = float(data.get("val_scale", 4.0))
    if data.get("lr_size"):  # LIIF's protocol: a fixed LR patch, the HR patch round(lr x scale)
        lr_size = int(data["lr_size"])
        hr = random_images(batch, (round(lr_size * scale),) * 2, seed, device)
        gt = hr
    else:  # the slice is the HR input; gt = hr resized to the middle of gt_size_range
        side = int(data.get("resize") or data.get("crop") or 256)
        hr = random_images(batch, (side, side), seed, device)
        lr_size = max(1, round(side / scale))
        gt_range = data.get("gt_size_range")
        gt = resize(hr, round(sum(gt_range) / 2)) if gt_range else hr
    lr = degrade(hr, lr_size)
    return {"hr": hr, "lr": lr, "gt": gt, "scale": torch.full((batch,), hr.shape[-2] / lr_size),
            "path": [f"random_{i}.png" for i in range(batch)]}


def optimizers(configured: Any) -> tuple[torch.optim.Optimizer, Any]:
    """configure_optimizers() -> (optimiser, step-interval scheduler or None); the forms Lightning accepts here."""
    if isinstance(configured, dict):
        sched = configured.get("lr_scheduler")
        return configured["optimizer"], sched.get("scheduler") if isinstance(sched, dict) else sched
    if isinstance(configured, list | tuple):
        opts, scheds = (configured[0], configured[1]) if len(configured) == 2 else (configured, [])
        return opts[0], (scheds[0] if scheds else None)
    return configured, None


def hot_parts(model: Any) -> list[tuple[object, str]]:
    """What --compile compiles: the trained networks' forwards and the LIIF per-chunk query."""
    if hasattr(model, "unet"):
        return [(model.unet, "forward")]
    parts = [(getattr(model, name), "forward") for name in ("encoder", "decoder") if hasattr(model, name)]
    return parts + [(model.liif, "_query")]


def unet_step(model: Any, batch: dict[str, Any], optimizer: torch.optim.Optimizer,
              scheduler: Any) -> tuple[Callable[[], None], dict[str, Any]]:
    """Stage 2's step on ready latents (random, unit variance like scaled ones): t, noise,
    LatentDiffusionSR.latent_loss, backward, optimiser and EMA. -> (step, the latents' shapes)."""
    f = model.first_stage.downsample_factor
    b, _, h, w = batch["hr"].shape
    g = torch.Generator().manual_seed(0)
    shape = (b, model.unet.out_channels, h // f, w // f)
    z0, cond = (torch.randn(shape, generator=g).to(batch["hr"].device) for _ in range(2))

    def step() -> None:
        t = torch.randint(0, model.schedule.num_timesteps, (b,), device=z0.device)
        noise = torch.randn_like(z0)
        optimizer.zero_grad(set_to_none=True)
        loss = model.latent_loss(z0, cond, t, noise)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        model.on_train_batch_end(loss, batch, 0)

    return step, {"latent": list(shape[-2:])}


def bench_stage(args: argparse.Namespace, stage: str, peak: float | None,
                compile_errors: dict[str, str]) -> list[dict[str, Any]]:
    device = torch.device(args.device)
    config = args.config or STAGES[stage][1 if args.tiny else 0]
    torch.manual_seed(0)
    model = build_random_model(config, device, keep_ema=True).train()
    model.learning_rate = float(load_config(config).model.get("base_learning_rate", 1e-4))
    data = OmegaConf.to_container(load_config(config).data.params, resolve=True)
    batch_size = args.batch or int(data.get("batch_size", 1))
    batch = make_batch(data, batch_size, device)
    optimizer, scheduler = optimizers(model.configure_optimizers())

    def step() -> None:
        model.on_train_batch_start(batch, 0)
        optimizer.zero_grad(set_to_none=True)
        loss = model.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        model.on_train_batch_end(loss, batch, 0)

    if stage == "unet":
        step, latents = unet_step(model, batch, optimizer, scheduler)
        batch = {**batch, **latents}

    step()  # one-off work stays out of the count (the LDM encodes a batch for its latent scale first)
    flops, per_module = count_flops(step)  # the same ops in fp32 and under autocast
    by_module = {name: n for name, n in per_module.items() if name != "Global"}
    rows = []
    for use_compile, dtype in itertools.product(compile_variants(args.compile), args.dtype):
        def run(dtype: str = dtype) -> None:
            with autocast(device, dtype):
                step()

        compiling = compiled(hot_parts(model), run, args.compile_mode) if use_compile else contextlib.nullcontext(None)
        row: dict[str, Any] = {"stage": stage, "config": config, "batch": batch_size, "dtype": dtype,
                               "compile": use_compile, "hr": list(batch["hr"].shape[-2:]),
                               "lr": list(batch["lr"].shape[-2:]), "gt": list(batch["gt"].shape[-2:]),
                               "latent": batch.get("latent"), "status": "ok"}
        with compiling as error:
            if error:
                compile_errors[f"{stage} {dtype}"] = error
                continue
            rows.append(row)
            result = measure(run, device, args.warmup, args.repeats)
        if result is None:
            row["status"] = "oom"
            continue
        t = result.timing
        row["status"] = result.status
        achieved = flops / t.median_s / 1e12
        row.update(step_s=t.median_s, step_min_s=t.min_s, step_max_s=t.max_s, images_per_s=batch_size / t.median_s,
                   flops_per_step=flops, tflop_per_step=flops / 1e12, flops_by_module=by_module,
                   achieved_tflops=achieved, mfu=achieved / peak if peak else None,
                   peak_mem_gib=result.peak_mem_gib, peak_mem_extra_gib=result.peak_mem_extra_gib)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    argv = argv_of(argv)
    args = finish_args(parser().parse_args(argv))
    if args.config and len(args.stages) != 1:
        raise SystemExit("--config: names one stage's config; give exactly one --stages with it")
    device = torch.device(args.device)
    peak = bf16_matmul_peak_tflops(device)
    rows: list[dict[str, Any]] = []
    compile_errors: dict[str, str] = {}
    for stage in args.stages:
        rows += bench_stage(args, stage, peak, compile_errors)
        free_memory(device)  # the stage's model and optimiser state went with bench_stage's frame

    document = {
        "meta": metadata(args, argv),
        "bf16_matmul_peak_tflops": peak,
        "weights": "random (throughput does not depend on them)",
        "step": "on_train_batch_start, training_step (autocast for bf16), backward, optimiser (+ scheduler) step, "
                "EMA update; stage unet: LatentDiffusionSR.latent_loss on ready latents instead of training_step",
        "compiled": "UNet forward (LDM); encoder/decoder forwards and LIIF._query (stage 1, LIIF)"
        if args.compile else None,
        "compile_errors": compile_errors,
        "rows": rows,
    }
    write_json(args.out, document)
    print(f"training on {card_name(device)}; bf16 matmul peak: "
          f"{'n/a (CPU)' if peak is None else f'{peak:.1f} TFLOP/s'}")
    print(format_table(rows, COLUMNS))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
