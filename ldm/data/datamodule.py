"""The Lightning data module that configs name under `data:`."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import pytorch_lightning as pl

from ldm.data.batches import SRBatches
from ldm.data.intensity import FULL_WINDOW, check_window
from ldm.data.loader import ResumableLoader
from ldm.data.slices import CTSlices, read_split_list


class CTDataModule(pl.LightningDataModule):
    """Patient-wise split lists (split.py) -> SR batches.

    root: folder the split lists are relative to (data/CT); train/val/test_list: split files.
    hu_window: HU window mapped to [-1, 1]; resize / crop: see CTSlices.
    scale_range, gt_size_range, lr_size, degradation, noise_hu: see SRBatches.
    val_scale: the fixed scale of validation batches.
    monitor_from_train: when the val list is absent or empty (too few patients for a val split),
        this many evenly spaced training slices are used to monitor training; they are training
        patients, so such numbers are never a held-out result.
    seed: the data's own seed (default: main.py's --seed): every crop, flip, scale and noise draw
        is a function of (seed, epoch, position), so runs are reproducible and resumable.
    """

    def __init__(
        self,
        root: str = "data/CT",
        train_list: str = "data/train.txt",
        val_list: str | None = "data/val.txt",
        test_list: str | None = "data/test.txt",
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        hu_window: tuple[float, float] = FULL_WINDOW,
        resize: int | None = None,
        crop: int | None = None,
        augment: bool = True,
        scale_range: tuple[float, float] = (1.0, 4.0),
        gt_size_range: tuple[int, int] | None = None,
        lr_size: int | None = None,
        degradation: str = "bicubic",
        noise_hu: float = 0.0,
        val_scale: float = 4.0,
        monitor_from_train: int = 0,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.lists = {"train": train_list, "val": val_list, "test": test_list}
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.hu_window = check_window(tuple(hu_window))
        self.resize = resize
        if lr_size is not None and crop is None:
            crop = math.ceil(lr_size * float(scale_range[1]))  # room for the largest HR patch
        self.crop = crop
        self.augment = augment
        self.monitor_from_train = monitor_from_train
        self.seed = int(os.environ.get("PL_GLOBAL_SEED", 23)) if seed is None else int(seed)
        width = self.hu_window[1] - self.hu_window[0]
        common = dict(lr_size=lr_size, degradation=degradation, noise_hu=noise_hu, window_width=width)
        self.train_batches = SRBatches(tuple(scale_range), gt_size_range, **common)
        self.val_batches = SRBatches(tuple(scale_range), None, fixed_scale=val_scale, **common)
        self.datasets: dict[str, CTSlices] = {}

    def _dataset(self, paths: list[Path], train: bool) -> CTSlices:
        return CTSlices(paths, self.hu_window, self.resize, self.crop, augment=train and self.augment)

    def setup(self, stage: str | None = None) -> None:
        train_paths = read_split_list(self.lists["train"], self.root)
        self.datasets["train"] = self._dataset(train_paths, train=True)
        val_list = self.lists["val"]
        has_val = val_list and Path(val_list).is_file() and Path(val_list).read_text().strip()
        if has_val:
            self.datasets["val"] = self._dataset(read_split_list(val_list, self.root), train=False)
        elif self.monitor_from_train > 0:
            step = max(1, len(train_paths) // self.monitor_from_train)
            warnings.warn(
                f"{val_list}: no validation patients; monitoring on {self.monitor_from_train} training slices",
                stacklevel=2,
            )
            self.datasets["val"] = self._dataset(train_paths[::step][: self.monitor_from_train], train=False)

    def _loader(self, name: str, train: bool) -> ResumableLoader:
        return ResumableLoader(
            self.datasets[name],
            batch_size=self.batch_size if train else self.val_batch_size,
            seed=self.seed,
            shuffle=train,
            drop_last=train and len(self.datasets[name]) >= self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=self.train_batches if train else self.val_batches,
        )

    def train_dataloader(self) -> ResumableLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> ResumableLoader | list:
        return self._loader("val", train=False) if "val" in self.datasets else []
