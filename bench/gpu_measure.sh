#!/usr/bin/env bash
# Every GPU figure of the project in one command (issues 3, 4 and 8), on one CUDA GPU:
#
#     bash bench/gpu_measure.sh [OUT]            # OUT defaults to bench/out
#
#  1. the speed benches that need no trained weights: bench/decoder.py, bench/training.py
#  2. the sample CT and the patient-wise split (chest_lung2 held out for testing)
#  3. training on fixed wall-clock budgets (Lightning max_time; a config's max_steps still stops a
#     run that is faster): stage 1 (ct256-f4), the LIIF baseline with and without the LR skip,
#     stage 2 (ct256-f4) on the stage-1 checkpoint, stage 3 (alignment) from stage 2;
#     all with --gpus 0, --scale_lr False --precision bf16-mixed
#  4. eval_sr.py: LR 64 px at x2 x3.5 x4 x6 x8; bicubic, Lanczos, both LIIFs and the first stage
#     beside the LDM (1 sample and the mean of 8, 50 DDIM steps), and the LDM after stage 3
#  5. bench/sampling.py on the trained stage-2 run and real test slices (speed and step-PSNR)
# Everything lands under OUT: logs/ (training runs), eval/, *.json, gpu_measure.log.
# A re-run reuses finished training runs (FRESH=1 retrains); budgets can be overridden from the
# environment, e.g. STAGE2_TIME=00:01:00:00 bash bench/gpu_measure.sh.
set -euo pipefail

# Wall-clock budgets per training run, DD:HH:MM:SS (Lightning's max_time).
STAGE1_TIME=${STAGE1_TIME:-00:00:10:00}
LIIF_TIME=${LIIF_TIME:-00:00:10:00}       # each of the two LIIF runs (the 7-minute H100 table's regime)
STAGE2_TIME=${STAGE2_TIME:-00:00:30:00}
STAGE3_TIME=${STAGE3_TIME:-00:00:10:00}
EVAL_STEPS=${EVAL_STEPS:-50}
EVAL_SCALES=${EVAL_SCALES:-"2 3.5 4 6 8"}
FRESH=${FRESH:-0}
PY=${PYTHON:-python}

cd "$(dirname "$0")/.."
OUT=${1:-bench/out}
LOGS="$OUT/logs"
mkdir -p "$OUT" "$LOGS"
exec > >(tee -a "$OUT/gpu_measure.log") 2>&1

banner() { printf '\n=== %s  [%s]\n' "$1" "$(date -u +%FT%TZ)"; }
run() { echo "\$ $*"; "$@"; }

banner "the card"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv | tee "$OUT/nvidia-smi.csv"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; print(torch.__version__, torch.cuda.get_device_name())"
git rev-parse --short HEAD 2>/dev/null || echo "commit unknown"

banner "1/5 decoder and training benches (random weights)"
run "$PY" bench/decoder.py --compile --out "$OUT/decoder.json"
run "$PY" bench/training.py --stages stage1 stage2 stage3 liif --compile --out "$OUT/training.json"

banner "2/5 sample CT and patient-wise split"
run "$PY" -m ldm.data.sample --out data/CT
if [[ -f data/train.txt && -f data/val.txt && -f data/test.txt ]]; then
    echo "reusing data/{train,val,test}.txt (delete them to split again)"
else
    run "$PY" split.py --root data/CT --out data --test_patients chest_lung2
fi

# train NAME CONFIG MAX_TIME [dotlist...] -> prints the run dir (last line); reuses a finished run
train() {
    local name=$1 config=$2 budget=$3
    shift 3
    local done_run
    done_run=$(ls -d "$LOGS"/*_"$name" 2>/dev/null | sort | tail -n 1 || true)
    if [[ "$FRESH" != 1 && -n "$done_run" && -f "$done_run/checkpoints/DONE" ]]; then
        echo "reusing finished run $done_run (FRESH=1 retrains)" >&2
        echo "$done_run"
        return
    fi
    echo "\$ main.py --base $config -n $name (max_time $budget) $*" >&2
    "$PY" main.py --base "$config" -t -n "$name" -l "$LOGS" --gpus 0, --scale_lr False --precision bf16-mixed \
        "lightning.trainer.max_time=$budget" "$@" >&2
    done_run=$(ls -d "$LOGS"/*_"$name" | sort | tail -n 1)
    echo "budget $budget" > "$done_run/checkpoints/DONE"
    echo "$done_run"
}

banner "3/5 training (stage 1 $STAGE1_TIME, LIIF 2 x $LIIF_TIME, stage 2 $STAGE2_TIME, stage 3 $STAGE3_TIME)"
S1=$(train s1-ct256-f4 configs/first-stage/ct256-f4.yaml "$STAGE1_TIME" | tail -n 1)
LIIF=$(train liif-edsr configs/baselines/liif-edsr.yaml "$LIIF_TIME" | tail -n 1)
LIIF_SKIP=$(train liif-edsr-skip configs/baselines/liif-edsr.yaml "$LIIF_TIME" model.params.lr_skip=true | tail -n 1)
S2=$(train s2-ct256-f4 configs/latent-diffusion/ct256-f4.yaml "$STAGE2_TIME" \
    "model.params.first_stage_config.params.ckpt_path=$S1/checkpoints/last.ckpt" | tail -n 1)
S3=$(train s3-ct256-f4-align configs/latent-diffusion/ct256-f4-align.yaml "$STAGE3_TIME" \
    "model.params.ckpt_path=$S2/checkpoints/last.ckpt" | tail -n 1)
printf 'stage 1: %s\nLIIF: %s\nLIIF+skip: %s\nstage 2: %s\nstage 3: %s\n' "$S1" "$LIIF" "$LIIF_SKIP" "$S2" "$S3" \
    | tee "$OUT/runs.txt"

banner "4/5 eval_sr.py (LR 64 px, x${EVAL_SCALES// / x}, $EVAL_STEPS DDIM steps)"
# shellcheck disable=SC2086  # EVAL_SCALES is a list
EVAL=("$PY" eval_sr.py --lr_size 64 --scale_ratio $EVAL_SCALES --steps "$EVAL_STEPS" --device cuda --overwrite --no_progress)
run "${EVAL[@]}" --exp "$S2" --n_samples 8 --compare "$LIIF" "$LIIF_SKIP" "$S1" --out "$OUT/eval/ldm-mean8"
run "${EVAL[@]}" --exp "$S2" --n_samples 1 --out "$OUT/eval/ldm-1sample"
run "${EVAL[@]}" --exp "$S3" --n_samples 1 --out "$OUT/eval/align-1sample"
run "${EVAL[@]}" --exp "$S3" --n_samples 8 --out "$OUT/eval/align-mean8"

banner "5/5 sampling bench on the trained stage-2 run and real test slices"
run "$PY" bench/sampling.py --exp "$S2" --data_root data/CT --list data/test.txt --compile --out "$OUT/sampling.json"
# batch-1 latency with CUDA graphs (reduce-overhead): many small launches per DDIM step
run "$PY" bench/sampling.py --exp "$S2" --data_root data/CT --list data/test.txt --compile \
    --compile_mode reduce-overhead --dtype bf16 --steps 25 50 --batch 1 --out "$OUT/sampling-cudagraphs.json"

banner "done"
echo "runs: $OUT/runs.txt; quality tables: $OUT/eval/*/summary.json; speed: $OUT/{decoder,training,sampling}.json"
