"""Implicit decoder speed and memory: rendering large outputs from a first stage's latent.

    python bench/decoder.py                          # ct256-f4 first stage, random weights
    python bench/decoder.py --compile
    python bench/decoder.py --tiny --device cpu      # harness check (CI)

"512 -> 2048" means an input slice of 512 px, i.e. a latent of 512/f px (128 x 128 at f = 4)
decoded to a feature map of the same size, rendered on a 2048 x 2048 grid (batch 1).
Rows per size and fp32/bf16 autocast:
  liif    the project's LIIF query (ldm.modules.implicit.liif: first layer applied on the grid, then
          gathered) on the decoder's feature map, for each chunk size (queries per MLP pass; 'full'
          = all at once), eager and, with --compile, with LIIF._query torch.compile'd;
  decode  the whole first-stage decode(z, out_size): the upsampling-free conv decoder + the query,
          at the config's chunk_size;
  naive   the plain LIIF query as published (grid_sample the feature, concatenate feature,
          relative coordinate and cell, then the whole MLP), with the same weights: the baseline the
          grid-first layer is measured against in the same run.
Mpx/s = output pixels / median latency; peak memory is torch.cuda.max_memory_allocated (includes
the weights and the input). rel_err: ||row - naive fp32|| / ||naive fp32|| on the same features.
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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `python bench/decoder.py`
from bench.common import (  # noqa: E402
    argv_of,
    autocast,
    base_parser,
    build_random_model,
    card_name,
    compile_variants,
    compiled,
    finish_args,
    format_table,
    free_memory,
    measure,
    metadata,
    write_json,
)
from ldm.modules.implicit.coords import make_cell, make_coord  # noqa: E402
from ldm.modules.implicit.liif import LIIF, lr_reading  # noqa: E402

SIZES = ["512:2048", "512:4096"]
CHUNKS = ["65536", "262144", "1048576", "full"]
NAIVE_CHUNK = 1048576  # RESEARCH.md's naive measurement used 1M-query chunks
TINY = {"sizes": ["32:128", "32:256"], "chunks": ["4096", "16384", "full"], "naive_chunk": 16384}

COLUMNS = [
    ("size", "in->out", ""), ("kind", "kind", ""), ("chunk", "chunk", ""), ("dtype", "dtype", ""),
    ("compile", "compile", ""), ("latency_ms", "ms", ".4g"), ("mpx_per_s", "Mpx/s", ".4g"),
    ("peak_mem_gib", "peak GiB", ".3f"), ("rel_err", "rel err", ".1e"), ("status", "status", ""),
]


def parser() -> argparse.ArgumentParser:
    p = base_parser("decoder", __doc__, "configs/first-stage/ct256-f4.yaml", "configs/first-stage/ct-tiny.yaml",
                    repeats=10, warmup=2)
    p.add_argument("--sizes", nargs="+", default=None, help=f"IN:OUT pixel sides (default {' '.join(SIZES)})")
    p.add_argument("--chunks", nargs="+", default=None, help=f"queries per MLP pass or 'full' (default {CHUNKS})")
    p.add_argument("--naive_chunk", type=int, default=None, help=f"the naive row's chunk (default {NAIVE_CHUNK})")
    p.add_argument("--no_naive", action="store_true", help="skip the naive reference rows (and rel_err)")
    return p


def naive_liif(
    liif: LIIF, feat: torch.Tensor, coords: torch.Tensor, cells: torch.Tensor, lr: torch.Tensor | None = None
) -> torch.Tensor:
    """LIIF's query_rgb as published, with liif's weights: feat (B, C, h, w), coords/cells (B, n, 2) -> (B, n, out).

    With lr (an lr_skip decoder): its pixel size as the lr_cell inputs and its bicubic reading added.

    Not importable from the project (its copy lives in tests/modules/test_liif.py, a test file), so
    a compact one is kept here: it is the plain version the grid-first query is timed against.
    """
    if liif.feat_unfold:
        feat = F.unfold(feat, 3, padding=1).view(feat.shape[0], feat.shape[1] * 9, *feat.shape[-2:])
    h, w = feat.shape[-2:]
    size = coords.new_tensor([h, w])
    feat_coord = make_coord((h, w), device=feat.device, flatten=False).permute(2, 0, 1)
    feat_coord = feat_coord[None].expand(feat.shape[0], 2, h, w)
    preds, areas = [], []
    for vx, vy in itertools.product((-1, 1), (-1, 1)):
        shift = coords.new_tensor([vx / h, vy / w])
        grid = (coords + shift + 1e-6).clamp(-1 + 1e-6, 1 - 1e-6).flip(-1).unsqueeze(1)  # (B, 1, n, 2) as (x, y)
        q_feat = F.grid_sample(feat, grid, mode="nearest", align_corners=False)[:, :, 0].transpose(1, 2)
        q_coord = F.grid_sample(feat_coord, grid, mode="nearest", align_corners=False)[:, :, 0].transpose(1, 2)
        rel = (coords - q_coord) * size
        inputs = [q_feat, rel.to(q_feat.dtype), (cells * size).to(q_feat.dtype)]
        if liif.lr_cell:
            lr_cell = 2.0 / coords.new_tensor([lr.shape[-2], lr.shape[-1]])
            inputs.append((lr_cell * size).expand_as(cells).to(q_feat.dtype))
        x = torch.cat(inputs, dim=-1)
        for i, layer in enumerate(liif.layers):
            x = layer(x if i == 0 else F.relu(x))
        preds.append(x)
        areas.append((rel[..., 0] * rel[..., 1]).abs() + 1e-9)
    total = torch.stack(areas).sum(0)
    values = sum(p * (a / total)[..., None] for p, a in zip(preds, areas[::-1], strict=True))
    return values if lr is None else values + lr_reading(lr, coords)


def naive_render(liif: LIIF, feat: torch.Tensor, out: int, chunk: int, lr: torch.Tensor | None = None) -> torch.Tensor:
    b = feat.shape[0]
    coords = make_coord((out, out), device=feat.device).expand(b, -1, 2)
    cells = make_cell((out, out), device=feat.device).expand(b, -1, 2)
    parts = [naive_liif(liif, feat, coords[:, i : i + chunk], cells[:, i : i + chunk], lr)
             for i in range(0, out * out, chunk)]
    return torch.cat(parts, dim=1).transpose(1, 2).reshape(b, -1, out, out)


def parse_pair(text: str, flag: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.split(":"))
    except ValueError as err:
        raise SystemExit(f"{flag}: expected IN:OUT like 512:2048, got '{text}'") from err
    return a, b


def parse_chunk(text: str) -> int | None:
    if text == "full":
        return None
    try:
        value = int(text)
    except ValueError as err:
        raise SystemExit(f"--chunks: expected a number of queries or 'full', got '{text}'") from err
    if value < 1:
        raise SystemExit(f"--chunks: must be >= 1, got {value}")
    return value


def measure_row(row: dict[str, Any], call: Any, args: argparse.Namespace, warmup: int,
                reference: torch.Tensor | None) -> torch.Tensor | None:
    """Time call() into row; returns its output (None after an out-of-memory, row status 'oom')."""
    holder: dict[str, torch.Tensor] = {}

    def run() -> None:
        holder["out"] = call()

    result = measure(run, torch.device(args.device), warmup, args.repeats)
    if result is None:
        row["status"] = "oom"
        return None
    t = result.timing
    row["status"] = result.status
    row.update(latency_ms=t.median_s * 1e3, latency_min_ms=t.min_s * 1e3, latency_max_ms=t.max_s * 1e3,
               mpx_per_s=row["out_size"] ** 2 / t.median_s / 1e6, peak_mem_gib=result.peak_mem_gib,
               peak_mem_extra_gib=result.peak_mem_extra_gib)
    out = holder.pop("out").float()
    if not torch.isfinite(out).all():
        row["status"] = "non-finite output"
    if reference is not None:
        row["rel_err"] = rel_err(out, reference)
    return out


def rel_err(out: torch.Tensor, reference: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (expected: fp32 far under 1e-3, bf16 1e-3 to 1e-2)."""
    return ((out.double() - reference.double()).norm() / reference.double().norm()).item()


def bench_size(args: argparse.Namespace, model: Any, in_size: int, out: int, chunks: list[int | None],
               naive_chunk: int, compile_errors: dict[str, str]) -> list[dict[str, Any]]:
    device = torch.device(args.device)
    f = model.downsample_factor
    if in_size % f:
        raise SystemExit(f"--sizes: the input side {in_size} must be a multiple of f = {f}")
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, model.embed_dim, in_size // f, in_size // f, generator=g).to(device)
    lr = torch.rand(1, 1, in_size, in_size, generator=g).to(device) * 2 - 1 if model.lr_skip else None
    with torch.no_grad():
        feat = model.decoder(z)  # the real feature map: the decoder's channel count and statistics
    liif = model.liif
    base = {"size": f"{in_size}->{out}", "in_size": in_size, "out_size": out, "latent": in_size // f,
            "feat_channels": feat.shape[1], "batch": 1, "status": "ok"}
    rows: list[dict[str, Any]] = []
    reference = None
    if not args.no_naive:
        for dtype in args.dtype:  # fp32 first (the choices' order): its output is every row's reference
            row = {**base, "kind": "naive", "chunk": str(naive_chunk), "dtype": dtype, "compile": False}
            with torch.no_grad(), autocast(device, dtype):
                naive = lambda: naive_render(liif, feat, out, naive_chunk, lr)  # noqa: E731
                result = measure_row(row, naive, args, args.warmup, None)
            if dtype == "fp32":
                reference = result
            elif reference is not None and result is not None:
                row["rel_err"] = rel_err(result, reference)
            rows.append(row)
    for use_compile, dtype in itertools.product(compile_variants(args.compile), args.dtype):
        first = lambda: liif.render(feat, (out, out), lr=lr, chunk_size=chunks[0])
        owners = [(liif, "_query"), (model.decoder, "forward")]  # the per-chunk query and the conv decoder
        compiling = compiled(owners, first, args.compile_mode) if use_compile else contextlib.nullcontext(None)
        warmup = max(args.warmup, 1) if use_compile else args.warmup  # each new chunk shape recompiles
        with torch.no_grad(), autocast(device, dtype), compiling as error:
            if error:
                compile_errors[f"{in_size}->{out} {dtype}"] = error
                continue
            for chunk in chunks:
                row = {**base, "kind": "liif", "chunk": "full" if chunk is None else str(chunk), "dtype": dtype,
                       "compile": use_compile}
                call = lambda chunk=chunk: liif.render(feat, (out, out), lr=lr, chunk_size=chunk)
                measure_row(row, call, args, warmup, reference)
                rows.append(row)
            row = {**base, "kind": "decode", "chunk": str(model.chunk_size or "full"), "dtype": dtype,
                   "compile": use_compile}
            decode = lambda: model.decode(z, (out, out), lr=lr)
            measure_row(row, decode, args, warmup, reference)
            rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    argv = argv_of(argv)
    args = finish_args(parser().parse_args(argv))
    device = torch.device(args.device)
    sizes = [parse_pair(s, "--sizes") for s in (args.sizes or (TINY["sizes"] if args.tiny else SIZES))]
    chunks = [parse_chunk(c) for c in (args.chunks or (TINY["chunks"] if args.tiny else CHUNKS))]
    naive_chunk = args.naive_chunk or (TINY["naive_chunk"] if args.tiny else NAIVE_CHUNK)
    args.dtype = sorted(set(args.dtype), key=("fp32", "bf16").index)

    torch.manual_seed(0)
    model = build_random_model(args.config, device).eval().requires_grad_(False)
    rows: list[dict[str, Any]] = []
    compile_errors: dict[str, str] = {}
    for in_size, out in sizes:
        rows += bench_size(args, model, in_size, out, chunks, naive_chunk, compile_errors)
        free_memory(device)

    document = {
        "meta": metadata(args, argv),
        "model": {"config": args.config, "weights": "random", "feat_unfold": model.liif.feat_unfold,
                  "liif_widths": [layer.out_features for layer in model.liif.layers], "lr_skip": model.lr_skip},
        "sizes": "IN -> OUT: an input slice of IN px, i.e. a latent of IN/f px, rendered on an OUT x OUT grid "
                 "(batch 1)",
        "compiled": "LIIF._query and the conv decoder (torch.compile, dynamic=False)" if args.compile else None,
        "compile_errors": compile_errors,
        "rows": rows,
    }
    write_json(args.out, document)
    print(f"decoder on {card_name(device)}")
    print(format_table(rows, COLUMNS))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
