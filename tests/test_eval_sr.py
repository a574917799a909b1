"""eval_sr.py: the protocol end to end, its determinism, its outputs and its refusals (the pieces of
ldm/evaluation are tested in tests/evaluation/)."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from logdir_helpers import (
    HERE,
    ROOT,
    data_config,
    fake_model_config,
    load_script,
    make_logdir,
    make_tiny_logdir,
)
from PIL import Image

from ldm.data.intensity import read_slice, write_png8
from ldm.evaluation.protocol import SliceSetError, scan, slice_paths

eval_sr = load_script("eval_sr")

TOP_KEYS = {
    "methods", "methods_std", "n_images", "lr_size", "scale_ratio", "out_size", "steps", "seed", "kind",
    "n_samples", "degradation", "hu_window", "data_kind", "skipped", "n_skipped", "config_sha256",
    "ckpt_sha256", "command", "device", "method_info", "seeding", "versions", "gt_upsampled",
}
METRICS = {"psnr", "ssim", "mae", "mae_hu", "lr_psnr", "psnr_lung", "ssim_lung", "psnr_soft", "ssim_soft"}


def run(capsys, *argv):
    rc = eval_sr.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def load_json(path):
    return json.loads(path.read_text())


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def fake_run(ct_splits, tmp_path):
    """A deterministic stand-in run whose data config points at the test split (4 slices of 64 px)."""
    return make_logdir(tmp_path / "logs", fake_model_config(gain=1.0), data_config(ct_splits.root), name="fake")


@pytest.fixture
def fake_ldm(ct_splits, tmp_path):
    return make_logdir(tmp_path / "logs", fake_model_config("ldm"), data_config(ct_splits.root), name="sampler")


# ---- the CLI on stand-in runs ------------------------------------------------------------------


def test_metrics_json_schema_and_table(capsys, fake_run, tmp_path):
    rc, out, err = run(capsys, "--exp", fake_run, "--lr_size", 16, "--scale_ratio", 3.7, "--out", tmp_path / "e")
    assert rc == 0, err
    doc = load_json(tmp_path / "e" / "metrics.json")
    assert TOP_KEYS <= set(doc)
    assert doc["kind"] == "first_stage" and doc["n_images"] == 4 and doc["lr_size"] == 16
    assert doc["scale_ratio"] == 3.7 and doc["out_size"] == [59, 59] and doc["seed"] == 23
    assert doc["degradation"] == {"kind": "bicubic", "noise_hu": 0.0} and doc["hu_window"] == [-1024.0, 3071.0]
    assert list(doc["methods"]) == ["bicubic", "lanczos", "fake"]
    for name, values in doc["methods"].items():
        assert set(values) == METRICS and set(doc["methods_std"][name]) == METRICS
    # the stand-in is bicubic inside, so it must score exactly like the bicubic baseline
    assert doc["methods"]["fake"] == doc["methods"]["bicubic"]
    assert doc["methods"]["bicubic"]["mae_hu"] == pytest.approx(doc["methods"]["bicubic"]["mae"] * 4095)
    assert doc["data"]["split"] == "test" and doc["data"]["list"].endswith("test.txt")
    rows = read_csv(tmp_path / "e" / "per_image.csv")
    assert len(rows) == 4 * 3 and {"image", "seed", "method", *METRICS} <= set(rows[0])
    assert rows[0]["image"].startswith("chest/chest_lung2")
    assert "kind: first_stage" in out and "images: 4" in out and str(tmp_path / "e") in out
    assert "x3.7  (GT 59x59, 4 images)" in out and "fake" in out


def test_same_seed_same_numbers(capsys, fake_ldm, tmp_path):
    args = ["--exp", fake_ldm, "--lr_size", 16, "--scale_ratio", 4, "--degradation", "ct", "--noise_hu", 10]
    assert run(capsys, *args, "--out", tmp_path / "a")[0] == 0
    assert run(capsys, *args, "--out", tmp_path / "b")[0] == 0
    assert run(capsys, *args, "--out", tmp_path / "c", "--seed", 5)[0] == 0
    a, b, c = (load_json(tmp_path / d / "metrics.json") for d in "abc")
    assert a["methods"] == b["methods"] and a["methods_std"] == b["methods_std"]
    assert (tmp_path / "a" / "per_image.csv").read_text() == (tmp_path / "b" / "per_image.csv").read_text()
    assert a["methods"]["sampler"] != c["methods"]["sampler"]


def test_an_images_numbers_do_not_depend_on_the_other_scales_or_the_batch(capsys, fake_ldm, tmp_path):
    common = ["--exp", fake_ldm, "--lr_size", 16, "--degradation", "ct", "--noise_hu", 10]
    assert run(capsys, *common, "--scale_ratio", 4, "--out", tmp_path / "one")[0] == 0
    assert run(capsys, *common, "--scale_ratio", 2, 4, "--out", tmp_path / "two")[0] == 0
    assert run(capsys, *common, "--scale_ratio", 4, "--batch_size", 3, "--out", tmp_path / "batch")[0] == 0
    one, two = read_csv(tmp_path / "one" / "per_image.csv"), read_csv(tmp_path / "two" / "x4" / "per_image.csv")
    assert one == two
    batched = read_csv(tmp_path / "batch" / "per_image.csv")
    # LR noise and sampler noise are per image whatever the batch;
    # batched convolutions may differ from single ones in the last float bit, no more
    for a, b in zip(one, batched, strict=True):
        assert (a["image"], a["seed"], a["method"]) == (b["image"], b["seed"], b["method"])
        assert {k: float(v) for k, v in a.items() if k in METRICS} == pytest.approx(
                {k: float(v) for k, v in b.items() if k in METRICS}, rel=1e-6)
    assert load_json(tmp_path / "batch" / "metrics.json")["batch_size"] == 3


def test_several_scales_write_one_folder_each_a_summary_and_a_plot(capsys, fake_run, tmp_path):
    rc, out, _ = run(capsys, "--exp", fake_run, "--lr_size", 16, "--scale_ratio", 2, 2.5, 4, "--out", tmp_path / "e")
    assert rc == 0
    for name, size in (("x2", 32), ("x2.5", 40), ("x4", 64)):
        doc = load_json(tmp_path / "e" / name / "metrics.json")
        assert doc["out_size"] == [size, size] and (tmp_path / "e" / name / "per_image.csv").is_file()
    summary = load_json(tmp_path / "e" / "summary.json")
    assert summary["scale_ratio"] == [2, 2.5, 4] and list(summary["scales"]) == ["x2", "x2.5", "x4"]
    assert summary["scales"]["x2"]["methods"]["bicubic"]["psnr"] > summary["scales"]["x4"]["methods"]["bicubic"]["psnr"]
    with Image.open(tmp_path / "e" / "psnr_vs_scale.png") as plot:
        assert plot.format == "PNG" and plot.size[0] > 300
    assert out.count("(GT ") == 3


def test_n_samples_saves_std_maps_and_a_csv_column(capsys, fake_ldm, tmp_path):
    rc, _, _ = run(capsys, "--exp", fake_ldm, "--lr_size", 16, "--scale_ratio", 2, "--n_samples", 3, "--steps", 2,
                   "--out", tmp_path / "e")
    assert rc == 0
    doc = load_json(tmp_path / "e" / "metrics.json")
    assert doc["n_samples"] == 3 and doc["steps"] == 2
    # the stand-in adds N(0, 0.02^2) in model units; the population std of 3 draws averages
    # sigma * E[chi_2] / sqrt(3) = sigma * 1.2533 / 1.7321, in HU sigma = 0.02 * 4095 / 2
    expected_hu = 0.02 * 4095 / 2 * 1.2533 / 3**0.5
    # K > 1: a 1-sample row beside the mean-of-K row, each named for what it scores
    assert list(doc["methods"])[-2:] == ["sampler (1 sample)", "sampler (mean of 3)"]
    assert doc["method_info"]["sampler (1 sample)"]["sampling"]["n_samples"] == 1
    assert "std_hu" not in doc["methods"]["sampler (1 sample)"]
    assert doc["methods"]["sampler (mean of 3)"]["std_hu"] == pytest.approx(expected_hu, rel=0.1)
    assert "std_hu" not in doc["methods"]["bicubic"]
    rows = read_csv(tmp_path / "e" / "per_image.csv")
    assert all((r["std_hu"] != "") == (r["method"] == "sampler (mean of 3)") for r in rows)
    std_map = tmp_path / "e" / "images" / "chest" / "chest_lung2_s01_slice_013_std.png"
    with Image.open(std_map) as im:
        std = np.array(im)
    assert std.dtype == np.uint16 and std.shape == (32, 32)
    assert std.mean() == pytest.approx(expected_hu, rel=0.15)  # pixel value = std in HU
    assert (tmp_path / "e" / "images" / "chest" / "chest_lung2_s01_slice_013_sr.png").is_file()


def test_save_image_writes_hu_pngs_and_comparison_figures(capsys, fake_run, tmp_path):
    rc, _, _ = run(capsys, "--exp", fake_run, "--lr_size", 16, "--scale_ratio", 3, "--save_image",
                   "--out", tmp_path / "e")
    assert rc == 0
    images = tmp_path / "e" / "images" / "chest"
    assert len(list(images.glob("*_sr.png"))) == 4 and len(list(images.glob("*_compare.png"))) == 4
    values, kind = read_slice(images / "chest_lung2_s01_slice_013_sr.png")
    assert kind == "hu" and values.shape == (48, 48) and values.min() < -500 < values.max()
    with Image.open(images / "chest_lung2_s01_slice_013_compare.png") as figure:
        assert figure.format == "PNG" and figure.size[0] > figure.size[1] > 300  # methods side by side


def test_max_figures_bounds_the_panels_not_the_sr_pngs(capsys, fake_run, tmp_path):
    rc, _, _ = run(capsys, "--exp", fake_run, "--lr_size", 16, "--scale_ratio", 3, "--save_image",
                   "--max_figures", 1, "--batch_size", 2, "--out", tmp_path / "e")
    images = tmp_path / "e" / "images" / "chest"
    assert rc == 0 and len(list(images.glob("*_sr.png"))) == 4 and len(list(images.glob("*_compare.png"))) == 1


def test_default_out_is_in_the_log_dir_and_never_reused(capsys, fake_run):
    args = ["--exp", fake_run, "--lr_size", 16, "--scale_ratio", 2, "--first_k", 2]
    rc, out, _ = run(capsys, *args)
    first = fake_run / "eval" / "test_lr16_x2_bicubic_seed23_first2"
    assert rc == 0 and (first / "metrics.json").is_file() and str(first) in out
    before = (first / "metrics.json").read_text()
    rc, out, _ = run(capsys, *args)
    assert rc == 0 and (first.with_name(first.name + "_2") / "metrics.json").is_file()
    assert "exists" in out and (first / "metrics.json").read_text() == before
    assert load_json(first / "metrics.json")["n_images"] == 2


def test_explicit_out_that_holds_files_needs_overwrite(capsys, fake_run, tmp_path):
    out = tmp_path / "e"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    rc, _, err = run(capsys, "--exp", fake_run, "--lr_size", 16, "--scale_ratio", 2, "--out", out)
    assert rc == 2 and "--overwrite" in err and not (out / "metrics.json").exists()
    rc, _, _ = run(capsys, "--exp", fake_run, "--lr_size", 16, "--scale_ratio", 2, "--out", out, "--overwrite")
    assert rc == 0 and (out / "metrics.json").is_file() and (out / "notes.txt").read_text() == "mine"


def test_a_folder_of_slices_skips_and_counts_a_corrupt_file(capsys, fake_run, ct_tree):
    (ct_tree / "head" / "broken.png").write_bytes(b"")
    rc, out, err = run(capsys, "--exp", fake_run, "--lr_size", 16, "--scale_ratio", 2, "--data_root", ct_tree)
    assert rc == 0
    assert "broken.png" in err and "skipped" in err
    out_dir = fake_run / "eval" / "folder_lr16_x2_bicubic_seed23"
    doc = load_json(out_dir / "metrics.json")
    assert doc["n_images"] == 12 and doc["n_skipped"] == 1 and doc["skipped"][0]["image"] == "head/broken.png"
    assert doc["data"] == {"split": "folder", "root": str(ct_tree), "list": None}


def test_a_set_with_no_readable_slice_names_each_file_and_its_reason(capsys, fake_run, tmp_path):
    """With no good slice beside them, the bad ones are still named, with why (one line, capped)."""
    root = tmp_path / "bad"
    root.mkdir()
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_text("not an image")
    rc, out, err = run(capsys, "--exp", fake_run, "--lr_size", 16, "--scale_ratio", 2, "--data_root", root,
                       "--out", tmp_path / "e")
    assert rc == 2 and not (tmp_path / "e").exists()
    message = err.strip().splitlines()[-1]
    assert "none of the 2 slice(s) could be read" in message
    assert "empty.png: not a PNG file" in message and "text.png: not a PNG file" in message

    for i in range(7):
        (root / f"more_{i}.png").write_bytes(b"")
    with pytest.raises(SliceSetError) as refused:
        scan(slice_paths(root), root, lr_size=16)
    message = str(refused.value)
    assert "none of the 9 slice(s)" in message and message.count("not a PNG file") == 5
    assert message.endswith("; and 4 more") and len(message.splitlines()) == 1


def test_a_list_file_relative_to_a_data_root(capsys, fake_run, ct_tree, tmp_path):
    listing = tmp_path / "mine.txt"
    listing.write_text("head/head_cranium_s01_slice_023.png\nchest/chest_lung1_s01_slice_011.png\n")
    rc, _, _ = run(capsys, "--exp", fake_run, "--lr_size", 16, "--scale_ratio", 2, "--list", listing,
                   "--data_root", ct_tree, "--out", tmp_path / "e")
    assert rc == 0
    rows = read_csv(tmp_path / "e" / "per_image.csv")
    expected = ["head/head_cranium_s01_slice_023.png", "chest/chest_lung1_s01_slice_011.png"]
    assert [r["image"] for r in rows[::3]] == expected


def test_8_bit_slices_are_scored_on_their_own_range(capsys, fake_run, tmp_path):
    root = tmp_path / "png8"
    for i in range(2):
        write_png8(root / f"s{i}.png", np.linspace(0, 255, 32 * 32).reshape(32, 32) * (0.5 + i / 2))
    rc, _, _ = run(capsys, "--exp", fake_run, "--lr_size", 8, "--scale_ratio", 4, "--data_root", root,
                   "--out", tmp_path / "e", "--save_image")
    assert rc == 0
    doc = load_json(tmp_path / "e" / "metrics.json")
    assert doc["data_kind"] == "u8" and set(doc["methods"]["fake"]) == {"psnr", "ssim", "mae", "lr_psnr"}
    assert read_slice(tmp_path / "e" / "images" / "s0_sr.png")[1] == "u8"


# ---- refusals: one line, exit code 2, nothing written ------------------------------------------


def _no_checkpoint(run_dir, ct_splits):
    (run_dir / "checkpoints" / "last.ckpt").unlink()
    return [], "no checkpoints/last.ckpt"


def _no_config(run_dir, ct_splits):
    for path in (run_dir / "configs").iterdir():
        path.unlink()
    return [], "no configs/"


def _missing_listed_slice(run_dir, ct_splits):
    ct_splits.test.write_text(ct_splits.test.read_text() + "chest/gone.png\n")
    return [], "missing under"


def _empty_root(run_dir, ct_splits):
    empty = ct_splits.root.parent / "empty"
    empty.mkdir()
    return ["--data_root", empty], "no PNG slices"


@pytest.mark.parametrize("breakage", [
    lambda d, s: (["--scale_ratio", 1.0], "every scale must be > 1"),
    lambda d, s: (["--scale_ratio", 0.5], "every scale must be > 1"),
    lambda d, s: (["--lr_size", 0], "--lr_size"),
    lambda d, s: (["--lr_size", 65], "smaller than --lr_size 65"),
    lambda d, s: (["--batch_size", 0], "--batch_size"),
    lambda d, s: (["--max_figures", -1], "--max_figures"),
    lambda d, s: (["--exp", d.parent / "nothing"], "log dir not found"),
    _no_checkpoint, _no_config, _missing_listed_slice, _empty_root,
])
def test_bad_input_is_one_line_and_leaves_nothing(capsys, fake_run, ct_splits, tmp_path, breakage):
    extra, message = breakage(fake_run, ct_splits)
    args = {"--exp": fake_run, "--lr_size": 16, "--scale_ratio": 2}
    flat = []
    for key, value in args.items():
        if key not in extra:
            flat += [key, value]
    rc, out, err = run(capsys, *flat, *extra)
    assert rc == 2
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (fake_run / "eval").exists() and not list(tmp_path.glob("**/metrics.json"))


def test_the_script_itself_answers_bad_input_without_a_traceback(fake_run):
    env = {"PYTHONPATH": f"{ROOT}:{HERE}", "PATH": "/usr/bin:/bin"}
    argv = ["--exp", fake_run, "--lr_size", 16, "--scale_ratio", 1]
    proc = subprocess.run([sys.executable, ROOT / "eval_sr.py", *map(str, argv)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --scale_ratio: every scale must be > 1 (super-resolution), got 1"


# ---- the real tiny models ----------------------------------------------------------------------


@pytest.fixture
def tiny_runs(ct_splits, tmp_path):
    logs = tmp_path / "logs"
    return {kind: make_tiny_logdir(logs, kind, ct_splits.root) for kind in ("first_stage", "ldm")}


def test_tiny_ldm_against_the_tiny_first_stage(capsys, tiny_runs, tmp_path):
    rc, out, err = run(capsys, "--exp", tiny_runs["ldm"], "--compare", tiny_runs["first_stage"], "--lr_size", 16,
                       "--scale_ratio", 2, 4, "--steps", 2, "--n_samples", 2, "--first_k", 1, "--save_image",
                       "--out", tmp_path / "ldm")
    assert rc == 0, err
    assert "kind: ldm" in out
    doc = load_json(tmp_path / "ldm" / "x4" / "metrics.json")
    assert (doc["steps"], doc["eta"], doc["n_samples"]) == (2, 1.0, 2)  # eta: the config's sample_eta
    assert list(doc["methods"]) == ["bicubic", "lanczos", "first_stage-tiny", "ldm-tiny (1 sample)",
                                    "ldm-tiny (mean of 2)"]
    assert doc["method_info"]["first_stage-tiny"]["kind"] == "first_stage"
    assert doc["method_info"]["ldm-tiny (mean of 2)"]["ckpt_sha256"] == doc["ckpt_sha256"]
    assert "std_hu" in doc["methods"]["ldm-tiny (mean of 2)"]
    assert "std_hu" in read_csv(tmp_path / "ldm" / "x4" / "per_image.csv")[0]
    images = tmp_path / "ldm" / "x4" / "images" / "chest"
    assert len(list(images.glob("*_std.png"))) == 1 and len(list(images.glob("*_compare.png"))) == 1
    assert (tmp_path / "ldm" / "psnr_vs_scale.png").is_file()

    rc, out, err = run(capsys, "--exp", tiny_runs["first_stage"], "--compare", tiny_runs["ldm"], "--lr_size", 16,
                       "--scale_ratio", 3.7, "--steps", 2, "--first_k", 1, "--out", tmp_path / "fs")
    assert rc == 0, err
    doc = load_json(tmp_path / "fs" / "metrics.json")
    assert "kind: first_stage" in out and doc["kind"] == "first_stage" and doc["out_size"] == [59, 59]
    assert list(doc["methods"]) == ["bicubic", "lanczos", "ldm-tiny", "first_stage-tiny"]
    assert doc["steps"] is None
    assert doc["method_info"]["ldm-tiny"]["sampling"] == {"sampler": "ddim", "steps": 2, "eta": 1.0, "tile": 64,
                                                         "n_samples": 1}


def test_bf16_precision_runs_the_models_under_autocast_and_says_so(capsys, tiny_runs, tmp_path):
    common = ["--exp", tiny_runs["ldm"], "--compare", tiny_runs["first_stage"], "--lr_size", 16, "--scale_ratio", 4,
              "--steps", 2, "--first_k", 2]
    assert run(capsys, *common, "--out", tmp_path / "fp32")[0] == 0
    rc, _, err = run(capsys, *common, "--precision", "bf16", "--out", tmp_path / "bf16")
    assert rc == 0, err
    fp32, bf16 = load_json(tmp_path / "fp32" / "metrics.json"), load_json(tmp_path / "bf16" / "metrics.json")
    assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16")
    for name in ("bicubic", "lanczos"):  # the interpolation baselines are not models: untouched
        assert bf16["methods"][name] == fp32["methods"][name]
    for name in ("first_stage-tiny", "ldm-tiny"):  # the same seeds: bf16 rounding moves PSNR a little
        assert bf16["methods"][name]["psnr"] == pytest.approx(fp32["methods"][name]["psnr"], abs=0.5)
    rc, _, err = run(capsys, *common, "--precision", "fp16", "--out", tmp_path / "bad")
    assert rc == 2 and "--precision" in err


def test_bf16_default_out_is_named_apart(capsys, fake_run):
    assert run(capsys, "--exp", fake_run, "--lr_size", 16, "--scale_ratio", 2, "--precision", "bf16")[0] == 0
    (out,) = (fake_run / "eval").iterdir()
    assert out.name.endswith("_bf16")


def test_back_projection_makes_the_models_consistent_and_leaves_the_baselines(capsys, tiny_runs, tmp_path):
    common = ["--exp", tiny_runs["ldm"], "--compare", tiny_runs["first_stage"], "--lr_size", 16, "--scale_ratio", 4,
              "--steps", 2, "--first_k", 2]
    assert run(capsys, *common, "--out", tmp_path / "raw")[0] == 0
    rc, _, err = run(capsys, *common, "--back_projection", 10, "--out", tmp_path / "bp")
    assert rc == 0, err
    raw, bp = load_json(tmp_path / "raw" / "metrics.json"), load_json(tmp_path / "bp" / "metrics.json")
    assert bp["back_projection"] == {"iterations": 10, "degradation": "bicubic"} and raw["back_projection"] is None
    for name in ("bicubic", "lanczos"):
        assert bp["methods"][name] == raw["methods"][name]
    assert list(bp["methods"]) == ["bicubic", "lanczos", "bicubic+bp", "first_stage-tiny", "ldm-tiny"]
    assert bp["methods"]["bicubic+bp"]["lr_psnr"] >= 60 and bp["methods"]["bicubic+bp"]["psnr"] > raw["methods"][
        "bicubic"]["psnr"]
    for name in ("first_stage-tiny", "ldm-tiny"):  # barely trained models: far from their LR until projected
        assert bp["methods"][name]["lr_psnr"] >= 60 > raw["methods"][name]["lr_psnr"]
        assert bp["methods"][name]["psnr"] > raw["methods"][name]["psnr"]
        assert bp["method_info"][name]["back_projection"] == {"iterations": 10, "degradation": "bicubic"}
    rc, _, err = run(capsys, *common, "--back_projection", -1, "--out", tmp_path / "bad")
    assert rc == 2 and "--back_projection" in err
    rc, _, err = run(capsys, *common, "--tile", -1, "--out", tmp_path / "bad")
    assert rc == 2 and "--tile" in err


@pytest.mark.filterwarnings("ignore")
def test_compile_gives_the_eager_numbers(capsys, tiny_runs, tmp_path):
    """torch.compile (or, without a C++ compiler here, its eager fallback) changes speed, not results."""
    common = ["--exp", tiny_runs["first_stage"], "--lr_size", 16, "--scale_ratio", 2, "--first_k", 1]
    assert run(capsys, *common, "--out", tmp_path / "eager")[0] == 0
    rc, _, err = run(capsys, *common, "--compile", "--out", tmp_path / "compiled")
    assert rc == 0, err
    eager, compiled = (load_json(tmp_path / d / "metrics.json") for d in ("eager", "compiled"))
    assert (eager["compile"], compiled["compile"]) == (False, True)
    for key, value in eager["methods"]["first_stage-tiny"].items():
        assert compiled["methods"]["first_stage-tiny"][key] == pytest.approx(value, rel=1e-4, abs=1e-6)


def test_the_sampler_is_chosen_recorded_and_checked(capsys, tiny_runs, tmp_path):
    common = ["--exp", tiny_runs["ldm"], "--lr_size", 16, "--scale_ratio", 2, "--steps", 2, "--first_k", 1]
    rc, _, err = run(capsys, *common, "--sampler", "dpmpp_2m", "--out", tmp_path / "dpm")
    assert rc == 0, err
    doc = load_json(tmp_path / "dpm" / "metrics.json")
    assert doc["sampler"] == "dpmpp_2m" and doc["method_info"]["ldm-tiny"]["sampling"]["sampler"] == "dpmpp_2m"
    assert doc["eta"] is None  # DDIM's eta does not apply to the ODE solver, so none is recorded
    assert load_json(tmp_path / "dpm" / "metrics.json")["methods"]["ldm-tiny"]["psnr"] > 0
    rc, _, err = run(capsys, *common, "--sampler", "euler", "--out", tmp_path / "bad")
    assert rc == 2 and "--sampler" in err and not (tmp_path / "bad").exists()
