"""Lightning callbacks used by main.py: image grids, safe last.ckpt, guards against lost or NaN runs."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from PIL import Image
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ldm.util import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temp file and rename: a crash mid-write never corrupts last.ckpt."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


class FiniteLossGuard(pl.Callback):
    """Stop at the first non-finite loss, before any checkpoint of that step is written.

    ModelCheckpoint callbacks always run after the others, so raising here keeps the last
    good checkpoint on disk untouched.
    """

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and not torch.isfinite(loss.detach()).all():
            first = batch.get("path", ["?"])[0] if isinstance(batch, dict) else "?"
            raise NonFiniteLossError(
                f"non-finite loss ({loss.item()}) at global step {trainer.global_step}, batch {batch_idx} "
                f"(first slice: {first}); the last good checkpoint is kept"
            )


class CheckpointOnExit(pl.Callback):
    """Save last.ckpt when training ends, and on SIGTERM / Ctrl-C, then print the resume command."""

    def __init__(self, ckpt_dir: str | os.PathLike, resume_hint: str) -> None:
        self.path = Path(ckpt_dir) / "last.ckpt"
        self.resume_hint = resume_hint

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.save_checkpoint(self.path)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt | SIGTERMException):
            trainer.save_checkpoint(self.path)
            if trainer.is_global_zero:
                print(
                    f"\ninterrupted at global step {trainer.global_step}; saved {self.path}\n"
                    f"resume with: {self.resume_hint}",
                    file=sys.stderr,
                    flush=True,
                )


class RNGStateCheckpoint(pl.Callback):
    """Carry the torch / numpy / python RNG states in checkpoints so a resumed CPU run draws the
    same augmentations, scales and noise as an uninterrupted one (kept as plain containers so the
    checkpoint still loads with weights_only=True)."""

    def state_dict(self) -> dict[str, Any]:
        import random

        np_state = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        import random

        torch.set_rng_state(state_dict["torch"])
        kind, keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        version, internal, gauss_next = state_dict["python"]
        random.setstate((version, tuple(internal), gauss_next))


def _to_display(images: list[torch.Tensor], height: int) -> np.ndarray:
    """Rows of (1, h, w) images in [-1, 1], resized to one height, as 8-bit for viewing only."""
    cells = []
    for img in images:
        img = img.detach().float().cpu()[None]
        width = max(1, round(img.shape[-1] * height / img.shape[-2]))
        img = F.interpolate(img, size=(height, width), mode="nearest-exact")[0, 0]
        cells.append(((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy())
        cells.append(np.full((height, 2), 255, np.uint8))
    return np.concatenate(cells[:-1], axis=1)


class ImageLogger(pl.Callback):
    """Write grids (one row per slice: LR | reconstructions or samples | HR) to <logdir>/images/.

    The model provides the panels through `log_images(batch) -> {name: (B, 1, h, w)}`.
    """

    def __init__(self, every_n_steps: int = 500, max_images: int = 4, height: int | None = None) -> None:
        self.every_n_steps = every_n_steps
        self.max_images = max_images
        self.height = height

    @rank_zero_only
    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: dict, split: str) -> None:
        # Not trainer.log_dir: it broadcasts across ranks, and this runs on rank 0 alone (DDP would hang).
        if not hasattr(pl_module, "log_images"):
            return
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            panels = pl_module.log_images({k: v[: self.max_images] if hasattr(v, "__getitem__") else v
                                           for k, v in batch.items()})
        pl_module.train(was_training)
        names = list(panels)
        height = self.height or max(int(p.shape[-2]) for p in panels.values())
        n = min(int(p.shape[0]) for p in panels.values())
        rows = [_to_display([panels[k][i] for k in names], height) for i in range(n)]
        width = max(r.shape[1] for r in rows)
        grid = np.concatenate([np.pad(r, ((0, 2), (0, width - r.shape[1])), constant_values=255) for r in rows])
        name = f"{'-'.join(names)}_gs-{trainer.global_step:06d}_e-{trainer.current_epoch:04d}.png"
        out = Path(self.root) / split / name
        with atomic_path(out) as tmp:
            Image.fromarray(grid).save(tmp, format="PNG")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.root = Path(getattr(trainer, "_ldm_logdir", trainer.default_root_dir)) / "images"

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and (step == 1 or step % self.every_n_steps == 0):
            self._log(trainer, pl_module, batch, "train")

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx == 0 and not trainer.sanity_checking:
            self._log(trainer, pl_module, batch, "val")


def resume_command(logdir: str | os.PathLike, argv: list[str]) -> str:
    """The command that continues this run: same flags, -r <logdir> instead of --base/-n."""
    keep, skip = [], False
    for arg in argv:
        if skip:
            if arg.startswith("-"):
                skip = False
            else:
                continue
        if arg in ("--base", "-b", "-n", "--name", "-r", "--resume"):
            skip = True
            continue
        keep.append(arg)
    return shlex.join([sys.executable, "main.py", "-r", str(logdir), *keep])


__all__ = [
    "AtomicCheckpointIO",
    "CheckpointOnExit",
    "FiniteLossGuard",
    "ImageLogger",
    "NonFiniteLossError",
    "RNGStateCheckpoint",
    "resume_command",
]
