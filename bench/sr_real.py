"""sr.py on a real-size slice: wall time and peak resident memory of each whole command.

    python bench/sr_real.py --input data/CT/chest/chest_lung2/chest_lung2_slice_030.png \
        --exp logs/<demo LDM run> --config configs/latent-diffusion/ct256-f4.yaml --scales 2 4

Each row runs `python sr.py --exp <run> --input <slice> --scale S --steps N` as its own process
(so nothing is shared or cached between rows) and reads the child's peak resident set size from
the kernel (os.wait4), which is what an out-of-memory killer would see: model, data, PyTorch and
the interpreter together. A --config is built with random weights (time and memory only: they do
not depend on the weights) and saved as a run in a temporary folder first. The table goes to
stdout, the rows and the commands to --out (JSON).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, argv_of, build_random_model, card_name, format_table, uncommitted_changes, write_json  # noqa: E402
from ldm.config import load_config  # noqa: E402
from ldm.util import run_record  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python bench/sr_real.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="a real-size slice (PNG, DICOM) or a volume")
    p.add_argument("--exp", nargs="*", default=[], help="trained runs (log dirs) to run sr.py with")
    p.add_argument("--config", nargs="*", default=[], help="model configs to run with random weights")
    p.add_argument("--scales", nargs="+", type=float, default=[2.0, 4.0])
    p.add_argument("--steps", type=int, default=20, help="sampler steps (LDM runs)")
    p.add_argument("--sr_args", default="", help="more sr.py flags, e.g. '--tile 0' or '--device cuda'")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per row before it is stopped")
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "sr_real.json"))
    return p


def random_run(config: str, folder: Path) -> Path:
    """A log dir (configs/<stamp>-project.yaml, checkpoints/last.ckpt) holding `config` with random weights."""
    torch.manual_seed(0)
    model = build_random_model(config, torch.device("cpu"), keep_ema=True)  # the run a checkpoint loads into
    if hasattr(model, "latent_scale_set"):
        model.latent_scale_set.fill_(True)
    logdir = folder / f"random_{Path(config).stem}"
    (logdir / "configs").mkdir(parents=True)
    (logdir / "checkpoints").mkdir()
    OmegaConf.save(load_config(config), logdir / "configs" / "random-project.yaml")
    torch.save({"state_dict": model.state_dict(), "global_step": 0}, logdir / "checkpoints" / "last.ckpt")
    return logdir


def run_sr(command: list[str], timeout: float) -> dict[str, Any]:
    """Wall time, peak RSS (GiB) and exit code of one sr.py process, and its last output line.

    os.wait4 gives this child's own resource usage (RUSAGE_CHILDREN would be a running maximum
    over every child so far); a negative rc is the signal that ended it (-9: killed).
    """
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        timer.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        lines = [line for line in log.read().splitlines() if line.strip()]
    return {"rc": proc.returncode, "wall_s": round(wall, 1), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),
            "last_line": lines[-1][:300] if lines else ""}


def main(argv: list[str] | None = None) -> int:
    argv = argv_of(argv)
    args = parser().parse_args(argv)
    if not Path(args.input).exists():
        raise SystemExit(f"--input {args.input}: no such file or folder")
    if not args.exp and not args.config:
        raise SystemExit("give --exp runs and/or --config files to measure")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = [(exp, "trained") for exp in args.exp]
        runs += [(str(random_run(config, Path(tmp))), f"random ({config})") for config in args.config]
        for run, weights in runs:
            for scale in args.scales:
                out = Path(tmp) / "sr"
                command = [sys.executable, "sr.py", "--exp", run, "--input", args.input, "--scale", f"{scale:g}",
                           "--steps", str(args.steps), "--out", str(out), "--no_progress", *args.sr_args.split()]
                row = {"run": Path(run).name, "weights": weights, "scale": scale, "steps": args.steps,
                       **run_sr(command, args.timeout)}
                written = sorted(out.glob("*.png")) + sorted(out.glob("*.nii.gz"))
                row["output"] = "x".join(map(str, _image_size(written[0]))) if row["rc"] == 0 and written else None
                print(f"{row['run']} x{scale:g}: rc {row['rc']}, {row['wall_s']} s, peak {row['peak_rss_gib']} GiB, "
                      f"output {row['output']}", flush=True)
                rows.append(row)
    device = "cuda" if "cuda" in args.sr_args else "cpu"
    document = {"meta": run_record("bench/sr_real.py", argv, bench="sr_real", card=card_name(torch.device(device)),
                                   cpu_threads=torch.get_num_threads(), torch=torch.__version__,
                                   uncommitted_changes=uncommitted_changes(), input=args.input),
                "rows": rows}
    write_json(args.out, document)
    print(format_table(rows, [("run", "run", "s"), ("weights", "weights", "s"), ("scale", "x", "g"),
                              ("output", "output", "s"), ("wall_s", "wall s", ".1f"),
                              ("peak_rss_gib", "peak RSS GiB", ".2f"), ("rc", "rc", "d")]))
    return 0 if all(row["rc"] == 0 for row in rows) else 1


def _image_size(path: Path) -> tuple[int, ...]:
    """(rows, cols) of a PNG, the array shape of a NIfTI volume."""
    if path.name.endswith(".nii.gz"):
        import nibabel as nib

        return tuple(nib.load(path).shape)
    from PIL import Image

    with Image.open(path) as image:
        return image.height, image.width


if __name__ == "__main__":
    sys.exit(main())
