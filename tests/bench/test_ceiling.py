"""bench/ceiling.py: the first stage's reconstruction from the HR latent on eval_sr.py's pairs."""

import json

from logdir_helpers import data_config, make_logdir, tiny_model_config

from bench import ceiling


def test_an_untrained_lr_skip_first_stage_reconstructs_exactly_the_bicubic_reading(ct_splits, tmp_path, capsys):
    model = tiny_model_config("first_stage")
    model["params"]["lr_skip"] = True  # zero-initialised output: decode returns the LR's bicubic reading
    run = make_logdir(tmp_path / "logs", model, data_config(ct_splits.root), name="s1")
    out = tmp_path / "ceiling.json"
    assert ceiling.main(["--exp", str(run), "--split", "test", "--lr_size", "16", "--scale_ratio", "2", "3.5",
                         "--json", str(out)]) == 0
    scales = json.loads(out.read_text())["scales"]
    assert set(scales) == {"x2", "x3.5"}
    for rows in scales.values():
        ceiling_row, bicubic = rows["first stage from the HR latent"], rows["bicubic"]
        assert abs(ceiling_row["psnr"] - bicubic["psnr"]) < 1e-3 and abs(ceiling_row["mae"] - bicubic["mae"]) < 1e-6
    assert "first stage from the HR latent" in capsys.readouterr().out
