"""ldm.export: one safetensors file (weights + config) that eval_sr.py and sr.py load without pickle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from logdir_helpers import load_script, make_tiny_logdir

from ldm.data.intensity import write_png16_hu
from ldm.experiment import ExperimentError, load_experiment
from ldm.export import main as export_main


@pytest.mark.parametrize("kind", ["first_stage", "ldm"])
def test_export_round_trip_gives_the_same_super_resolution(tmp_path, ct_tree, kind):
    logdir = make_tiny_logdir(tmp_path / "logs", kind, ct_tree)
    out = tmp_path / "model.safetensors"
    assert export_main(["--exp", str(logdir), "--out", str(out)]) == 0
    original, exported = load_experiment(logdir), load_experiment(out)
    assert exported.kind == kind and exported.hu_window == original.hu_window
    lr = torch.rand(1, 1, 16, 16) * 2 - 1
    kwargs = {"steps": 2, "seed": 0} if kind == "ldm" else {}
    a = original.model.super_resolve(lr, (37, 45), **kwargs)
    b = exported.model.super_resolve(lr, (37, 45), **kwargs)
    assert torch.equal(a, b)


def test_sr_py_runs_on_an_exported_model(tmp_path, ct_tree):
    logdir = make_tiny_logdir(tmp_path / "logs", "first_stage", ct_tree)
    model = tmp_path / "model.safetensors"
    assert export_main(["--exp", str(logdir), "--out", str(model)]) == 0
    write_png16_hu(tmp_path / "in.png", np.full((16, 16), 40.0))
    sr = load_script("sr")
    assert sr.main(["--exp", str(model), "--input", str(tmp_path / "in.png"), "--scale", "2",
                    "--out", str(tmp_path / "out"), "--no_progress"]) == 0
    assert (tmp_path / "out" / "in.png").is_file()


def test_export_refuses_a_bad_suffix_and_a_non_export(tmp_path, ct_tree, capsys):
    logdir = make_tiny_logdir(tmp_path / "logs", "first_stage", ct_tree)
    assert export_main(["--exp", str(logdir), "--out", str(tmp_path / "model.pt")]) == 2
    assert "safetensors" in capsys.readouterr().err
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ExperimentError, match="without the config metadata"):
        load_experiment(tmp_path / "other.safetensors")
