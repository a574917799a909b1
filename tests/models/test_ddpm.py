import copy
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from ldm.checkpoint import CheckpointMismatchError, load_checkpoint
from ldm.config import load_config
from ldm.data.batches import SRBatches
from ldm.models.autoencoder import ImplicitAutoencoder
from ldm.models.diffusion.ddpm import FIRST_STAGE_CKPT_KEY, alignment_loss, alignment_weights
from ldm.util import ConfigError, instantiate_from_config

CONFIGS = Path(__file__).parents[2] / "configs" / "latent-diffusion"


def model_node(name="ct-tiny.yaml"):
    return OmegaConf.to_container(load_config(CONFIGS / name).model, resolve=True)


def first_stage_params(node):
    params = dict(node["params"]["first_stage_config"]["params"])
    params.pop("ckpt_path")
    return params


@pytest.mark.parametrize(
    "ldm_config,first_stage_config",
    [
        ("ct-tiny.yaml", "ct-tiny.yaml"),
        ("ct-tiny-align.yaml", "ct-tiny.yaml"),
        ("ct256-f4.yaml", "ct256-f4.yaml"),
        ("ct256-f4-align.yaml", "ct256-f4.yaml"),
        ("ct-demo.yaml", "ct-demo.yaml"),
        ("ct-demo-align.yaml", "ct-demo.yaml"),
    ],
)
def test_ldm_configs_get_their_first_stage_params_from_the_stage1_config(ldm_config, first_stage_config):
    """The CT port's stage-2 config disagreed with its stage 1 and could not load it; here the
    LDM configs name their stage-1 config (model_of) and the stage-3 ones inherit stage 2."""
    stage1 = load_config(CONFIGS.parent / "first-stage" / first_stage_config).model
    node = model_node(ldm_config)
    assert node["params"]["first_stage_config"]["target"] == stage1.target
    assert first_stage_params(node) == OmegaConf.to_container(stage1.params, resolve=True)


@pytest.fixture(scope="module")
def first_stage_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    ae = ImplicitAutoencoder(**first_stage_params(model_node()))
    with torch.no_grad():  # so that an lr_skip variant's decoder (zero-initialised output) sees the latent
        ae.liif.layers[-1].weight.normal_(0.0, 0.1)
    path = tmp_path_factory.mktemp("stage1") / "first_stage.ckpt"
    torch.save({"state_dict": ae.state_dict()}, path)
    return str(path)


def build(first_stage_ckpt, name="ct-tiny.yaml", first_stage=None, **params):
    node = model_node(name)
    node["params"]["first_stage_config"]["params"]["ckpt_path"] = first_stage_ckpt
    node["params"]["first_stage_config"]["params"].update(first_stage or {})
    node["params"].update(params)
    torch.manual_seed(0)
    return instantiate_from_config(node, key="model")


def make_batch(n=2, size=64, scale=4.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth images, so the LR carries most of the HR
    images = F.interpolate(torch.rand(n, 1, size // 8, size // 8, generator=g) * 2 - 1, size=size, mode="bicubic")
    items = [{"image": img.clamp(-1, 1), "path": f"slice_{i}.png"} for i, img in enumerate(images)]
    return SRBatches(fixed_scale=scale)(items)


@pytest.fixture(scope="module")
def model(first_stage_ckpt):
    return build(first_stage_ckpt)


def test_super_resolve_any_size_and_n_samples(model):
    lr = make_batch()["lr"]
    assert lr.shape == (2, 1, 16, 16)
    sr = model.super_resolve(lr, (45, 37), steps=3, n_samples=3, seed=0)
    assert sr.shape == (2, 3, 45, 37) and torch.isfinite(sr).all()
    assert not torch.allclose(sr[:, 0], sr[:, 1])  # independent samples
    assert torch.equal(sr, model.super_resolve(lr, (45, 37), steps=3, n_samples=3, seed=0))
    g = torch.Generator().manual_seed(0)
    assert torch.equal(sr, model.super_resolve(lr, (45, 37), steps=3, n_samples=3, generator=g))
    odd = model.super_resolve(lr[:1, :, :13, :11], (30, 50), steps=2, sampler="ddpm", seed=1)
    assert odd.shape == (1, 1, 30, 50)


def test_super_resolve_rejects_bad_arguments(model):
    with pytest.raises(ValueError, match="sampler"):
        model.super_resolve(torch.zeros(1, 1, 8, 8), (16, 16), sampler="euler")
    with pytest.raises(ValueError, match="out_size"):
        model.super_resolve(torch.zeros(1, 1, 8, 8), (0, 16))


def test_dpmpp_2m_sampling_is_deterministic_and_the_configured_default(first_stage_ckpt, model):
    lr = make_batch(n=2)["lr"]
    a = model.super_resolve(lr, (32, 32), steps=3, sampler="dpmpp_2m", seed=1)
    b = model.super_resolve(lr, (32, 32), steps=3, sampler="dpmpp_2m", seed=1)
    assert a.shape == (2, 1, 32, 32) and torch.isfinite(a).all() and torch.equal(a, b)
    assert not torch.equal(a, model.super_resolve(lr, (32, 32), steps=3, sampler="ddim", eta=0.0, seed=1))
    configured = build(first_stage_ckpt, sampler="dpmpp_2m")
    configured.load_state_dict(model.state_dict())
    torch.testing.assert_close(configured.super_resolve(lr, (32, 32), steps=3, seed=1), a)
    with pytest.raises(ValueError, match="model.params.sampler"):
        build(first_stage_ckpt, sampler="euler")
    # what a run records: defaults resolved, eta only for DDIM, all T steps for DDPM
    assert model.sampling().record() == {"sampler": "ddim", "steps": model.sample_steps, "eta": model.sample_eta,
                                         "tile": model.sample_tile}
    assert configured.sampling(steps=7, tile=0).record() == {"sampler": "dpmpp_2m", "steps": 7, "eta": None,
                                                             "tile": None}
    assert model.sampling("ddpm").steps == model.schedule.num_timesteps


def test_latent_scale_set_on_the_first_batch_and_kept_through_a_state_dict(first_stage_ckpt):
    model = build(first_stage_ckpt)
    assert not model.latent_scale_set
    batch = make_batch(seed=1)
    model.on_train_batch_start(batch, 0)
    z = model.first_stage.encode(batch["hr"])
    assert model.latent_scale_set
    assert model.latent_scale.item() == pytest.approx(1.0 / z.std().item(), rel=1e-5)
    stored = model.latent_scale.item()

    fresh = build(first_stage_ckpt)
    fresh.load_state_dict(model.state_dict())
    assert fresh.latent_scale.item() == stored
    fresh.on_train_batch_start(make_batch(seed=2, scale=8.0), 0)  # a resumed run's first batch
    assert fresh.latent_scale.item() == stored


def test_stage2_checkpoint_initialises_the_alignment_model(first_stage_ckpt, tmp_path):
    stage2 = build(first_stage_ckpt)
    stage2.on_train_batch_start(make_batch(), 0)
    with torch.no_grad():
        for p in stage2.unet.parameters():
            p.add_(0.01)
    stage2.on_train_batch_end()  # the EMA moves part of the way
    path = tmp_path / "stage2.ckpt"
    torch.save({"state_dict": stage2.state_dict()}, path)

    node = model_node("ct-tiny-align.yaml")
    assert node["params"]["alignment"] is True
    node["params"]["ckpt_path"] = str(path)
    aligned = instantiate_from_config(node, key="model")  # first-stage ckpt_path left null
    assert aligned.alignment
    assert aligned.latent_scale.item() == stage2.latent_scale.item() and aligned.latent_scale_set
    assert aligned.first_stage_loaded
    with stage2.ema_scope():
        for a, b in zip(aligned.unet.parameters(), stage2.unet.parameters(), strict=True):
            torch.testing.assert_close(a, b)
    aligned.on_train_start()  # the first stage came with the checkpoint: no error


def test_first_stage_mismatch_names_the_keys(tmp_path):
    node = model_node()
    params = first_stage_params(node)
    params["encoder_config"] = {**params["encoder_config"], "ch": 2 * params["encoder_config"]["ch"]}
    path = tmp_path / "wider.ckpt"
    torch.save({"state_dict": ImplicitAutoencoder(**params).state_dict()}, path)
    with pytest.raises(CheckpointMismatchError) as err:
        build(str(path))
    message = str(err.value)
    assert FIRST_STAGE_CKPT_KEY in message and "shape mismatch" in message and "encoder." in message


def test_training_without_a_first_stage_checkpoint_fails_clearly(tmp_path):
    model = build(None)
    with pytest.raises(ConfigError, match=FIRST_STAGE_CKPT_KEY.replace(".", r"\.")):
        model.on_train_start()
    with pytest.raises(FileNotFoundError, match=FIRST_STAGE_CKPT_KEY.replace(".", r"\.")):
        build(str(tmp_path / "missing.ckpt"))


def test_alignment_without_a_stage2_checkpoint_fails_clearly(first_stage_ckpt):
    model = build(first_stage_ckpt, name="ct-tiny-align.yaml")
    with pytest.raises(ConfigError, match=r"model\.params\.ckpt_path"):
        model.on_train_start()


def test_an_lr_skip_first_stage_gets_the_lr_when_decoding(tmp_path):
    params = {**first_stage_params(model_node()), "lr_skip": True}
    torch.manual_seed(0)
    path = tmp_path / "skip.ckpt"
    torch.save({"state_dict": ImplicitAutoencoder(**params).state_dict()}, path)
    model = build(str(path), first_stage={"lr_skip": True}, alignment=True)
    batch = make_batch()
    # an untrained lr_skip decoder returns the bicubic reading of the LR: finite, at the asked size
    assert model.super_resolve(batch["lr"], (40, 24), steps=2, seed=0).shape == (2, 1, 40, 24)
    loss = model.loss(batch, torch.tensor([5, 800]), torch.randn(model._latent_shape(batch["hr"])))
    assert torch.isfinite(loss)


def test_unet_channels_must_fit_the_latent(first_stage_ckpt):
    node = model_node()
    node["params"]["unet_config"]["params"]["in_channels"] = 4
    node["params"]["first_stage_config"]["params"]["ckpt_path"] = first_stage_ckpt
    with pytest.raises(ValueError, match="in_channels"):
        instantiate_from_config(node)


def test_alignment_weights_are_per_sample():
    g = torch.Generator().manual_seed(0)
    alphas = torch.tensor([0.9, 0.5, 0.1])
    x0_hat, z0 = torch.randn(3, 3, 4, 4, generator=g), torch.randn(3, 3, 4, 4, generator=g)
    sr, hr = torch.randn(3, 1, 16, 16, generator=g), torch.randn(3, 1, 16, 16, generator=g)
    weights = alignment_weights(alphas, max_weight=None)
    torch.testing.assert_close(weights, torch.tensor([9.0, 1.0, 1.0 / 9.0]))

    by_hand = 0.0
    for i, a in enumerate(alphas.tolist()):
        w = a / (1 - a)
        by_hand += w * (((x0_hat[i] - z0[i]) ** 2).mean() + ((sr[i] - hr[i]) ** 2).mean())
    loss = alignment_loss(x0_hat, z0, sr, hr, weights)
    torch.testing.assert_close(loss, by_hand / 3)

    # the reference code's (B, 1, 1, 1) x (B,) broadcast averages the weights over the batch
    per_sample = ((x0_hat - z0) ** 2).mean(dim=(1, 2, 3)) + ((sr - hr) ** 2).mean(dim=(1, 2, 3))
    assert not torch.allclose(loss, (weights[:, None, None, None] * per_sample).mean())


def test_alignment_weights_are_clamped():
    weights = alignment_weights(torch.tensor([0.9985, 0.5]), max_weight=5.0)
    torch.testing.assert_close(weights, torch.tensor([5.0, 1.0]))


def with_live_zero_layers(model):
    """The model with its zero-initialised UNet layers (output conv, residual and attention
    projections) drawn at random: at initialisation the UNet returns 0 whatever its inputs, so a
    loss would not depend on the condition and no gradient but the output layer's would be non-zero."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.unet.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def test_alignment_loss_trains_the_unet_through_the_frozen_decoder(first_stage_ckpt):
    """Stage 3: mean_b w_b (MSE(x0_hat_b, z0_b) + MSE(D(x0_hat_b), hr_b)), w_b = a_t / (1 - a_t)
    clamped at align_weight_max, worked out step by step here; its gradient reaches every UNet
    weight, through the decoder too, and none of the frozen first stage's."""
    model = with_live_zero_layers(build(first_stage_ckpt, alignment=True))
    batch = make_batch()
    t = torch.tensor([5, 800])
    noise = torch.randn(model._latent_shape(batch["hr"]), generator=torch.Generator().manual_seed(1))

    hr, lr = batch["hr"], batch["lr"]
    size = tuple(hr.shape[-2:])
    z0, cond = model.encode(hr), model.condition(lr, size)
    a = model.schedule.alphas_cumprod[t].double()
    z_t = model.schedule.q_sample(z0, t, noise)
    x0_hat = (z_t - (1 - a).sqrt().view(-1, 1, 1, 1) * model.denoise(z_t, t, cond)) / a.sqrt().view(-1, 1, 1, 1)
    latent_mse = ((x0_hat - z0) ** 2).mean(dim=(1, 2, 3))
    image_mse = ((model.decode(x0_hat.float(), size, lr) - hr) ** 2).mean(dim=(1, 2, 3))
    snr = a / (1 - a)  # ~110 at t = 5, ~0.03 at t = 800
    assert snr[0] > 100 > 5 > 1 > snr[1]
    for max_weight, weights in [(5.0, snr.clamp(max=5.0)), (None, snr)]:
        model.align_weight_max = max_weight
        expected = (weights * (latent_mse + image_mse)).mean()
        torch.testing.assert_close(model.loss(batch, t, noise).double(), expected, rtol=1e-4, atol=1e-7)

    model.align_weight_max = 5.0
    loss = model.loss(batch, t, noise)
    loss.backward()
    assert torch.isfinite(loss)
    dead = [name for name, p in model.unet.named_parameters() if p.grad is None or not p.grad.any()]
    assert not dead, f"no gradient reaches {dead}"
    assert all(p.grad is None for p in model.first_stage.parameters())
    # the image term alone moves the UNet: the gradient goes through the fixed decoder
    image_term = ((model.decode(x0_hat.float(), size, lr) - hr) ** 2).mean()
    (through_decoder,) = torch.autograd.grad(image_term, model.unet.out[-1].weight)
    assert through_decoder.abs().sum() > 0


def test_alignment_on_sampled_hr_pixels_estimates_the_whole_grids_loss(first_stage_ckpt):
    model = with_live_zero_layers(build(first_stage_ckpt, alignment=True))
    batch = make_batch()
    t = torch.tensor([5, 800])
    noise = torch.randn(model._latent_shape(batch["hr"]), generator=torch.Generator().manual_seed(1))
    whole = model.loss(batch, t, noise)
    model.align_sample_q = batch["hr"][0].numel()  # every pixel, in a random order: the same mean
    torch.testing.assert_close(model.loss(batch, t, noise), whole, rtol=1e-5, atol=1e-7)
    model.align_sample_q = 16
    loss = model.loss(batch, t, noise)
    loss.backward()
    assert torch.isfinite(loss) and model.unet.out[-1].weight.grad.abs().sum() > 0


def test_only_the_unet_is_optimised_and_the_first_stage_stays_frozen(model):
    optimizer = model.configure_optimizers()
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.unet.parameters()}
    model.train()
    assert model.unet.training and not model.first_stage.training
    assert not any(p.requires_grad for p in model.first_stage.parameters())
    assert model.ema is not None and len(model.ema.names) == len(list(model.unet.parameters()))


@pytest.mark.parametrize("parameterization", ["eps", "v"])
def test_a_few_steps_on_a_fixed_batch_reduce_the_loss(first_stage_ckpt, parameterization):
    model = build(first_stage_ckpt, parameterization=parameterization)
    batch = make_batch()
    model.on_train_batch_start(batch, 0)
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 1000, (2,), generator=g)
    noise = torch.randn(model._latent_shape(batch["hr"]), generator=g)
    model.learning_rate = 2e-3
    optimizer = model.configure_optimizers()
    losses = []
    for _ in range(15):
        loss = model.loss(batch, t, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    assert model.super_resolve(batch["lr"], (20, 20), steps=2, seed=0).shape == (2, 1, 20, 20)


def test_input_size_must_fit_the_model(model):
    batch = make_batch(size=60, scale=3.0)
    with pytest.raises(ValueError, match="multiple"):
        model.loss(batch, torch.tensor([1, 2]), torch.zeros(2, 3, 15, 15))


def test_lightning_fit_logs_and_writes_a_weights_only_checkpoint(first_stage_ckpt, tmp_path):
    model = build(first_stage_ckpt)
    batches = [make_batch(seed=i) for i in range(2)]
    loader = DataLoader(batches, batch_size=None)
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=2, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(model, loader, loader)
    assert {"train/loss", "val/loss", "val/psnr"} <= set(trainer.callback_metrics)
    assert model.latent_scale_set and int(model.ema.num_updates) == 2
    assert not model.first_stage.training

    path = tmp_path / "ldm.ckpt"
    trainer.save_checkpoint(path)
    state = load_checkpoint(path)["state_dict"]
    assert "latent_scale" in state and not any(k.startswith("first_stage.ema.") for k in state)
    fresh = build(None)
    fresh.load_state_dict(copy.deepcopy(state))
    assert fresh.latent_scale.item() == model.latent_scale.item() and fresh.first_stage_loaded


def test_log_images_in_display_order(model):
    images = model.log_images(make_batch(n=3), max_images=2)
    assert list(images) == ["lr", "sample", "sample_x2", "hr"]
    assert images["sample"].shape == (2, 1, 64, 64) and images["sample_x2"].shape == (2, 1, 128, 128)


def test_a_list_of_seeds_makes_each_image_independent_of_its_batch(model):
    """eval_sr.py passes one seed per image: an image's sample must not depend on its batch mates."""
    lr = torch.rand(3, 1, 16, 16) * 2 - 1
    together = model.super_resolve(lr, (40, 40), steps=2, seed=[5, 6, 7], n_samples=2)
    alone = torch.cat([model.super_resolve(lr[i : i + 1], (40, 40), steps=2, seed=[s], n_samples=2)
                       for i, s in enumerate([5, 6, 7])])
    assert torch.allclose(together, alone, atol=1e-5)
    assert not torch.allclose(together[0], together[1])


def test_the_loss_encodes_target_and_condition_as_separate_passes_would(first_stage_ckpt):
    """One encoder pass over [hr, upsampled lr] gives each latent what its own pass gives, and the
    UNet sees that condition: the loss is the MSE of its eps given E(up(lr)), and not with a zero one."""
    model = with_live_zero_layers(build(first_stage_ckpt))
    batch = make_batch(n=3)
    t = torch.tensor([5, 500, 999])
    noise = torch.randn(3, model.unet.out_channels, 16, 16, generator=torch.Generator().manual_seed(1))
    size = tuple(batch["hr"].shape[-2:])
    z0, cond = model.encode(batch["hr"]), model.condition(batch["lr"], size)
    z_t = model.schedule.q_sample(z0, t, noise)
    loss = model.loss(batch, t, noise)
    torch.testing.assert_close(loss, F.mse_loss(model.denoise(z_t, t, cond), noise), rtol=1e-5, atol=1e-7)
    unconditioned = F.mse_loss(model.denoise(z_t, t, torch.zeros_like(cond)), noise)
    assert (loss - unconditioned).abs() > 1e-3 * loss


def test_residual_scale_is_set_from_the_first_batch_and_the_mapping_inverts(first_stage_ckpt):
    model = build(first_stage_ckpt, residual=True)
    batch = make_batch(seed=1)
    model.on_train_batch_start(batch, 0)
    size = tuple(batch["hr"].shape[-2:])
    z0, cond = model.encode(batch["hr"]), model.condition(batch["lr"], size)
    x0 = model.to_diffusion(z0, cond)
    assert x0.std().item() == pytest.approx(1.0, rel=1e-4)  # the diffusion sees a unit-variance residual
    assert torch.allclose(model.from_diffusion(x0, cond), z0, atol=1e-5)
    assert build(first_stage_ckpt).residual_scale.item() == 1.0  # without residual: the latent itself


class NoDetail:
    """A denoiser that says x_0 = 0 at every step: eps = x_t / sqrt(1 - a_t)."""

    def __init__(self, schedule):
        self.schedule = schedule

    def __call__(self, x_t, t, cond):
        a_t = self.schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
        return x_t / (1 - a_t).sqrt()


def test_a_residual_ldm_whose_denoiser_adds_nothing_returns_the_first_stages_sr(first_stage_ckpt):
    """The residual's point: the LR's content comes through the condition, whatever the denoiser."""
    model = build(first_stage_ckpt, residual=True)
    model.on_train_batch_start(make_batch(seed=1), 0)
    model.predict_eps = NoDetail(model.schedule)
    lr = make_batch(seed=3)["lr"]
    sr = model.super_resolve(lr, (32, 32), steps=5, eta=1.0, seed=0, tile=0)
    expected = model.decode(model.condition(lr, (32, 32)), (32, 32), lr)
    assert torch.allclose(sr, expected, atol=1e-4)
    plain = build(first_stage_ckpt)
    plain.load_state_dict(model.state_dict(), strict=False)
    plain.predict_eps = NoDetail(plain.schedule)
    assert not torch.allclose(plain.super_resolve(lr, (32, 32), steps=5, seed=0, tile=0), expected, atol=1e-2)
