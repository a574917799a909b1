"""`make demo` at its smallest: the whole pipeline as a subprocess on the committed fixture slices."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = ["lightning.trainer.max_steps=3", "lightning.trainer.max_time=null", "data.params.batch_size=2",
        "lightning.callbacks.image_logger.params.every_n_steps=2"]


def test_demo_runs_end_to_end_and_prints_the_table(tmp_path, fixtures_dir):
    shutil.copytree(fixtures_dir / "CT", tmp_path / "data" / "CT")
    cmd = [sys.executable, "demo.py", "--data_dir", str(tmp_path / "data"), "--no_fetch", "--logdir",
           str(tmp_path / "logs"), "--lr_size", "16", "--scales", "2", "3.5", "--steps", "2", "--real_steps", "2",
           "--n_samples", "2", "--every", "1", "--overrides", *TINY]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "x3.5" in out and "bicubic" in out and "lanczos" in out
    eval_dir = next((tmp_path / "logs").glob("*_demo-ldm-align")) / "eval" / "demo"
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert set(summary["scales"]) == {"x2", "x3.5"}
    # every row the README's table has: baselines, LIIF, first stage, LDM (1 sample and mean of K), stage 3
    rows = set(summary["scales"]["x2"]["methods"])
    assert rows == {"bicubic", "lanczos", "demo-liif", "demo-first-stage", "demo-ldm (1 sample)",
                    "demo-ldm (mean of 2)", "demo-ldm-align (1 sample)", "demo-ldm-align (mean of 2)"}, rows
    assert (eval_dir / "psnr_vs_scale.png").is_file() and list((eval_dir / "x2" / "images").rglob("*_compare.png"))
    # the last step super-resolves one whole held-out slice with sr.py and reports its cost
    real = eval_dir.parents[1] / "sr_real"
    assert "peak resident memory" in out and len(list(real.glob("chest_lung2*_vs_bicubic.png"))) == 1
    assert len([p for p in real.glob("chest_lung2*.png") if not p.stem.endswith("_vs_bicubic")]) == 1
    # a second run reuses the split and the finished runs
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0 and again.stdout.count("reusing") == 5
