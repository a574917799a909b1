from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ldm.checkpoint import CheckpointMismatchError, load_checkpoint
from ldm.config import load_config
from ldm.data.batches import SRBatches
from ldm.data.degradation import degrade
from ldm.data.intensity import FULL_WINDOW
from ldm.data.slices import CTSlices
from ldm.metrics import psnr, unit_to_01
from ldm.models.autoencoder import ImplicitAutoencoder
from ldm.models.liif_baseline import LIIFBaseline
from ldm.modules.implicit.coords import make_cell, make_coord
from ldm.modules.implicit.liif import lr_reading
from ldm.modules.resample import upsample
from ldm.util import ConfigError, instantiate_from_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "first-stage"


def tiny_ae(ch_mult=(1, 2, 2), **params) -> ImplicitAutoencoder:
    nets = dict(ch=8, ch_mult=list(ch_mult), num_res_blocks=1, z_channels=4)
    return ImplicitAutoencoder(
        encoder_config=nets, decoder_config={**nets, "out_ch": 8}, liif_config={"hidden": [16, 16]}, **params
    )


def smooth_slices(b, size):
    """Smooth random images in [-1, 1], as (1, H, W) dataset items (learnable, unlike white noise)."""
    coarse = torch.rand(b, 1, 4, 4) * 2 - 1
    images = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return [{"image": image, "path": f"s{i}.png"} for i, image in enumerate(images)]


def sr_batch(b=2, size=32, gt=40, scale=2.5) -> dict:
    torch.manual_seed(0)
    return SRBatches(scale_range=(scale, scale), gt_size_range=(gt, gt))(smooth_slices(b, size))


@pytest.mark.parametrize("ch_mult,f", [((1,), 1), ((1, 2), 2), ((1, 2, 2), 4), ((1, 1, 2, 2), 8)])
def test_encode_decode_shapes(ch_mult, f):
    ae = tiny_ae(ch_mult, embed_dim=3)
    assert ae.downsample_factor == f
    z = ae.encode(torch.randn(2, 1, 32, 32))
    assert z.shape == (2, 3, 32 // f, 32 // f)
    assert ae.decode(z, (64, 64)).shape == (2, 1, 64, 64)
    assert ae.decode(z, (100, 37)).shape == (2, 1, 100, 37)


def test_decode_at_coords_matches_the_rendered_grid():
    ae = tiny_ae().eval()
    z = ae.encode(torch.randn(1, 1, 16, 16))
    image = ae.decode(z, (20, 12))
    coords, cells = make_coord((20, 12))[None], make_cell((20, 12))[None]
    values = ae.decode(z, coords=coords, cells=cells)
    assert values.shape == (1, 240, 1)
    assert torch.allclose(values.reshape(1, 1, 20, 12), image, atol=1e-6)
    with pytest.raises(ValueError, match="out_size"):
        ae.decode(z)


def test_kl_latent_samples_in_training_and_takes_the_mode_in_eval():
    ae = tiny_ae(latent="kl", embed_dim=3, kl_weight=0.5)
    x = torch.randn(2, 1, 16, 16)
    assert ae.encoder(x).shape == (2, 6, 4, 4)  # mean and log-variance
    ae.train()
    assert not torch.equal(ae.encode(x), ae.encode(x))
    ae.eval()
    z = ae.encode(x)
    assert z.shape == (2, 3, 4, 4) and torch.equal(z, ae.encode(x))
    ae.train()
    losses = ae._losses(sr_batch(size=16, gt=20))
    # weighted per output pixel, like the mean L1
    assert losses["kl"] > 0 and torch.isclose(losses["loss"], losses["l1"] + 0.5 * losses["kl"] / (20 * 20))


def test_deterministic_latent_has_no_kl():
    ae = tiny_ae()
    assert ae.encoder(torch.randn(1, 1, 16, 16)).shape == (1, 3, 4, 4)
    assert set(ae._losses(sr_batch(size=16, gt=20))) == {"loss", "l1"}


def test_unknown_latent_is_refused():
    with pytest.raises(ValueError, match="latent"):
        tiny_ae(latent="vq")


def test_lr_skip_decodes_a_correction_to_the_bicubic_reading():
    ae = tiny_ae(lr_skip=True).eval()
    lr = torch.randn(2, 1, 8, 8)
    z = ae.encode(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match="lr_skip"):
        ae.decode(z, (24, 24))
    # the untrained correction starts at zero: the output is exactly the LR's bicubic reading
    image = ae.decode(z, (24, 20), lr=lr)
    reading = lr_reading(lr, make_coord((24, 20)).expand(2, -1, -1))
    assert torch.equal(image.reshape(2, -1), reading.reshape(2, -1))
    # and in general, the MLP output plus that reading: the MLP sees the LR's size, not its values
    torch.nn.init.normal_(ae.liif.layers[-1].weight)
    other = torch.randn(2, 1, 8, 8)
    other_reading = lr_reading(other, make_coord((24, 20)).expand(2, -1, -1)).reshape(2, 1, 24, 20)
    correction = ae.decode(z, (24, 20), lr=lr) - reading.reshape(2, 1, 24, 20)
    assert torch.allclose(ae.decode(z, (24, 20), lr=other) - other_reading, correction, atol=1e-5)
    assert correction.abs().max() > 1e-3
    # ... and it is told how blurred that reading is: another LR size, another correction
    coarse = torch.randn(2, 1, 4, 4)
    coarse_reading = lr_reading(coarse, make_coord((24, 20)).expand(2, -1, -1)).reshape(2, 1, 24, 20)
    assert not torch.allclose(ae.decode(z, (24, 20), lr=coarse) - coarse_reading, correction, atol=1e-4)


def test_lr_is_ignored_without_lr_skip():
    ae = tiny_ae().eval()
    z = ae.encode(torch.randn(1, 1, 16, 16))
    assert torch.equal(ae.decode(z, (20, 20), lr=torch.randn(1, 1, 5, 5)), ae.decode(z, (20, 20)))


@pytest.mark.parametrize("lr_skip", [False, True])
def test_super_resolve_any_size(lr_skip):
    ae = tiny_ae(lr_skip=lr_skip, max_input_scale=4.0).eval()
    sr = ae.super_resolve(torch.randn(2, 1, 13, 9), (43, 29), n_samples=3, steps=5)
    assert sr.shape == (2, 1, 43, 29)  # deterministic: one sample whatever n_samples asks


def test_frozen_decode_is_differentiable_in_the_latent():
    ae = tiny_ae().eval().requires_grad_(False)
    with torch.no_grad():
        z0 = ae.encode(torch.randn(1, 1, 16, 16))
    z = z0.clone().requires_grad_(True)
    ae.decode(z, (32, 32)).square().mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_training_steps_reduce_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    ae = tiny_ae(grad_loss_weight=0.1)
    batch = sr_batch(size=16, gt=24)
    optimizer = torch.optim.Adam(ae.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = ae._losses(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_log_images_panels():
    ae = tiny_ae().eval()
    panels = ae.log_images(sr_batch(b=3, size=16, gt=24), max_images=2)
    assert list(panels) == ["lr", "sr", "recon", "recon_x2", "hr"]
    assert panels["recon"].shape == (2, 1, 16, 16) and panels["recon_x2"].shape == (2, 1, 32, 32)
    assert panels["sr"].shape == (2, 1, 16, 16)


def test_trainer_fit_logs_and_saves_a_weights_only_checkpoint(tmp_path):
    ae = tiny_ae(use_ema=True, ema_decay=0.9)
    items = smooth_slices(4, 16)
    train = DataLoader(items, batch_size=2, collate_fn=SRBatches((1.0, 4.0), (12, 24)))
    val = DataLoader(items[:2], batch_size=2, collate_fn=SRBatches((1.0, 4.0), fixed_scale=2.0))
    trainer = pl.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(ae, train, val)
    assert {"train/loss", "val/loss", "val/psnr", "val/ssim", "val/sr_psnr"} <= set(trainer.callback_metrics)
    assert int(ae.ema.num_updates) == 2
    path = tmp_path / "ae.ckpt"
    trainer.save_checkpoint(path)
    load_checkpoint(path)  # weights_only=True: no OmegaConf or other objects stored

    # built from its checkpoint (as the LDM builds its first stage), it runs on the EMA weights
    loaded = tiny_ae(use_ema=True, ckpt_path=str(path))
    assert torch.equal(loaded.encoder.conv_in.weight, ae.ema.shadows()[0])
    plain = tiny_ae(ckpt_path=str(path))  # no EMA configured: the trained weights
    assert torch.equal(plain.encoder.conv_in.weight, ae.encoder.conv_in.weight)
    with pytest.raises(CheckpointMismatchError, match="decoder"):
        ImplicitAutoencoder(
            encoder_config=dict(ch=8, ch_mult=[1, 2, 2], num_res_blocks=1, z_channels=4),
            decoder_config=dict(ch=8, ch_mult=[1, 2, 2], num_res_blocks=1, z_channels=4, out_ch=16),
            liif_config={"hidden": [16, 16]},
            ckpt_path=str(path),
        )


@pytest.mark.parametrize("name", ["ct-tiny.yaml", "ct256-f4.yaml"])
def test_configs_build(name):
    config = load_config(CONFIGS / name)
    model = instantiate_from_config(config.model)
    assert model.kind == "first_stage" and model.downsample_factor == 4
    # ct256-f4 corrects the LIIF baseline's SR, as ct-demo does; ct-tiny the bicubic reading
    assert (model.regressor is not None) == (name == "ct256-f4.yaml")
    instantiate_from_config(config.data)  # the parameter names exist (no files are read)
    if name == "ct-tiny.yaml":
        assert model._losses(sr_batch(size=64, gt=48))["loss"].isfinite()


def _psnr_db(pred: torch.Tensor, target: torch.Tensor) -> float:
    return psnr(unit_to_01(pred), unit_to_01(target)).mean().item()


def test_the_decoder_learns_a_correction_to_the_bicubic_reading(fixtures_dir):
    """An lr_skip decoder whose correction cannot leave zero ties bicubic forever (the demo's
    first stage once did): a few Adam steps on one fixed batch of real CT at x4 must lift the
    reconstruction from the HR latent clearly above the LR's bicubic reading."""
    torch.manual_seed(0)
    paths = sorted((fixtures_dir / "CT" / "chest").glob("*.png"))
    hr = torch.stack([CTSlices(paths, FULL_WINDOW)[i]["image"] for i in range(len(paths))])  # (8, 1, 64, 64)
    lr = degrade(hr, 16)
    ae = tiny_ae(ch_mult=(1, 2), lr_skip=True, loss="l2")
    optimizer = torch.optim.Adam(ae.parameters(), lr=2e-3)
    batch = {"hr": hr, "lr": lr, "gt": hr}
    for _ in range(40):
        optimizer.zero_grad()
        ae._losses(batch)["loss"].backward()
        optimizer.step()
    with torch.no_grad():
        recon = ae.eval().decode(ae.encode(hr), (64, 64), lr=lr)
    gain = _psnr_db(recon, hr) - _psnr_db(upsample(lr, 64), hr)
    assert gain > 1.0, f"reconstruction - bicubic = {gain:+.2f} dB"


# -- a trained regressor as the reading the decoder corrects --------------------------------------

REGRESSOR_PARAMS = {"encoder_config": {"n_resblocks": 1, "n_feats": 8}, "liif_config": {"hidden": [16]},
                    "lr_skip": True}


def regressor_checkpoint(tmp_path) -> tuple[Path, LIIFBaseline]:
    """A 'trained' LIIF baseline (random non-zero weights) saved as a Lightning checkpoint would be."""
    torch.manual_seed(7)
    liif = LIIFBaseline(**REGRESSOR_PARAMS)
    torch.nn.init.normal_(liif.liif.layers[-1].weight, std=0.1)
    path = tmp_path / "liif.ckpt"
    torch.save({"state_dict": liif.state_dict()}, path)
    return path, liif.eval()


def regressor_config(ckpt_path) -> dict:
    return {"target": "ldm.models.liif_baseline.LIIFBaseline",
            "params": {**REGRESSOR_PARAMS, "ckpt_path": None if ckpt_path is None else str(ckpt_path)}}


def test_an_untrained_decoder_returns_exactly_the_regressors_sr(tmp_path):
    path, liif = regressor_checkpoint(tmp_path)
    ae = tiny_ae(lr_skip=True, regressor_config=regressor_config(path)).eval()
    lr = torch.rand(2, 1, 10, 12) * 2 - 1
    with torch.no_grad():
        out = ae.decode(ae.encode(torch.randn(2, 1, 32, 32)), (25, 30), lr=lr)
        expected = liif.super_resolve(lr, (25, 30))
    assert torch.allclose(out, expected, atol=1e-6)
    assert not torch.allclose(expected, upsample(lr, (25, 30), "bicubic"), atol=1e-3)  # not bicubic


def test_the_regressor_is_frozen_and_saved_with_the_first_stage(tmp_path):
    path, _ = regressor_checkpoint(tmp_path)
    ae = tiny_ae(lr_skip=True, regressor_config=regressor_config(path), use_ema=True)
    trained = {id(p) for group in ae.configure_optimizers().param_groups for p in group["params"]}
    assert trained and not any(id(p) in trained for p in ae.regressor.parameters())
    assert not any(name.startswith("regressor.") for name in ae.ema.names)
    ae.train()
    assert not ae.regressor.training
    # a stage-1 checkpoint carries the regressor: rebuilt without its ckpt_path (as the LDM and
    # load_experiment do), it decodes the same and counts as loaded
    saved = tmp_path / "ae.ckpt"
    torch.save({"state_dict": ae.state_dict()}, saved)
    again = tiny_ae(lr_skip=True, regressor_config=regressor_config(None), ckpt_path=str(saved)).eval()
    assert bool(again.regressor_loaded)
    lr = torch.rand(1, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        z = ae.encode(torch.randn(1, 1, 16, 16))
        assert torch.equal(again.decode(z, (20, 20), lr=lr), ae.eval().decode(z, (20, 20), lr=lr))


def test_a_regressor_needs_lr_skip_and_weights_to_train():
    with pytest.raises(ConfigError, match="regressor_config: needs lr_skip"):
        tiny_ae(lr_skip=False, regressor_config=regressor_config(None))
    ae = tiny_ae(lr_skip=True, regressor_config=regressor_config(None))
    with pytest.raises(ConfigError, match="regressor_config.params.ckpt_path: not set"):
        ae.on_fit_start()


def test_the_loss_on_sampled_pixels_estimates_the_whole_grids():
    batch = sr_batch(b=2, size=32, gt=32, scale=2.0)
    whole = tiny_ae(lr_skip=True, loss="l2")
    sampled = tiny_ae(lr_skip=True, loss="l2", sample_q=32 * 32)  # every pixel, in another order
    sampled.load_state_dict(whole.state_dict())
    torch.manual_seed(0)
    assert torch.allclose(sampled._losses(batch)["loss"], whole._losses(batch)["loss"], rtol=1e-5)
    few = tiny_ae(lr_skip=True, loss="l2", sample_q=50)
    few.load_state_dict(whole.state_dict())
    assert few._losses(batch)["loss"].isfinite()
    with pytest.raises(ValueError, match="sample_q"):
        tiny_ae(sample_q=64, grad_loss_weight=0.1)
