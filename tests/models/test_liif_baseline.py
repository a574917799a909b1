from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from ldm.checkpoint import load_checkpoint
from ldm.data.batches import SRBatches
from ldm.models.liif_baseline import LIIFBaseline
from ldm.modules.edsr import EDSR
from ldm.modules.implicit.coords import make_coord
from ldm.modules.implicit.liif import lr_reading
from ldm.util import instantiate_from_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "baselines"


def tiny_liif(**params) -> LIIFBaseline:
    return LIIFBaseline(encoder_config={"n_resblocks": 2, "n_feats": 8}, liif_config={"hidden": [16, 16]}, **params)


def patches(b, size=32):
    """Smooth random slices as dataset items."""
    coarse = torch.rand(b, 1, 5, 5) * 2 - 1
    images = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return [{"image": image, "path": f"s{i}.png"} for i, image in enumerate(images)]


def lr_fixed_batch(b=2, lr_size=8, scale=3.0) -> dict:
    torch.manual_seed(0)
    return SRBatches((scale, scale), lr_size=lr_size)(patches(b))


def test_edsr_keeps_the_lr_size():
    edsr = EDSR(n_resblocks=2, n_feats=16)
    assert edsr(torch.randn(2, 1, 13, 9)).shape == (2, 16, 13, 9) and edsr.out_dim == 16


def test_feature_unfolding_is_the_default():
    model = tiny_liif()
    assert model.liif.feat_unfold and model.liif.layers[0].in_features == 8 * 9 + 4


@pytest.mark.parametrize("lr_skip", [False, True])
def test_super_resolve_any_size(lr_skip):
    model = tiny_liif(lr_skip=lr_skip).eval()
    sr = model.super_resolve(torch.randn(2, 1, 13, 9), (43, 29), n_samples=4)
    assert sr.shape == (2, 1, 43, 29)


def test_lr_skip_starts_from_the_bicubic_reading():
    model = tiny_liif(lr_skip=True).eval()
    lr = torch.randn(1, 1, 7, 6)
    sr = model.super_resolve(lr, (20, 15))
    reading = lr_reading(lr, make_coord((20, 15))[None])
    assert torch.equal(sr.reshape(1, -1), reading.reshape(1, -1))


def test_training_samples_queries_per_sample(monkeypatch):
    import ldm.models.liif_baseline as module

    seen = []
    original = module.sample_queries

    def spy(image, n, generator=None):
        out = original(image, n, generator)
        seen.append(out[0])
        return out

    monkeypatch.setattr(module, "sample_queries", spy)
    model = tiny_liif(sample_q=30)
    batch = lr_fixed_batch(b=3)
    assert batch["gt"].shape == (3, 1, 24, 24)
    model._loss(batch)
    (coords,) = seen
    assert coords.shape == (3, 30, 2)
    assert not torch.equal(coords[0], coords[1]) and not torch.equal(coords[1], coords[2])


def test_training_steps_reduce_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = tiny_liif(sample_q=10_000)  # every pixel: the same loss each step
    batch = lr_fixed_batch(b=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = model._loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_step_decay_of_the_learning_rate():
    model = tiny_liif(lr_decay_steps=3, lr_decay_gamma=0.5)
    config = model.configure_optimizers()
    assert config["lr_scheduler"]["interval"] == "step"
    scheduler = config["lr_scheduler"]["scheduler"]
    for _ in range(3):
        config["optimizer"].step()
        scheduler.step()
    assert config["optimizer"].param_groups[0]["lr"] == pytest.approx(0.5e-4)
    assert isinstance(tiny_liif().configure_optimizers(), torch.optim.Adam)


def test_log_images_panels():
    panels = tiny_liif().eval().log_images(lr_fixed_batch(b=3), max_images=2)
    assert list(panels) == ["lr", "sr", "gt"]
    assert panels["sr"].shape == panels["gt"].shape == (2, 1, 24, 24)


def test_trainer_fit_validates_and_reloads(tmp_path):
    model = tiny_liif(sample_q=64, lr_decay_steps=1)
    items = patches(4)
    train = DataLoader(items, batch_size=2, collate_fn=SRBatches((1.0, 4.0), lr_size=8))
    val = DataLoader(items[:2], batch_size=2, collate_fn=SRBatches((1.0, 4.0), lr_size=8, fixed_scale=4.0))
    trainer = pl.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(model, train, val)
    assert {"train/loss", "val/loss", "val/psnr", "val/ssim"} <= set(trainer.callback_metrics)
    path = tmp_path / "liif.ckpt"
    trainer.save_checkpoint(path)
    load_checkpoint(path)
    loaded = tiny_liif(ckpt_path=str(path))
    assert torch.equal(loaded.liif.layers[0].weight, model.liif.layers[0].weight)


@pytest.mark.parametrize("name", ["liif-tiny.yaml", "liif-edsr.yaml"])
def test_configs_build(name):
    config = OmegaConf.load(CONFIGS / name)
    model = instantiate_from_config(config.model)
    assert model.kind == "liif"
    instantiate_from_config(config.data)
    if name == "liif-tiny.yaml":
        batch = SRBatches((2.0, 2.0), lr_size=16)(patches(2, 64))
        assert model._loss(batch).isfinite()
