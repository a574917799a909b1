"""Tiny log dirs written the way main.py writes them, without training, and stand-in models.

The stand-ins implement the SuperResolver protocol with bicubic inside, so the evaluation
protocol is tested independently of the real first stage / LDM.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from ldm.config import load_config
from ldm.data.degradation import upsample
from ldm.data.intensity import write_png16_hu
from ldm.experiment import build_model
from ldm.models.base import EMAMixin
from ldm.models.diffusion.samplers import Sampling

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def load_script(name: str):
    """Import eval_sr.py / sr.py from the repo root whatever sys.path pytest set up."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class FakeSR(EMAMixin, nn.Module):
    """Deterministic stand-in: bicubic upsampling times a gain (a weight the checkpoint carries)."""

    kind = "first_stage"

    def __init__(self, gain: float = 1.0, kind: str = "first_stage", use_ema: bool = False, ckpt_path=None):
        super().__init__()
        if ckpt_path is not None:
            raise FileNotFoundError(ckpt_path)  # like a model that would load init weights
        self.kind = kind
        self.net = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            self.net.weight.fill_(gain)
        self.init_ema(use_ema, decay=0.5)

    def ema_target(self) -> nn.Module:
        return self.net

    def super_resolve(self, lr, out_size, **sampling):
        return upsample(lr, out_size) * self.net.weight[0, 0]


class FakeLDM(FakeSR):
    """Stochastic stand-in with the LDM's sampling signature: bicubic + seeded noise, K samples."""

    def __init__(self, gain: float = 1.0, noise: float = 0.02, first_stage_config=None, use_ema: bool = False):
        super().__init__(gain, kind="ldm", use_ema=use_ema)
        if first_stage_config is not None and first_stage_config.get("params", {}).get("ckpt_path") is not None:
            raise FileNotFoundError(first_stage_config["params"]["ckpt_path"])
        self.noise = noise
        self.calls = []

    def sampling(self, sampler=None, steps=None, eta=None, tile=None):
        return Sampling.resolve(sampler or "ddim", steps, eta, num_timesteps=1000, default_steps=50, default_eta=1.0,
                                tile=tile or None)

    def super_resolve(self, lr, out_size, steps=None, eta=None, n_samples=1, sampler="ddim", seed=None,
                      generator=None, progress=False, tile=None):
        self.calls.append({"steps": steps, "eta": eta, "n_samples": n_samples, "seed": seed})
        seeds = [seed] * lr.shape[0] if isinstance(seed, int) else seed
        base = super().super_resolve(lr, out_size)
        if seeds is None:
            noise = torch.randn((lr.shape[0], n_samples, *out_size), generator=generator)
        else:  # one generator per image, as the LDM does with a list of seeds
            noise = torch.cat([torch.randn((1, n_samples, *out_size), generator=torch.Generator().manual_seed(int(s)))
                               for s in seeds])
        return base + self.noise * noise


def fake_model_config(kind: str = "first_stage", **params) -> dict:
    target = "logdir_helpers.FakeLDM" if kind == "ldm" else "logdir_helpers.FakeSR"
    if kind == "liif":
        params.setdefault("kind", "liif")
    return {"base_learning_rate": 1e-4, "target": target, "params": params}


def data_config(root: Path, hu_window=(-1024, 3071), **params) -> dict:
    return {
        "target": "ldm.data.datamodule.CTDataModule",
        "params": {
            "root": str(root),
            "train_list": str(root.parent / "train.txt"),
            "val_list": str(root.parent / "val.txt"),
            "test_list": str(root.parent / "test.txt"),
            "hu_window": list(hu_window),
            **params,
        },
    }


def make_logdir(base: Path, model_config: dict, data: dict, name: str = "tiny",
                stamp: str = "2025-01-02T03-04-05", state_dict=None) -> Path:
    """logs/<stamp>_<name>/ with configs/<stamp>-project.yaml and checkpoints/last.ckpt."""
    logdir = base / f"{stamp}_{name}"
    (logdir / "configs").mkdir(parents=True)
    (logdir / "checkpoints").mkdir()
    config = OmegaConf.create({"model": model_config, "data": data})
    OmegaConf.save(config, logdir / "configs" / f"{stamp}-project.yaml")
    if state_dict is None:
        state_dict = build_model(config, logdir).state_dict()  # as eval builds it: init ckpt_paths unset
    torch.save({"state_dict": state_dict, "global_step": 7}, logdir / "checkpoints" / "last.ckpt")
    return logdir


def phantom_hu(size: int = 64, seed: int = 0) -> np.ndarray:
    """A CT-like slice in HU: air, a body ellipse of soft tissue, lungs, bone and a little texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size - 0.5
    hu = np.full((size, size), -1000.0)
    body = (x / 0.45) ** 2 + (y / 0.35) ** 2 < 1
    hu[body] = 40.0
    for cx in (-0.18, 0.18):
        hu[((x - cx) / 0.13) ** 2 + (y / 0.22) ** 2 < 1] = -850.0
    hu[(x**2 + (y + 0.25) ** 2) < 0.004] = 900.0
    hu += body * rng.normal(0, 25, hu.shape)
    return hu


def write_slices(root: Path, n: int = 3, size: int = 64, folder: str = "patient1") -> list[str]:
    """n 16-bit HU PNG slices under root/folder; returns their names relative to root."""
    names = []
    for i in range(n):
        name = f"{folder}/slice_{i:03d}.png"
        write_png16_hu(root / name, phantom_hu(size, seed=i))
        names.append(name)
    return names


def write_split(root: Path, names: list[str], split: str = "test") -> Path:
    path = root.parent / f"{split}.txt"
    path.write_text("\n".join(names) + "\n")
    return path


TINY_CONFIGS = {
    "first_stage": ROOT / "configs" / "first-stage" / "ct-tiny.yaml",
    "liif": ROOT / "configs" / "baselines" / "liif-tiny.yaml",
    "ldm": ROOT / "configs" / "latent-diffusion" / "ct-tiny.yaml",
}


def tiny_model_config(kind: str) -> dict:
    """The model section of the project's tiny config for a kind (untrained weights are enough here)."""
    config = load_config(TINY_CONFIGS[kind])
    return OmegaConf.to_container(config.model, resolve=True)


def make_tiny_logdir(base: Path, kind: str, data_root: Path, name: str | None = None, **data_params) -> Path:
    """A log dir of a real tiny model (first stage, LIIF or LDM) whose checkpoint holds its initial weights.

    The LDM's config keeps a first-stage ckpt_path that does not exist, as a run copied to another
    machine would: its checkpoint already holds the first-stage weights.
    """
    torch.manual_seed(0)
    model_config = tiny_model_config(kind)
    if kind == "ldm":
        model_config["params"]["first_stage_config"]["params"]["ckpt_path"] = "/elsewhere/last.ckpt"
    data = data_config(data_root, **data_params)
    return make_logdir(base, model_config, data, name=name or f"{kind}-tiny")
