#!/usr/bin/env bash
# The CPU quality benchmark (issue 12): the demo's architectures trained longer, evaluated on the
# held-out patient at x2, x3.5, x4 and x8, and the sampler comparison on the trained LDM:
#
#     bash bench/cpu_quality.sh [OUT]      # OUT defaults to bench/out-cpu; about 60 min on 2 CPU cores
#     python bench/quality_table.py OUT/eval --json OUT/quality.json
#
# bench/gpu_measure.sh with CPU settings (every variable it reads can still be set):
#   train   the demo configs (128 px slices) on step budgets, each with a time guard: LIIF + LR skip
#           7 min (the reference's budget), stage 1 2,000 steps, stage 2 4,000 steps (residual
#           diffusion, as in the demo), stage 3 800 steps; about 35 min in all. The learning rates
#           are the demo's (base_learning_rate x batch, as --scale_lr would give).
#   eval    eval_sr.py on every 4th slice of chest_lung2 (16 whole slices), LR 32 px (GT 64 to
#           256 px: what fits the CPU at x8), 20 DDIM steps: bicubic, Lanczos, LIIF + LR skip, the
#           first stage, the LDM (1 sample, mean of 8) and stage 3 (1 sample, mean of 8).
#   sampling  bench/sampling.py on the stage-2 run: DDIM 200 steps (the reference settings)
#           against DDIM and DPM-Solver++(2M) at 10 / 20 / 50 steps, 32 -> 128 px, batch 4.
set -euo pipefail
export PARTS=${PARTS:-"data train eval sampling"}
export TRAIN=${TRAIN:-"s1 liif-skip s2 s3"}
export DEVICE=${DEVICE:-cpu}
export TRAIN_FLAGS=${TRAIN_FLAGS:-"--precision 32"}  # CPU, fp32 (an empty value would mean the GPU default)
export CONFIG_S1=${CONFIG_S1:-configs/first-stage/ct-demo.yaml}
export CONFIG_LIIF=${CONFIG_LIIF:-configs/baselines/liif-demo.yaml}
export CONFIG_S2=${CONFIG_S2:-configs/latent-diffusion/ct-demo.yaml}
export CONFIG_S3=${CONFIG_S3:-configs/latent-diffusion/ct-demo-align.yaml}
# the time guards: a budget is the step count; these only stop a much slower machine
export LIIF_TIME=${LIIF_TIME:-00:00:07:00} STAGE1_TIME=${STAGE1_TIME:-00:00:20:00}
export STAGE2_TIME=${STAGE2_TIME:-00:00:20:00} STAGE3_TIME=${STAGE3_TIME:-00:00:12:00}
export LIIF_OVERRIDES=${LIIF_OVERRIDES:-"model.base_learning_rate=1e-3 lightning.trainer.max_steps=1000000"}
export S1_OVERRIDES=${S1_OVERRIDES:-"model.base_learning_rate=1e-3 lightning.trainer.max_steps=2000"}
export S2_OVERRIDES=${S2_OVERRIDES:-"model.base_learning_rate=1e-3 lightning.trainer.max_steps=4000"}
export S3_OVERRIDES=${S3_OVERRIDES:-"model.base_learning_rate=8e-4 lightning.trainer.max_steps=800"}
export EVAL_LR=${EVAL_LR:-32} EVAL_SCALES=${EVAL_SCALES:-"2 3.5 4 8"} EVAL_STEPS=${EVAL_STEPS:-20}
export EVAL_BATCH=${EVAL_BATCH:-8} EVAL_BP=${EVAL_BP:-0} EVAL_ARGS=${EVAL_ARGS:-"--every 4"}
export SAMPLING_ARGS=${SAMPLING_ARGS:-"--sizes 32:128 --steps 10 20 50 --batch 4 --ref_steps 200 --ref_batch 4 --dtype fp32 --repeats 1 --no_flops"}
exec bash "$(dirname "$0")/gpu_measure.sh" "${1:-$(dirname "$0")/out-cpu}"
