"""bench/gpu_measure.sh on the CPU with the tiny configs, and bench/quality_table.py on what it writes.

The GPU run is the same script with its defaults; this checks that the parts hand run dirs to each
other, that a run without some stages still evaluates what it has, and that PACK_TO holds the results.
"""

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from bench import quality_table

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "CT"
TINY = {
    "CONFIG_S1": "configs/first-stage/ct-tiny.yaml", "CONFIG_LIIF": "configs/baselines/liif-tiny.yaml",
    "CONFIG_S2": "configs/latent-diffusion/ct-tiny.yaml", "CONFIG_S3": "configs/latent-diffusion/ct-tiny-align.yaml",
    "TRAIN_FLAGS": "--precision 32", "DEVICE": "cpu", "FETCH": "0", "EVAL_LR": "16", "EVAL_SCALES": "2 4",
    "EVAL_STEPS": "2", "EVAL_PRECISION": "fp32", "EVAL_BATCH": "4", "OMP_NUM_THREADS": "1",
}


def gpu_measure(tmp_path, **env):
    data = tmp_path / "data"
    if not data.exists():
        shutil.copytree(FIXTURES, data / "CT")
    python_dir = str(Path(sys.executable).parent)
    full_env = {**os.environ, **TINY, "DATA_DIR": str(data), "PACK_TO": str(tmp_path / "pack"),
                "PATH": f"{python_dir}:{os.environ.get('PATH', '')}", "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(REPO / "bench" / "gpu_measure.sh"), str(tmp_path / "out")], env=full_env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.filterwarnings("ignore")
def test_data_train_eval_hand_over_and_pack(tmp_path):
    proc = gpu_measure(tmp_path, PARTS="data train eval", TRAIN="s1 liif-skip s2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    out = tmp_path / "out"
    runs = dict(line.split(": ", 1) for line in (out / "runs.txt").read_text().splitlines())
    assert runs["s1"] and runs["liif-skip"] and runs["s2"] and not runs["liif"] and not runs["s3"]
    assert (Path(runs["s2"]) / "checkpoints" / "DONE").is_file()
    mean8 = json.loads((out / "eval" / "ldm-mean8" / "summary.json").read_text())
    assert mean8["precision"] == "fp32" and mean8["n_samples"] == 8
    assert set(mean8["scales"]["x4"]["methods"]) == {"bicubic", "lanczos", "liif-skip", "s1", "s2 (1 sample)",
                                                       "s2 (mean of 8)"}
    assert (out / "DONE").is_file()
    bp = json.loads((out / "eval" / "ldm-1sample-bp20" / "summary.json").read_text())
    assert bp["back_projection"] == {"iterations": 20, "degradation": "bicubic"}

    # what a time-limited job hands back (PACK_TO): the log and one archive of the small files, no checkpoints
    assert sorted(p.name for p in (tmp_path / "pack").iterdir()) == ["gpu_measure.log", "results.tgz"]
    with tarfile.open(tmp_path / "pack" / "results.tgz") as tar:
        names = tar.getnames()
    assert "./eval/ldm-mean8/summary.json" in names and "./runs.txt" in names and "./DONE" in names
    assert not [n for n in names if n.endswith((".ckpt", ".png"))]

    # a second run reuses the finished runs and the split; without an LDM, the regressions are compared
    again = gpu_measure(tmp_path, PARTS="data train", TRAIN="s1")
    assert again.returncode == 0 and "reusing finished run" in again.stdout
    (out / "DONE").unlink()
    shutil.rmtree(Path(runs["s2"]))
    regressions = gpu_measure(tmp_path, PARTS="eval", EVAL_SCALES="2")
    assert regressions.returncode == 0, regressions.stdout[-3000:]
    doc = json.loads((out / "eval" / "regressions-bp20" / "metrics.json").read_text())
    assert list(doc["methods"]) == ["bicubic", "lanczos", "bicubic+bp", "s1", "liif-skip"]
    assert (out / "DONE").is_file()

    # the table and the goals from those folders
    table = quality_table.read_results([out / "eval"])
    assert {("bicubic", 1), ("liif-skip", 1), ("s1", 1), ("s2", 1), ("s2", 8), ("s2+bp", 1), ("liif-skip+bp", 1)} \
        <= set(table)
    assert set(table[("s2", 8)]) == {2.0, 4.0}
    text = quality_table.markdown(table)
    for row in ("| LDM, mean of 8 |", "| LIIF + LR skip |", "| LDM, 1 sample + back-projection |"):
        assert row in text
    names = [g["goal"] for g in quality_table.goals(table)]
    assert "LDM, mean of 8 LR-consistency >= 60 dB at x4" in names
    assert "LDM, 1 sample + back-projection PSNR >= best LIIF - 0.5 dB at x2" in names
    assert "LDM, 1 sample + back-projection beats bicubic + back-projection in PSNR at x4" in names
    assert not [n for n in names if n.startswith("bicubic + back-projection beats")]


def test_an_unknown_part_is_refused_before_anything_runs(tmp_path):
    proc = gpu_measure(tmp_path, PARTS="warmup")
    assert proc.returncode == 2 and "unknown part 'warmup'" in proc.stdout


def test_unknown_train_names_are_refused_before_anything_runs(tmp_path):
    proc = gpu_measure(tmp_path, PARTS="data train", TRAIN="s1 liif_skip")
    assert proc.returncode == 2 and "unknown run 'liif_skip'" in proc.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.filterwarnings("ignore")
def test_an_unfinished_run_is_neither_used_nor_reused(tmp_path):
    """A stage-1 run without checkpoints/DONE (interrupted) is retrained, and stage 2 uses the new one."""
    stale = tmp_path / "out" / "logs" / "2099-01-01T00-00-00_s1"
    (stale / "checkpoints").mkdir(parents=True)
    proc = gpu_measure(tmp_path, PARTS="data train", TRAIN="s1 s2")
    assert proc.returncode == 0, proc.stdout[-3000:]
    runs = dict(line.split(": ", 1) for line in (tmp_path / "out" / "runs.txt").read_text().splitlines())
    assert runs["s1"] != str(stale) and (Path(runs["s1"]) / "checkpoints" / "DONE").is_file()
    assert "reusing" not in proc.stdout


@pytest.mark.filterwarnings("ignore")
def test_a_time_limit_signal_still_packs_the_log_and_results(tmp_path):
    """SIGTERM to the whole process group (a time limit) mid-training: the run stops at a step,
    and the log and results.tgz still reach PACK_TO."""
    import signal
    import time

    data = tmp_path / "data"
    shutil.copytree(FIXTURES, data / "CT")
    env = {**os.environ, **TINY, "DATA_DIR": str(data), "PACK_TO": str(tmp_path / "pack"), "PYTHON": sys.executable,
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", "PARTS": "data train",
           "TRAIN": "s1", "TRAIN_FLAGS": "--precision 32 lightning.trainer.max_steps=100000"}
    proc = subprocess.Popen(["bash", str(REPO / "bench" / "gpu_measure.sh"), str(tmp_path / "out")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    log = tmp_path / "out" / "gpu_measure.log"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and "Epoch 1" in log.read_text(errors="replace")):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-3000:]
    packed = (tmp_path / "pack" / "gpu_measure.log").read_text(errors="replace")
    assert "FAILED (exit 143)" in packed and (tmp_path / "pack" / "results.tgz").is_file()
    run_dir = next((tmp_path / "out" / "logs").glob("*_s1"))
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()  # main.py stopped at a step and saved
    assert not (run_dir / "checkpoints" / "DONE").exists()  # and the run is not taken as finished
