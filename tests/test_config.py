"""ldm/config.py: configs that build on other files (inherit, model_of) and its errors."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ldm.config import load_config
from ldm.util import ConfigError

CONFIGS = Path(__file__).parents[1] / "configs"


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_inherit_merges_the_parents_under_the_file_and_model_of_takes_target_and_params(tmp_path):
    write(tmp_path / "stage1" / "ae.yaml", "model:\n  base_learning_rate: 1.0\n  target: a.B\n"
                                           "  params: {ch: 16, ckpt_path: null}\n")
    write(tmp_path / "ldm" / "s2.yaml", "model:\n  target: c.D\n  params:\n    steps: 20\n    first_stage_config:\n"
                                         "      model_of: ../stage1/ae.yaml\n      params: {ckpt_path: x.ckpt}\n"
                                         "data: {batch_size: 8}\n")
    s3 = write(tmp_path / "ldm" / "s3.yaml", "inherit: s2.yaml\nmodel:\n  params: {alignment: true}\n")
    config = OmegaConf.to_container(load_config(s3))
    assert config == {"model": {"target": "c.D", "params": {
        "steps": 20, "alignment": True,
        "first_stage_config": {"target": "a.B", "params": {"ch": 16, "ckpt_path": "x.ckpt"}}}},
        "data": {"batch_size": 8}}


def test_the_shipped_stage3_configs_are_their_stage2_configs_but_for_the_alignment_keys():
    for stage2, stage3 in [("ct-tiny", "ct-tiny-align"), ("ct256-f4", "ct256-f4-align"), ("ct-demo", "ct-demo-align")]:
        s2 = load_config(CONFIGS / "latent-diffusion" / f"{stage2}.yaml")
        s3 = load_config(CONFIGS / "latent-diffusion" / f"{stage3}.yaml")
        assert s3.model.params.alignment and "alignment" not in s2.model.params
        assert s3.model.params.unet_config == s2.model.params.unet_config
        assert s3.model.params.first_stage_config == s2.model.params.first_stage_config
        assert s3.data == s2.data


@pytest.mark.parametrize("files,match", [
    ({"a.yaml": "inherit: b.yaml\nmodel: {}\n", "b.yaml": "inherit: a.yaml\n"}, "inherits itself"),
    ({"a.yaml": "inherit: missing.yaml\n"}, "missing.yaml: config file not found"),
    ({"a.yaml": "model:\n  params:\n    first_stage_config: {model_of: b.yaml}\n", "b.yaml": "data: {}\n"},
     "model_of: b.yaml has no model: section"),
    ({"a.yaml": "model: [unclosed\n"}, "a.yaml: not a valid YAML config"),
])
def test_bad_references_name_the_file(tmp_path, files, match):
    for name, text in files.items():
        write(tmp_path / name, text)
    with pytest.raises(ConfigError, match=match):
        load_config(tmp_path / "a.yaml")
