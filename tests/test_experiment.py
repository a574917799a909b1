"""Loading a run back from its log dir: config snapshot + last.ckpt, EMA, provenance and clear errors."""

import pytest
import torch
from logdir_helpers import FakeSR, data_config, fake_model_config, make_logdir, make_tiny_logdir
from omegaconf import OmegaConf

from ldm.checkpoint import CheckpointMismatchError, UnsafeCheckpointError
from ldm.experiment import ExperimentError, load_experiment
from ldm.util import ConfigError, file_sha256


def test_loads_model_config_and_provenance(tmp_path):
    logdir = make_logdir(tmp_path, fake_model_config(gain=2.0), data_config(tmp_path / "CT", hu_window=(-1000, 400)))
    exp = load_experiment(logdir)
    assert isinstance(exp.model, FakeSR) and not exp.model.training
    assert exp.kind == "first_stage" and exp.name == "tiny"
    assert exp.hu_window == (-1000.0, 400.0)
    assert exp.global_step == 7
    assert exp.ckpt_sha256 == file_sha256(logdir / "checkpoints" / "last.ckpt")
    assert exp.config_sha256 == file_sha256(exp.config_path)
    assert exp.describe()["ckpt_sha256"] == exp.ckpt_sha256
    assert all(not p.requires_grad for p in exp.model.parameters())


def test_weights_come_from_the_checkpoint_and_default_window(tmp_path):
    state = FakeSR(gain=3.0).state_dict()
    data = {"target": "ldm.data.datamodule.CTDataModule", "params": {"root": "data/CT"}}
    logdir = make_logdir(tmp_path, fake_model_config(gain=1.0), data, state_dict=state)
    exp = load_experiment(logdir)
    assert exp.model.net.weight.item() == 3.0
    assert exp.hu_window == (-1024.0, 3071.0)


def test_ema_weights_by_default_and_trained_ones_on_request(tmp_path):
    model = FakeSR(gain=1.0, use_ema=True)
    model.ema.shadow_0.fill_(5.0)  # the average differs from the trained weight
    config = fake_model_config(use_ema=True)
    logdir = make_logdir(tmp_path, config, data_config(tmp_path), state_dict=model.state_dict())
    with_ema = load_experiment(logdir)
    assert with_ema.ema and with_ema.model.net.weight.item() == 5.0
    assert with_ema.model.ema is None  # sampling inside ema_scope() cannot swap the other weights back in
    trained = load_experiment(logdir, use_ema=False)
    assert not trained.ema and trained.model.net.weight.item() == 1.0 and trained.model.ema is None


def test_newest_project_config_wins(tmp_path):
    logdir = make_logdir(tmp_path, fake_model_config(), data_config(tmp_path))
    newer = OmegaConf.create({"model": fake_model_config(kind="liif"), "data": data_config(tmp_path)})
    OmegaConf.save(newer, logdir / "configs" / "2025-06-01T00-00-00-project.yaml")  # a resume
    exp = load_experiment(logdir)
    assert exp.kind == "liif" and exp.config_path.name.startswith("2025-06-01")


def test_init_checkpoint_paths_are_not_needed(tmp_path):
    # the LDM's first_stage_config points at a checkpoint on the training machine
    config = fake_model_config("ldm", first_stage_config={"target": "x.Y", "params": {"ckpt_path": "/gone.ckpt"}})
    exp = load_experiment(make_logdir(tmp_path, config, data_config(tmp_path)))
    assert exp.kind == "ldm"
    assert OmegaConf.select(exp.config, "model.params.first_stage_config.params.ckpt_path") == "/gone.ckpt"


def test_real_tiny_ldm_loads_without_its_first_stage_checkpoint(tmp_path):
    logdir = make_tiny_logdir(tmp_path / "logs", "ldm", tmp_path / "CT")
    exp = load_experiment(logdir)
    assert exp.kind == "ldm"
    sr = exp.model.super_resolve(torch.zeros(1, 1, 8, 8), (20, 20), steps=2, n_samples=2, seed=0)
    assert sr.shape == (1, 2, 20, 20)


def test_another_checkpoint_of_the_run(tmp_path):
    logdir = make_logdir(tmp_path, fake_model_config(), data_config(tmp_path))
    torch.save({"state_dict": FakeSR(gain=4.0).state_dict()}, logdir / "checkpoints" / "best.ckpt")
    assert load_experiment(logdir, ckpt="best.ckpt").model.net.weight.item() == 4.0
    with pytest.raises(ExperimentError, match="nope.ckpt: checkpoint not found"):
        load_experiment(logdir, ckpt="nope.ckpt")


@pytest.mark.parametrize(
    "damage, error, message",
    [
        (lambda d: d.rename(d.with_name("moved")), ExperimentError, "log dir not found"),
        (lambda d: [p.unlink() for p in (d / "configs").iterdir()], ExperimentError, r"no configs/\*-project.yaml"),
        (lambda d: (d / "checkpoints" / "last.ckpt").unlink(), ExperimentError, "no checkpoints/last.ckpt"),
    ],
)
def test_incomplete_log_dirs(tmp_path, damage, error, message):
    logdir = make_logdir(tmp_path, fake_model_config(), data_config(tmp_path))
    damage(logdir)
    with pytest.raises(error, match=message):
        load_experiment(logdir)


def test_target_that_does_not_import_names_the_key(tmp_path):
    logdir = make_logdir(tmp_path, fake_model_config(), data_config(tmp_path))
    config = OmegaConf.load(next((logdir / "configs").glob("*-project.yaml")))
    config.model.target = "ldm.models.nowhere.Model"
    OmegaConf.save(config, next((logdir / "configs").glob("*-project.yaml")))
    with pytest.raises(ConfigError, match=r"project.yaml: model.target: cannot import module 'ldm.models.nowhere'"):
        load_experiment(logdir)


def test_not_a_super_resolver(tmp_path):
    model = {"target": "torch.nn.Identity", "params": {}}
    with pytest.raises(ExperimentError, match="not a super-resolver"):
        load_experiment(make_logdir(tmp_path, model, data_config(tmp_path), state_dict={}))


def test_weights_that_do_not_fit(tmp_path):
    state = {"net.weight": torch.ones(2, 2)}
    logdir = make_logdir(tmp_path, fake_model_config(), data_config(tmp_path), state_dict=state)
    with pytest.raises(CheckpointMismatchError, match="last.ckpt: weights do not match.*shape mismatch: net.weight"):
        load_experiment(logdir)


class Pickled:  # anything that is not a tensor or a plain container
    pass


def test_pickled_checkpoint_needs_trust(tmp_path):
    logdir = make_logdir(tmp_path, fake_model_config(), data_config(tmp_path))
    ckpt = logdir / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": FakeSR().state_dict(), "extra": Pickled()}, ckpt)
    with pytest.raises(UnsafeCheckpointError, match="--trust_checkpoint"):
        load_experiment(logdir)
    assert load_experiment(logdir, trust_checkpoint=True).kind == "first_stage"


def test_params_the_model_does_not_take_are_a_config_error(tmp_path):
    logdir = make_logdir(tmp_path, fake_model_config(), data_config(tmp_path))
    config_path = next((logdir / "configs").glob("*-project.yaml"))
    config = OmegaConf.load(config_path)
    config.model.params.colour = "blue"
    OmegaConf.save(config, config_path)
    with pytest.raises(ConfigError, match="model.params: .*unexpected keyword argument 'colour'"):
        load_experiment(logdir)


def test_a_type_error_inside_the_model_keeps_its_traceback(tmp_path):
    logdir = make_logdir(tmp_path, fake_model_config(), data_config(tmp_path))
    config_path = next((logdir / "configs").glob("*-project.yaml"))
    config = OmegaConf.load(config_path)
    config.model.params.gain = "not a number"  # FakeSR's own code fails on it: a bug, not a config key
    OmegaConf.save(config, config_path)
    with pytest.raises(TypeError) as info:
        load_experiment(logdir)
    assert not isinstance(info.value, ConfigError)
