"""main.py as users run it: a subprocess on the tiny first-stage config, on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ldm.util import instantiate_from_config
from main import load_config

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "first-stage" / "ct-tiny.yaml"
LDM_CONFIGS = REPO / "configs" / "latent-diffusion"
PAPER_WEIGHT = LDM_CONFIGS / "paper-weight.yaml"

KILLER = '''
import os, signal
import pytorch_lightning as pl

class SigtermAt(pl.Callback):
    """Sends a signal to this process after training step `at_step` (a scheduler's kill, a Ctrl-C)."""
    def __init__(self, at_step: int, signal_name: str = "SIGTERM") -> None:
        self.at_step = at_step
        self.signum = getattr(signal, signal_name)
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), self.signum)


class PoisonAt(pl.Callback):
    """Turns every weight into NaN after step `at_step`: the next loss is not finite."""
    def __init__(self, at_step: int) -> None:
        self.at_step = at_step
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at_step:
            for p in pl_module.parameters():
                p.data.fill_(float("nan"))
'''


def run_main(args: list[str], tmp_path: Path, splits, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    data = [
        f"data.params.root={splits.root}",
        f"data.params.train_list={splits.train}",
        f"data.params.val_list={splits.val}",
        "data.params.batch_size=2",
    ]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1", **(extra_env or {})}
    return subprocess.run(
        [sys.executable, str(REPO / "main.py"), *args, "-l", str(tmp_path / "logs"), *data],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )


def only_run(tmp_path: Path, name: str = "") -> Path:
    runs = sorted((tmp_path / "logs").glob(f"*{name}"))
    assert len(runs) == 1, runs
    return runs[0]


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def test_train_writes_the_log_layout_and_resume_continues(tmp_path, ct_splits):
    overrides = ["lightning.trainer.max_steps=4", "lightning.trainer.val_check_interval=2",
                 "lightning.trainer.log_every_n_steps=1"]
    proc = run_main(["--base", str(TINY), "-t", *overrides], tmp_path, ct_splits)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = only_run(tmp_path)
    assert run.name.endswith("_ct-tiny")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4
    assert len(list((run / "configs").glob("*-project.yaml"))) == 1
    assert len(list((run / "configs").glob("*-lightning.yaml"))) == 1
    record = json.loads(next((run / "configs").glob("*-run.json")).read_text())
    assert record["seed"] == 23 and "main.py --base" in record["command"] and len(record["config_sha256"]) == 64
    assert list((run / "images" / "train").glob("*.png"))
    assert list((run / "images" / "val").glob("*.png"))
    assert (run / "csv" / "metrics.csv").read_text().count("train/loss") >= 1
    assert list((run / "tensorboard").glob("events.*"))
    assert list((run / "checkpoints").glob("best-*.ckpt")), "top-k by val/psnr"
    # the dotlist override is part of the snapshot
    snapshot = next((run / "configs").glob("*-lightning.yaml")).read_text()
    assert "max_steps: 4" in snapshot

    proc = run_main(["-r", str(run), "-t", "lightning.trainer.max_steps=6"], tmp_path, ct_splits)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert only_run(tmp_path) == run, "resume continues in the same log dir"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6


def test_sigterm_saves_and_resume_equals_an_uninterrupted_run(tmp_path, ct_splits):
    (tmp_path / "killer.py").write_text(KILLER)
    common = ["--base", str(TINY), "-t", "lightning.trainer.max_steps=7", "lightning.trainer.val_check_interval=3"]
    full = run_main([*common, "-n", "full"], tmp_path, ct_splits)
    assert full.returncode == 0, full.stderr[-3000:]

    killed = run_main([*common, "-n", "killed", "lightning.callbacks.killer.target=killer.SigtermAt",
                       "lightning.callbacks.killer.params.at_step=3"], tmp_path, ct_splits)
    assert killed.returncode != 0
    assert "resume with:" in killed.stderr and "-r" in killed.stderr
    run = only_run(tmp_path, "_killed")
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3

    resumed = run_main(["-r", str(run), "-t", "lightning.callbacks.killer.params.at_step=-1"], tmp_path, ct_splits)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(only_run(tmp_path, "_full") / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 7
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    states_a, states_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for sa, sb in zip(states_a.values(), states_b.values(), strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.target=ldm.models.nowhere.Model", "model.target: cannot import module 'ldm.models.nowhere'"),
        ("data.target=ldm.data.datamodule.NoSuchModule", "data.target: module 'ldm.data.datamodule' has no"),
    ],
)
def test_bad_target_is_a_one_line_error_naming_the_key(tmp_path, ct_splits, override, message):
    proc = run_main(["--base", str(TINY), "-t", override], tmp_path, ct_splits)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "logs").exists(), "no log dir for a run that never started"


def test_missing_section_and_missing_file(tmp_path, ct_splits):
    cfg = tmp_path / "no-model.yaml"
    cfg.write_text("data:\n  target: ldm.data.datamodule.CTDataModule\n")
    proc = run_main(["--base", str(cfg), "-t"], tmp_path, ct_splits)
    assert proc.returncode == 2 and "model: missing section" in proc.stderr
    proc = run_main(["--base", str(tmp_path / "nope.yaml"), "-t"], tmp_path, ct_splits)
    assert proc.returncode == 2 and "nope.yaml not found" in proc.stderr


def test_ctrl_c_finishes_the_step_saves_and_prints_the_resume_command(tmp_path, ct_splits):
    (tmp_path / "killer.py").write_text(KILLER)
    proc = run_main(["--base", str(TINY), "-t", "lightning.trainer.max_steps=6",
                     "lightning.callbacks.killer.target=killer.SigtermAt",
                     "lightning.callbacks.killer.params.at_step=2",
                     "lightning.callbacks.killer.params.signal_name=SIGINT"], tmp_path, ct_splits)
    assert proc.returncode != 0
    assert "Ctrl-C" in proc.stderr and "resume with:" in proc.stderr
    ckpt = torch.load(only_run(tmp_path) / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, ct_splits):
    (tmp_path / "killer.py").write_text(KILLER)
    proc = run_main(["--base", str(TINY), "-t", "lightning.trainer.max_steps=8",
                     "lightning.checkpoint_every_n_steps=2", "lightning.trainer.val_check_interval=100",
                     "lightning.callbacks.poison.target=killer.PoisonAt",
                     "lightning.callbacks.poison.params.at_step=3"], tmp_path, ct_splits)
    assert proc.returncode == 1
    assert "non-finite loss" in proc.stderr and "global step 4" in proc.stderr
    assert "config:" in proc.stderr and "log dir:" in proc.stderr
    ckpt = torch.load(only_run(tmp_path) / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


@pytest.mark.parametrize(
    "align", [["ct-tiny-align.yaml"], ["ct256-f4-align.yaml"], ["ct-demo.yaml", "ct-demo-align.yaml"]]
)
def test_the_paper_weight_overlay_changes_only_the_alignment_clip(align):
    """--base <align>.yaml paper-weight.yaml is the shipped stage 3 with the paper's unclamped weight."""
    bases = [str(LDM_CONFIGS / name) for name in align]
    clipped = load_config(bases, [])
    paper = load_config([*bases, str(PAPER_WEIGHT)], [])
    assert clipped.model.params.align_weight_max == 5.0
    assert paper.model.params.align_weight_max is None
    expected = OmegaConf.to_container(clipped, resolve=True)
    expected["model"]["params"]["align_weight_max"] = None
    assert OmegaConf.to_container(paper, resolve=True) == expected


def test_the_paper_weight_config_builds_a_model_whose_loss_is_unclamped():
    """At t = 0 the paper's weight a_0 / (1 - a_0) ~ 666 replaces the clip's 5; past t = 97 they agree."""
    models = {}
    for name, bases in {"clipped": [], "paper": [str(PAPER_WEIGHT)]}.items():
        config = load_config([str(LDM_CONFIGS / "ct-tiny-align.yaml"), *bases], [])
        torch.manual_seed(0)
        models[name] = instantiate_from_config(config.model, key="model").eval()
    assert models["paper"].alignment and models["paper"].align_weight_max is None

    torch.manual_seed(1)
    batch = {"hr": torch.rand(1, 1, 64, 64) * 2 - 1, "lr": torch.rand(1, 1, 16, 16) * 2 - 1}
    noise = torch.randn(1, 3, 16, 16)
    alpha0 = models["paper"].schedule.alphas_cumprod[0].item()
    with torch.no_grad():
        losses = {t: {name: m.loss(batch, torch.tensor([t]), noise).item() for name, m in models.items()}
                  for t in (0, 500)}
    assert losses[0]["paper"] / losses[0]["clipped"] == pytest.approx(alpha0 / (1 - alpha0) / 5.0, rel=1e-4)
    assert losses[500]["paper"] == pytest.approx(losses[500]["clipped"], rel=1e-6)
