"""Distributed training as users run it on a CPU: `main.py --num_processes 2` (DDP over gloo).

Lightning starts rank 1 by re-running main.py; a test-only callback (RECORDER, put on the
PYTHONPATH of the run) writes what each rank trained on into the run's log dir, so the test
also sees that both ranks agreed on one log dir.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "first-stage" / "ct-tiny.yaml"

RECORDER = '''
import json
from pathlib import Path

import pytorch_lightning as pl
import torch


class RecordRank(pl.Callback):
    """Per rank, into <log dir>/ranks/: the slices of every training batch, and the final weights."""

    def _dir(self, trainer):
        out = Path(trainer._ldm_logdir) / "ranks"
        out.mkdir(parents=True, exist_ok=True)
        return out

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        record = {"epoch": trainer.current_epoch, "step": trainer.global_step, "paths": list(batch["path"])}
        with open(self._dir(trainer) / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\\n")

    def on_train_end(self, trainer, pl_module):
        torch.save({k: v.detach().clone() for k, v in pl_module.state_dict().items()},
                   self._dir(trainer) / f"rank{trainer.global_rank}-weights.pt")
'''


def run_ddp(args: list[str], tmp_path: Path, splits, timeout: float = 150) -> tuple[int, str]:
    """main.py with 2 CPU processes; returns (exit code, stdout + stderr of both ranks).

    The run gets its own process group so that a hang cannot leave rank 1 behind.
    """
    data = [f"data.params.root={splits.root}", f"data.params.train_list={splits.train}",
            f"data.params.val_list={splits.val}", "data.params.batch_size=2"]
    recorder = ["lightning.callbacks.record.target=ddp_recorder.RecordRank"]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "main.py"), *args, "--num_processes", "2", "-l", str(tmp_path / "logs"),
         *data, *recorder],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"2-process run did not finish in {timeout} s:\n{out[-3000:]}")
    return proc.returncode, out


def seen_by_rank(run: Path) -> dict[int, list[dict]]:
    return {rank: [json.loads(line) for line in (run / "ranks" / f"rank{rank}.jsonl").read_text().splitlines()]
            for rank in (0, 1)}


def test_two_cpu_processes_shard_the_slices_save_one_checkpoint_and_resume(tmp_path, ct_splits):
    (tmp_path / "ddp_recorder.py").write_text(RECORDER)
    train = {str(ct_splits.root / name) for name in ct_splits.train.read_text().split()}
    assert len(train) == 4  # batch 2 per rank: each epoch is one step, both ranks together see all 4

    code, out = run_ddp(["--base", str(TINY), "-t", "lightning.trainer.max_steps=3",
                         "lightning.trainer.val_check_interval=2"], tmp_path, ct_splits)
    assert code == 0, out[-4000:]
    runs = list((tmp_path / "logs").iterdir())
    assert len(runs) == 1, f"both ranks write into one log dir: {runs}"
    run = runs[0]
    assert out.count("log dir:") == 1, "rank 0 alone reports and writes the run's files"
    assert len(list((run / "configs").glob("*-project.yaml"))) == 1
    # the learning rate scales with the 2 processes, as printed, and the optimizer used it
    assert "learning rate 1.00e-03 = 1 (accumulate) x 2 (devices) x 1 (nodes) x 2 (batch) x 2.50e-04 (base)" in out
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-3)
    assert sorted(p.name for p in (run / "checkpoints").glob("last*")) == ["last.ckpt"]

    # the ranks trained on different slices and ended with the same weights (gradients all-reduced)
    w0, w1 = (torch.load(run / "ranks" / f"rank{r}-weights.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert all(torch.equal(w0[k], ckpt["state_dict"][k]) for k in w0)
    (run / "ranks" / "rank0-weights.pt").unlink()
    (run / "ranks" / "rank1-weights.pt").unlink()

    code, out = run_ddp(["-r", str(run), "-t", "lightning.trainer.max_steps=5"], tmp_path, ct_splits)
    assert code == 0, out[-4000:]
    assert list((tmp_path / "logs").iterdir()) == [run], "resume continues in the same log dir"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 5
    w0, w1 = (torch.load(run / "ranks" / f"rank{r}-weights.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(w0[k], w1[k]) and torch.equal(w0[k], ckpt["state_dict"][k]) for k in w0)

    # every step of both runs, once per rank; each epoch split into two disjoint halves of the list
    seen = seen_by_rank(run)
    for rank, records in seen.items():
        assert [r["step"] for r in records] == [0, 1, 2, 3, 4], (rank, records)
    by_epoch: dict[int, dict[int, set[str]]] = defaultdict(dict)
    for rank, records in seen.items():
        for r in records:
            assert len(r["paths"]) == 2
            by_epoch[r["epoch"]][rank] = set(r["paths"])
    assert sorted(by_epoch) == [0, 1, 2, 3, 4]
    for epoch, halves in by_epoch.items():
        assert not halves[0] & halves[1], f"epoch {epoch}: both ranks trained on {halves[0] & halves[1]}"
        assert halves[0] | halves[1] == train, epoch
    assert len({frozenset(h[0]) for h in by_epoch.values()}) > 1, "each epoch deals the slices anew"


def test_num_processes_with_gpus_is_a_usage_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "main.py"), "--base", str(TINY), "-t", "--gpus", "0,", "--num_processes", "2",
         "-l", str(tmp_path / "logs")],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "--num_processes 2" in proc.stderr and "--gpus" in proc.stderr
    assert not (tmp_path / "logs").exists()
