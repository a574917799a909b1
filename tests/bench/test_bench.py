"""The bench/ harness on the CPU at tiny sizes: each script runs end to end and writes the JSON it promises.

The numbers are not checked against targets (a CPU says nothing about an H100), only that every
timed row carries finite, positive measurements and the provenance that makes a figure citable.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import common, decoder, sampling, training

# LightningModule.log outside a Trainer (the training bench calls training_step directly) only warns
pytestmark = pytest.mark.filterwarnings("ignore:.*self.log\\(\\)")
REPO = Path(__file__).resolve().parents[2]
# one thread: on a shared 2-core runner OpenMP spin-waits made tiny convolutions 100x slower
FAST = ["--tiny", "--device", "cpu", "--repeats", "1", "--warmup", "0", "--threads", "1"]
META_KEYS = {"card", "torch", "date", "git_commit", "command", "device", "tiny"}


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # --threads sets it for the whole (xdist worker) process


def run(module, tmp_path, *extra):
    out = tmp_path / f"{module.__name__.rsplit('.', 1)[-1]}.json"
    assert module.main([*FAST, "--out", str(out), *extra]) == 0
    document = json.loads(out.read_text())
    assert META_KEYS <= set(document["meta"])
    assert document["meta"]["command"].startswith(f"python bench/{out.stem}.py --tiny")
    assert document["rows"] and all(row["status"] == "ok" for row in document["rows"])
    return document


def positive(row, *keys):
    for key in keys:
        value = row[key]
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, (key, value)


def test_sampling_rows_speedups_and_step_psnr(tmp_path):
    doc = run(sampling, tmp_path, "--sizes", "16:64")
    rows = doc["rows"]
    assert {(r["steps"], r["batch"], r["dtype"]) for r in rows} >= {(2, 1, "fp32"), (4, 2, "bf16")}
    for row in rows:
        positive(row, "latency_s", "slices_per_s", "speedup_vs_reference", "tflop")
    ref = [r for r in rows if r["reference"]]
    assert len(ref) == 1 and (ref[0]["steps"], ref[0]["batch"], ref[0]["dtype"]) == (4, 2, "fp32")
    assert ref[0]["speedup_vs_reference"] == pytest.approx(1.0)
    # step-PSNR at the quality batch against the fp32 4-step samples, labelled a smoke number
    assert "SMOKE" in doc["quality_basis"]
    positive(next(r for r in rows if (r["steps"], r["batch"], r["dtype"]) == (2, 2, "fp32")), "psnr_vs_ref_steps")


def test_sampling_compares_samplers_against_the_ddim_reference(tmp_path):
    doc = run(sampling, tmp_path, "--sizes", "16:64", "--samplers", "ddim", "dpmpp_2m", "--dtype", "fp32",
              "--batch", "2")
    rows = doc["rows"]
    assert {(r["sampler"], r["steps"]) for r in rows} == {("ddim", 2), ("ddim", 4), ("dpmpp_2m", 2), ("dpmpp_2m", 4)}
    (ref,) = [r for r in rows if r["reference"]]
    assert ref["sampler"] == "ddim" and doc["samplers"] == ["ddim", "dpmpp_2m"]
    dpm = next(r for r in rows if (r["sampler"], r["steps"]) == ("dpmpp_2m", 4))
    positive(dpm, "latency_s", "speedup_vs_reference")
    assert dpm["eta"] is None  # deterministic: DDIM's eta does not apply
    assert dpm["psnr_vs_ref_steps"] is None  # it is its own sampler's reference (4 steps here)
    positive(next(r for r in rows if (r["sampler"], r["steps"]) == ("dpmpp_2m", 2)), "psnr_vs_ref_steps")


def test_sampling_on_a_run_and_real_slices_reports_psnr_against_gt(tmp_path, ct_splits):
    from logdir_helpers import make_tiny_logdir

    exp = make_tiny_logdir(tmp_path / "logs", "ldm", ct_splits.root)
    doc = run(sampling, tmp_path, "--sizes", "16:64", "--dtype", "fp32", "--batch", "2", "--steps", "2", "4",
              "--exp", str(exp), "--data_root", str(ct_splits.root), "--list", str(ct_splits.test))
    assert doc["quality_basis"].startswith("trained run") and doc["model"]["exp"] == str(exp)
    assert doc["inputs"]["distinct_slices"] == 2  # the two slices the largest batch needs, of 4 listed
    fewer = next(r for r in doc["rows"] if r["steps"] == 2)
    positive(fewer, "psnr_gt", "psnr_vs_ref_steps")
    assert math.isfinite(fewer["delta_psnr_gt"])


def test_decoder_rows_match_the_naive_liif(tmp_path):
    doc = run(decoder, tmp_path, "--sizes", "32:128", "--dtype", "fp32")
    kinds = {r["kind"] for r in doc["rows"]}
    assert kinds == {"naive", "liif", "decode"}
    assert {r["chunk"] for r in doc["rows"] if r["kind"] == "liif"} == {"4096", "16384", "full"}
    for row in doc["rows"]:
        positive(row, "latency_ms", "mpx_per_s")
        if row["kind"] != "naive":
            assert row["rel_err"] < 1e-5  # fp32: the grid-first query computes the published function


def test_training_rows_count_flops(tmp_path):
    doc = run(training, tmp_path, "--dtype", "fp32")
    assert [r["stage"] for r in doc["rows"]] == ["stage1", "stage2"]
    for row in doc["rows"]:
        positive(row, "step_s", "images_per_s", "flops_per_step", "achieved_tflops")
        assert row["mfu"] is None  # no bf16 peak on the CPU
    stage2 = doc["rows"][1]["flops_by_module"]
    # the frozen encoder (condition and target latents) and the UNet; nothing counted twice
    assert set(stage2) == {"Encoder", "UNetModel"} and all(v > 0 for v in stage2.values())
    assert sum(stage2.values()) == doc["rows"][1]["flops_per_step"]


def test_the_unet_stage_times_the_stage2_step_without_the_encoder(tmp_path):
    doc = run(training, tmp_path, "--dtype", "fp32", "--stages", "stage2", "unet")
    stage2, unet = doc["rows"]
    assert unet["stage"] == "unet" and unet["latent"] == [s // 4 for s in stage2["hr"]]  # ct-tiny: f = 4
    positive(unet, "step_s", "images_per_s", "flops_per_step")
    # the same UNet work as stage 2's, the encoder's share gone
    assert set(unet["flops_by_module"]) == {"UNetModel"}
    assert unet["flops_per_step"] == stage2["flops_by_module"]["UNetModel"]


def test_compile_failure_falls_back_to_eager_and_restores():
    class Owner:
        def forward(self):
            return "eager"

    owner = Owner()

    def first_call():
        raise RuntimeError("no compiler here")

    with pytest.warns(UserWarning, match="torch.compile failed"):
        with common.compiled([(owner, "forward")], first_call) as err:
            assert "no compiler here" in err and owner.forward() == "eager"
        assert "forward" not in vars(owner)


def test_timer_and_reference_rows():
    timing = common.time_call(lambda: torch.ones(8).sum(), torch.device("cpu"), warmup=1, repeats=3)
    assert timing.repeats == 3 and 0 < timing.min_s <= timing.median_s <= timing.max_s
    rows = [{"size": "a", "steps": 200, "dtype": "fp32", "batch": 8, "compile": False, "slices_per_s": 2.0},
            {"size": "a", "steps": 50, "dtype": "bf16", "batch": 64, "compile": True, "slices_per_s": 50.0}]
    common.add_speedups(rows, common.Reference(steps=200), group="size", metric="slices_per_s")
    assert [r["speedup_vs_reference"] for r in rows] == [1.0, 25.0]
    assert common.peak_memory_gib(torch.device("cpu")) is None
    assert common.bf16_matmul_peak_tflops(torch.device("cpu")) is None


def test_scripts_answer_help_from_anywhere(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "decoder.py"), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--chunks" in proc.stdout


def test_a_row_whose_compiled_part_fell_back_to_eager_says_so():
    """A shape that fails to recompile mid-sweep runs eager: its row must not pass as compiled."""
    from ldm.compile import FELL_BACK

    cpu = torch.device("cpu")
    fell = common.measure(lambda: FELL_BACK.append("UNetModel.forward"), cpu, warmup=0, repeats=1)
    assert fell.status == "compile fell back: UNetModel.forward"
    assert common.measure(lambda: None, cpu, warmup=0, repeats=1).status == "ok"


def test_random_models_have_no_all_zero_weights():
    """Zero-initialised layers are filled: zeros can time faster and would make eps identically 0."""
    model = common.build_random_model(REPO / "configs" / "latent-diffusion" / "ct-tiny.yaml", torch.device("cpu"))
    assert all(p.any() for p in model.parameters() if p.dim() > 1)
    eps = model.unet(torch.randn(1, model.unet.in_channels, 8, 8), torch.tensor([500]))
    assert eps.abs().mean() > 0
