"""SR batches in both regimes, and the data module over the committed fixture slices."""

import math

import pytest
import torch

from ldm.data.batches import SRBatches
from ldm.data.datamodule import CTDataModule
from ldm.data.slices import CTSlices, SplitListError, read_split_list


def items(n: int = 3, size: int = 64) -> list[dict]:
    return [{"image": torch.rand(1, size, size) * 2 - 1, "path": f"s{i}.png"} for i in range(n)]


def test_hr_fixed_regime_shapes():
    torch.manual_seed(0)
    batches = SRBatches(scale_range=(1.5, 3.7), gt_size_range=(24, 48))
    for _ in range(5):
        batch = batches(items())
        lr_h = batch["lr"].shape[-2]
        assert batch["hr"].shape == (3, 1, 64, 64)
        assert 64 / 3.7 - 1 <= lr_h <= 64 / 1.5 + 1 and batch["lr"].shape[-1] == lr_h
        assert 24 <= batch["gt"].shape[-1] == batch["gt"].shape[-2] <= 48
        torch.testing.assert_close(batch["scale"], torch.full((3,), 64 / lr_h))
        assert batch["path"] == ["s0.png", "s1.png", "s2.png"]


def test_lr_fixed_regime_shapes():
    torch.manual_seed(0)
    batches = SRBatches(scale_range=(1.0, 3.7), lr_size=12)
    for _ in range(5):
        batch = batches(items())
        hr_size = batch["hr"].shape[-1]
        assert batch["lr"].shape == (3, 1, 12, 12)
        assert 12 <= hr_size <= math.ceil(12 * 3.7) and batch["hr"].shape[-2] == hr_size
        assert batch["gt"] is batch["hr"] or torch.equal(batch["gt"], batch["hr"])
        torch.testing.assert_close(batch["scale"], torch.full((3,), hr_size / 12))


@pytest.mark.parametrize("degradation", ["bicubic", "ct"])
def test_fixed_scale_batches_are_reproducible(degradation):
    batches = SRBatches(fixed_scale=3.7, degradation=degradation, noise_hu=10.0)
    data = items()
    a, b = batches(data), batches(data)
    torch.testing.assert_close(a["lr"], b["lr"])
    assert a["lr"].shape[-1] == round(64 / 3.7)


def test_bad_scale_range_is_refused():
    with pytest.raises(ValueError, match="scale_range"):
        SRBatches(scale_range=(0.5, 2.0))


def test_data_module_hr_fixed(ct_splits):
    dm = CTDataModule(
        root=str(ct_splits.root),
        train_list=str(ct_splits.train),
        val_list=str(ct_splits.val),
        batch_size=2,
        scale_range=(2.0, 4.0),
        gt_size_range=(32, 64),
        val_scale=4.0,
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["hr"].shape == (2, 1, 64, 64)
    assert 16 <= batch["lr"].shape[-1] <= 32
    assert batch["hr"].min() >= -1 and batch["hr"].max() <= 1
    val = next(iter(dm.val_dataloader()))
    assert val["lr"].shape == (2, 1, 16, 16) and val["gt"].shape == (2, 1, 64, 64)
    assert all("head_cranium" in p for p in val["path"])


def test_data_module_lr_fixed(ct_splits):
    dm = CTDataModule(
        root=str(ct_splits.root),
        train_list=str(ct_splits.train),
        val_list=str(ct_splits.val),
        batch_size=2,
        lr_size=8,
        scale_range=(1.0, 4.0),
        val_scale=3.0,
    )
    dm.setup("fit")
    assert dm.crop == 32
    batch = next(iter(dm.train_dataloader()))
    assert batch["lr"].shape == (2, 1, 8, 8)
    assert 8 <= batch["hr"].shape[-1] <= 32
    val = next(iter(dm.val_dataloader()))
    assert val["hr"].shape == (2, 1, 24, 24) and val["lr"].shape == (2, 1, 8, 8)


def test_empty_val_list_monitors_on_training_slices(ct_tree, write_splits):
    lists = write_splits(ct_tree, {"test": ["chest_lung2"]})
    assert lists["val"].read_text() == ""
    dm = CTDataModule(
        root=str(ct_tree),
        train_list=str(lists["train"]),
        val_list=str(lists["val"]),
        batch_size=2,
        monitor_from_train=2,
    )
    with pytest.warns(UserWarning, match="no validation patients"):
        dm.setup("fit")
    assert len(dm.datasets["val"]) == 2
    assert all(p in dm.datasets["train"].paths for p in dm.datasets["val"].paths)


def test_split_list_naming_missing_files(ct_tree, tmp_path):
    listing = tmp_path / "train.txt"
    listing.write_text("chest/chest_lung1_s01_slice_011.png\nchest/gone_slice_001.png\n")
    with pytest.raises(SplitListError, match=r"train\.txt.*1 listed slice.*gone_slice_001\.png"):
        read_split_list(listing, ct_tree)
    dm = CTDataModule(root=str(ct_tree), train_list=str(listing), val_list=None)
    with pytest.raises(SplitListError, match=r"train\.txt"):
        dm.setup("fit")


def test_split_list_missing_or_empty(ct_tree, tmp_path):
    with pytest.raises(SplitListError, match=r"nothere\.txt.*split\.py"):
        read_split_list(tmp_path / "nothere.txt", ct_tree)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(SplitListError, match=r"empty\.txt.*no slices"):
        read_split_list(tmp_path / "empty.txt", ct_tree)


def test_slices_resize_crop_and_range(ct_splits):
    paths = read_split_list(ct_splits.train, ct_splits.root)
    item = CTSlices(paths, resize=48, crop=32)[0]
    assert item["image"].shape == (1, 32, 32) and item["path"].endswith(".png")
    with pytest.raises(ValueError, match="smaller than crop"):
        CTSlices(paths, crop=80)[0]
