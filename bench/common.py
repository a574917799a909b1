"""What every bench/ script shares: flags, device, timing, memory, the bf16 peak, models, tables, JSON.

The method (BENCHMARKS.md, "How the numbers are taken"): warm-up calls first (so compilation,
cuDNN autotuning and allocator growth stay out of the numbers), then N timed calls with CUDA events
on a GPU (perf_counter on the CPU, where calls are synchronous) and the median. Inputs are random
and never all-zero: zeros can run faster than real data and hide bad indexing. The MFU denominator
is the card's own measured bf16 matmul rate, not its datasheet figure.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
DTYPES = ("fp32", "bf16")  # ldm.precision.PRECISIONS

# LightningModule.log outside a Trainer only warns; the training bench calls training_step directly
warnings.filterwarnings("ignore", message=r".*self\.log\(\)` but the `self\.trainer` reference.*")


# -- flags ------------------------------------------------------------------------------------


def base_parser(
    name: str, description: str, default_config: str | None, tiny_config: str | None, repeats: int, warmup: int
) -> argparse.ArgumentParser:
    """The flags of every bench script; `name` picks the default --out (bench/out/<name>[-tiny].json)."""
    parser = argparse.ArgumentParser(
        prog=f"python bench/{name}.py", description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.set_defaults(bench=name, default_config=default_config, tiny_config=tiny_config)
    parser.add_argument("--config", default=None,
                        help=f"model config YAML (default {default_config}; --tiny: {tiny_config})" if default_config
                        else "model config YAML (default: each stage's own GPU or tiny config)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda if available)")
    parser.add_argument("--out", default=None, help=f"JSON file (default bench/out/{name}.json, -tiny with --tiny)")
    parser.add_argument("--tiny", action="store_true",
                        help="ct-tiny configs and tiny sizes on the CPU: checks the harness; not targets")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed calls per row (the median is reported)")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed calls before timing each row")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile'd variants (falls back to eager with a warning if it fails)")
    parser.add_argument("--compile_mode", default="default",
                        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                        help="torch.compile mode (reduce-overhead adds CUDA graphs: fewer launch gaps)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's; 1 avoids OpenMP spin-waits on a busy CPU)")
    parser.add_argument("--dtype", nargs="+", default=list(DTYPES), choices=DTYPES,
                        help="fp32 and/or bf16 (torch.autocast, as Lightning's bf16-mixed)")
    return parser


def finish_args(args: argparse.Namespace) -> argparse.Namespace:
    """Resolve the defaults that depend on other flags (config, device, out) and check counts."""
    if args.repeats < 1 or args.warmup < 0:
        raise SystemExit(f"bench: --repeats must be >= 1 and --warmup >= 0, got {args.repeats} / {args.warmup}")
    if args.config is None:
        args.config = args.tiny_config if args.tiny else args.default_config
    args.device = str(pick_device(args.device))
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    if args.out is None:
        args.out = str(REPO / "bench" / "out" / f"{args.bench}{'-tiny' if args.tiny else ''}.json")
    return args


def pick_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"bench: --device {name}: CUDA is not available here (try --device cpu --tiny)")
    return device


# -- timing and memory ------------------------------------------------------------------------


@dataclass
class Timing:
    median_s: float
    min_s: float
    max_s: float
    repeats: int
    warmup: int


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> Timing:
    """Median wall time of fn() after `warmup` untimed calls; CUDA events around each call on a GPU."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return Timing(statistics.median(times), min(times), max(times), repeats, warmup)


def reset_peak_memory(device: torch.device) -> float | None:
    """Start a peak-memory window; returns the GiB allocated now (what the window's peak sits on)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device) / 2**30


def peak_memory_gib(device: torch.device) -> float | None:
    """torch.cuda.max_memory_allocated since reset_peak_memory, in GiB; None on the CPU."""
    if device.type != "cuda":
        return None
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def is_oom(err: BaseException) -> bool:
    from ldm.util import is_out_of_memory

    return is_out_of_memory(err)


def free_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass
class Measurement:
    timing: Timing
    peak_mem_gib: float | None  # max_memory_allocated: weights, inputs and the call's own working set
    peak_mem_extra_gib: float | None  # the part above what was allocated before the row
    fell_back: list[str]  # compiled parts that fell back to eager during the row (ldm.compile.FELL_BACK)

    @property
    def status(self) -> str:
        """'ok', or what makes a compiled row not a compiled measurement."""
        return f"compile fell back: {', '.join(sorted(set(self.fell_back)))}" if self.fell_back else "ok"


def measure(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> Measurement | None:
    """time_call inside a peak-memory window; None when the device ran out of memory (a row says
    'oom' and the sweep goes on: the largest chunk or batch may simply not fit)."""
    from ldm.compile import FELL_BACK

    fallbacks_before = len(FELL_BACK)
    try:
        base = reset_peak_memory(device)
        timing = time_call(fn, device, warmup, repeats)
        peak = peak_memory_gib(device)
    except RuntimeError as err:  # torch.OutOfMemoryError is one
        if not is_oom(err):
            raise
        free_memory(device)
        return None
    return Measurement(timing, peak, None if peak is None else peak - base, FELL_BACK[fallbacks_before:])


def bf16_matmul_peak_tflops(device: torch.device, n: int = 8192, warmup: int = 5, repeats: int = 20) -> float | None:
    """The card's measured bf16 matmul rate (TFLOP/s): the MFU denominator. None on the CPU.

    A square n x n product on random inputs through whatever library torch uses, timed like the
    rest; datasheet rates are leads, not ceilings, so the ceiling is measured once per run.
    """
    if device.type != "cuda":
        return None
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)
    timing = time_call(lambda: torch.mm(a, b), device, warmup, repeats)
    return 2.0 * n**3 / timing.median_s / 1e12


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """torch.autocast for "bf16", nothing for "fp32": ldm.precision's, as eval_sr.py and sr.py run."""
    from ldm.precision import autocast as precision_autocast

    return precision_autocast(device, dtype)


# -- torch.compile ----------------------------------------------------------------------------


@contextlib.contextmanager
def compiled(
    owners: Sequence[tuple[object, str]], first_call: Callable[[], object], mode: str = "default"
) -> Iterator[str | None]:
    """Within the block, each owner.<attr> (a method, e.g. a module's forward) is its torch.compile'd version.

    ldm.compile.compile_parts does the shadowing (parameter names, EMA and optimiser unchanged),
    per shape (dynamic=False: every row is timed on the shape it compiled for). Compilation happens
    lazily, so first_call() runs once here: any failure, or a part falling back to eager, puts the
    originals back, warns, and yields the error line instead of None, so the row is skipped
    rather than timed eager under a "compiled" label. The originals are restored on exit either way.
    """
    from ldm.compile import compile_parts

    # dynamo caches per code object across torch.compile wrappers, and every dtype, chunk and batch
    # shape adds an entry; past the cache limit it would silently run eager: start each block afresh
    torch._dynamo.reset()
    restore = compile_parts(owners, mode, dynamic=False)
    error = None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first_call()
        fallbacks = [str(w.message) for w in caught if str(w.message).startswith("torch.compile of")]
        if fallbacks:
            error = fallbacks[0]
    except Exception as err:  # any failure of the first call means: measure eager only
        error = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    if error:
        warnings.warn(f"torch.compile failed, compiled rows skipped ({error})", stacklevel=3)
        restore()
    try:
        yield error
    finally:
        restore()


def compile_variants(enabled: bool) -> list[bool]:
    return [False, True] if enabled else [False]


# -- models and inputs ------------------------------------------------------------------------


def build_random_model(config_path: str | Path, device: torch.device, keep_ema: bool = False) -> nn.Module:
    """config.model with random weights: every ckpt_path (the LDM's first stage, init weights) set to None.

    ldm.experiment.build_model does exactly that for evaluation, so the bench builds what eval_sr.py
    builds, except that zero-initialised weights get small random values (fill_zero_initialised).
    Without keep_ema the EMA copy is dropped, as load_experiment does: sampling then runs
    on the live weights without the per-call swap that ema_scope() would add to every timing.
    """
    from ldm.config import load_config
    from ldm.experiment import build_model

    path = Path(config_path)
    model = build_model(load_config(path), path)
    if not keep_ema and getattr(model, "ema", None) is not None:
        model.ema = None
    fill_zero_initialised(model)
    return model.to(device)


@torch.no_grad()
def fill_zero_initialised(model: nn.Module, std: float = 0.02, seed: int = 0) -> int:
    """Give zero-initialised weights (the UNet's output and residual convs, LIIF's zero_init_output)
    small random values, as training leaves them; returns how many tensors it filled.

    Timing multiplies by them: zeros can run faster than real data, and an all-zero
    eps would make every sampler and step count return the same latent.
    """
    g = torch.Generator().manual_seed(seed)
    filled = 0
    for param in model.parameters():
        if param.dim() > 1 and not param.any():
            param.copy_(torch.randn(param.shape, generator=g) * std)
            filled += 1
    return filled


def random_images(n: int, size: tuple[int, int], seed: int, device: torch.device) -> torch.Tensor:
    """Smooth random slices (B, 1, H, W) in [-1, 1] with some fine texture: never all-zero."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    coarse = torch.rand(n, 1, max(2, h // 8), max(2, w // 8), generator=g) * 2 - 1
    smooth = torch.nn.functional.interpolate(coarse, size=size, mode="bicubic", align_corners=False)
    return (smooth + 0.05 * torch.randn(n, 1, h, w, generator=g)).clamp(-1, 1).to(device)


def count_flops(fn: Callable[[], object]) -> tuple[int, dict[str, int]]:
    """FLOPs of one fn() call (torch.utils.flop_counter: matmuls, convolutions, attention) and the
    total per top-level module class (e.g. 'UNetModel')."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    per_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items() if "." not in name}
    return counter.get_total_flops(), per_module


# -- rows, tables and the JSON document -------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """The 'reference settings' row that speed-ups are quoted against (issue 8: 200 DDIM steps,
    fp32, batch 8, eager), matched on the same input/output size."""

    steps: int
    dtype: str = "fp32"
    batch: int = 8
    compile: bool = False
    sampler: str = "ddim"

    def matches(self, row: dict[str, Any]) -> bool:
        keys = (row.get("steps"), row.get("dtype"), row.get("batch"), row.get("compile"), row.get("sampler", "ddim"))
        return keys == (self.steps, self.dtype, self.batch, self.compile, self.sampler)

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def add_speedups(rows: list[dict[str, Any]], reference: Reference, group: str, metric: str) -> None:
    """row['speedup_vs_reference'] = row[metric] / the reference row's, within each `group` value."""
    refs = {row[group]: row for row in rows if reference.matches(row) and row.get(metric)}
    for row in rows:
        row["reference"] = reference.matches(row)
        ref = refs.get(row[group])
        ok = ref is not None and row.get(metric)
        row["speedup_vs_reference"] = row[metric] / ref[metric] if ok else None


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, fmt) if fmt else str(value)


def format_table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A fixed-width text table; columns are (key, header, format spec)."""
    cells = [[header for _, header, _ in columns]]
    cells += [[_cell(row.get(key), fmt) for key, _, fmt in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def card_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()}"
    return f"CPU: {platform.processor() or platform.machine()}"


def uncommitted_changes() -> bool | None:
    """Whether tracked files differ from the commit (a figure then names code that is not in git)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def metadata(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """What identifies a measurement: the exact command, commit and date (ldm.util.run_record),
    the card and the software."""
    from ldm.util import run_record

    device = torch.device(args.device)
    return run_record(
        f"bench/{args.bench}.py", list(argv),
        bench=args.bench,
        uncommitted_changes=uncommitted_changes(),
        card=card_name(device),
        device=str(device),
        cpu_threads=torch.get_num_threads(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        tf32_cudnn=torch.backends.cudnn.allow_tf32,
        tiny=args.tiny,
        config=args.config,
        repeats=args.repeats,
        warmup=args.warmup,
        compile_mode=args.compile_mode if args.compile else None,
        timing="CUDA events, median of repeats after warm-up" if device.type == "cuda"
        else "perf_counter, median of repeats after warm-up (CPU smoke numbers, not targets)",
    )


def write_json(path: str | Path, document: dict[str, Any]) -> None:
    """Atomic (ldm.util.write_json_atomic): an interrupted run never leaves half a JSON file."""
    from ldm.util import write_json_atomic

    write_json_atomic(path, document)


def argv_of(argv: Sequence[str] | None) -> list[str]:
    return list(sys.argv[1:] if argv is None else argv)
