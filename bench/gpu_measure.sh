#!/usr/bin/env bash
# Every GPU figure of the project in one command (issues 3, 4 and 8), on one CUDA GPU:
#
#     bash bench/gpu_measure.sh [OUT]            # OUT defaults to bench/out (paths: from the caller's directory)
#
# Parts, in this order (PARTS picks and orders them):
#   benches   bench/decoder.py and bench/training.py (random weights)
#   data      the sample CT and the patient-wise split (chest_lung2 held out for testing)
#   train     training on wall-clock budgets (Lightning max_time; a config's max_steps still stops a
#             faster run): stage 1, the LIIF baseline without and with the LR skip, stage 2 on the
#             stage-1 checkpoint, stage 3 (alignment) from stage 2 (TRAIN picks which)
#   eval      eval_sr.py at LR 64 px, x2 x3.5 x4 x6 x8: bicubic, Lanczos, the LIIFs and the first stage
#             beside the LDM (1 sample and the mean of 8, 50 DDIM steps) and the LDM after stage 3;
#             the LDM (1 sample) and the regressions once more with --back_projection EVAL_BP
#             (without an s2 run: the regressions side by side, raw and back-projected)
#   sampling  bench/sampling.py on the trained stage-2 run and real test slices
# Everything lands under OUT: logs/ (training runs), eval/, *.json, runs.txt, gpu_measure.log, and
# DONE when the last part has finished. A re-run reuses finished training runs (FRESH=1 retrains).
#
# Environment (defaults in brackets):
#   PARTS ["benches data train eval sampling"]   TRAIN ["s1 liif liif-skip s2 s3"]
#   STAGE1_TIME [00:00:10:00]  LIIF_TIME [00:00:10:00] (each LIIF run)  STAGE2_TIME [00:00:30:00]
#   STAGE3_TIME [00:00:10:00]  (DD:HH:MM:SS)
#   DECODER_ARGS, TRAINING_ARGS, SAMPLING_ARGS, EVAL_ARGS: extra flags for those scripts (fewer rows)
#   EVAL_STEPS [50]  EVAL_SCALES ["2 3.5 4 6 8"]  EVAL_LR [64]  EVAL_PRECISION [fp32]  EVAL_BATCH [16]
#   EVAL_BP [20]: back-projection steps of the extra, data-consistent evaluation (0: none)
#   DATA_DIR [data] (slices in DATA_DIR/CT, split lists beside them)  FETCH [1] (0: use DATA_DIR/CT as is)
#   CONFIG_S1, CONFIG_LIIF, CONFIG_S2, CONFIG_S3: the configs (default the ct256-f4 / liif-edsr GPU ones;
#            CONFIG_S3 may name two files, a stage-2 config and the stage-3 overlay)
#   S1_OVERRIDES, LIIF_OVERRIDES, S2_OVERRIDES, S3_OVERRIDES: key=value overrides of one run's config
#   TRAIN_FLAGS ["--gpus 0, --precision bf16-mixed"]  DEVICE [cuda]  PYTHON [python]
#   PACK_TO: after every part, copy gpu_measure.log and a results.tgz of OUT's small files there
#            (no checkpoints or images), also when a job is killed at its time limit: two small
#            files for a job whose output folder may only hold a few.
# With no time limit, the defaults take about two hours on one H100 (an estimate from the budgets).
# On a GPU job with a time limit and no network, see BENCHMARKS.md, "On a GPU job with a time limit".
set -euo pipefail

PARTS=${PARTS:-"benches data train eval sampling"}
TRAIN=${TRAIN:-"s1 liif liif-skip s2 s3"}
STAGE1_TIME=${STAGE1_TIME:-00:00:10:00}
LIIF_TIME=${LIIF_TIME:-00:00:10:00}       # each of the two LIIF runs (the 7-minute H100 table's regime)
STAGE2_TIME=${STAGE2_TIME:-00:00:30:00}
STAGE3_TIME=${STAGE3_TIME:-00:00:10:00}
EVAL_STEPS=${EVAL_STEPS:-50}
EVAL_SCALES=${EVAL_SCALES:-"2 3.5 4 6 8"}
EVAL_LR=${EVAL_LR:-64}
EVAL_PRECISION=${EVAL_PRECISION:-fp32}  # the table's numbers; bf16 is the fast setting
EVAL_BATCH=${EVAL_BATCH:-16}
EVAL_BP=${EVAL_BP:-20}
DATA_DIR=${DATA_DIR:-data}
FETCH=${FETCH:-1}
CONFIG_S1=${CONFIG_S1:-configs/first-stage/ct256-f4.yaml}
CONFIG_LIIF=${CONFIG_LIIF:-configs/baselines/liif-edsr.yaml}
CONFIG_S2=${CONFIG_S2:-configs/latent-diffusion/ct256-f4.yaml}
CONFIG_S3=${CONFIG_S3:-configs/latent-diffusion/ct256-f4-align.yaml}
TRAIN_FLAGS=${TRAIN_FLAGS:-"--gpus 0, --precision bf16-mixed"}
DEVICE=${DEVICE:-cuda}
FRESH=${FRESH:-0}
PY=${PYTHON:-python}
PACK_TO=${PACK_TO:-}

banner() { printf '\n=== %s  [%s]\n' "$1" "$(date -u +%FT%TZ)"; }
# run CMD...: echo and run it in the background, so that a TERM reaches the trap at once (bash
# defers traps while a foreground child runs) and is passed on to the child
CHILD=""
run() {
    echo "\$ $*"
    "$@" &
    CHILD=$!
    local rc=0
    wait "$CHILD" || rc=$?
    CHILD=""
    return "$rc"
}
on_signal() {
    if [[ -n "$CHILD" ]]; then
        kill -TERM "$CHILD" 2>/dev/null || true  # main.py saves last.ckpt at a step boundary and exits
        wait "$CHILD" 2>/dev/null || true
    fi
    exit 143
}
wants() { [[ " $1 " == *" $2 "* ]]; }

# pack: the small files of OUT (no checkpoints or images) into PACK_TO (bench/pack_results.sh)
pack() {
    if [[ -n "$PACK_TO" ]]; then bash bench/pack_results.sh "$OUT" "$PACK_TO" || echo "pack_results.sh failed"; fi
}

# runs NAME -> the run dirs of that name under LOGS, oldest first (main.py adds -2, -3 to a name
# started twice in one second)
runs() {
    find "$LOGS" -mindepth 1 -maxdepth 1 -type d \( -name "*_$1" -o -name "*_$1-[0-9]*" \) 2>/dev/null | sort
}
# finished NAME -> the newest run dir of that name whose training finished (checkpoints/DONE), or nothing
finished() {
    runs "$1" | while read -r dir; do if [[ -f "$dir/checkpoints/DONE" ]]; then echo "$dir"; fi; done | tail -n 1
}

# train NAME CONFIG MAX_TIME [dotlist...]: trains unless a finished run exists (FRESH=1 retrains)
train() {
    local name=$1 config=$2 budget=$3
    shift 3
    local done_run
    done_run=$(finished "$name")
    if [[ "$FRESH" != 1 && -n "$done_run" ]]; then
        echo "reusing finished run $done_run ($(cat "$done_run/checkpoints/DONE"); FRESH=1 retrains)"
        return
    fi
    local before
    before=$(runs "$name")
    # shellcheck disable=SC2086  # TRAIN_FLAGS is a list of flags, config one or more files
    run "$PY" main.py --base $config -t -n "$name" -l "$LOGS" --scale_lr False $TRAIN_FLAGS \
        "lightning.trainer.max_time=$budget" "data.params.root=$DATA_DIR/CT" \
        "data.params.train_list=$DATA_DIR/train.txt" "data.params.val_list=$DATA_DIR/val.txt" \
        "data.params.test_list=$DATA_DIR/test.txt" "$@"
    # the run dir this call made (not the newest by name: an older run may sort after it)
    done_run=$(comm -13 <(echo "$before") <(runs "$name") | tail -n 1)
    [[ -n "$done_run" ]] || { echo "main.py made no run dir for $name under $LOGS"; exit 2; }
    echo "budget $budget" > "$done_run/checkpoints/DONE"
}

part_benches() {
    banner "benches: decoder and training (random weights)"
    # shellcheck disable=SC2086  # *_ARGS are lists of flags
    run "$PY" bench/decoder.py --compile --device "$DEVICE" --out "$OUT/decoder.json" ${DECODER_ARGS:-}
    # shellcheck disable=SC2086
    run "$PY" bench/training.py --stages stage1 stage2 unet stage3 liif --compile --device "$DEVICE" \
        --out "$OUT/training.json" ${TRAINING_ARGS:-}
}

part_data() {
    banner "data: sample CT and patient-wise split"
    if [[ "$FETCH" == 1 ]]; then
        run "$PY" -m ldm.data.sample --out "$DATA_DIR/CT"
    fi
    if [[ -f "$DATA_DIR/train.txt" && -f "$DATA_DIR/val.txt" && -f "$DATA_DIR/test.txt" ]]; then
        echo "reusing $DATA_DIR/{train,val,test}.txt (delete them to split again)"
    else
        run "$PY" split.py --root "$DATA_DIR/CT" --out "$DATA_DIR" --test_patients chest_lung2
    fi
}

part_train() {
    banner "train: $TRAIN (stage 1 $STAGE1_TIME, LIIF $LIIF_TIME each, stage 2 $STAGE2_TIME, stage 3 $STAGE3_TIME)"
    # shellcheck disable=SC2086  # *_OVERRIDES are lists of key=value
    if wants "$TRAIN" liif; then train liif "$CONFIG_LIIF" "$LIIF_TIME" model.params.lr_skip=false ${LIIF_OVERRIDES:-}; fi
    # shellcheck disable=SC2086
    if wants "$TRAIN" liif-skip; then
        train liif-skip "$CONFIG_LIIF" "$LIIF_TIME" model.params.lr_skip=true ${LIIF_OVERRIDES:-}
    fi
    if wants "$TRAIN" s1; then
        local regressor=()
        # shellcheck disable=SC2086  # CONFIG_S1 may name more than one file
        if grep -q "regressor_config" $CONFIG_S1; then
            # the first stage corrects the LIIF-skip run's SR (README, "Why the decoder learns")
            local liif_skip
            liif_skip=$(finished liif-skip)
            [[ -n "$liif_skip" ]] || { echo "$CONFIG_S1 has a regressor: TRAIN must include liif-skip"; exit 2; }
            regressor=("model.params.regressor_config.params.ckpt_path=$liif_skip/checkpoints/last.ckpt")
        fi
        # shellcheck disable=SC2086
        train s1 "$CONFIG_S1" "$STAGE1_TIME" "${regressor[@]}" ${S1_OVERRIDES:-}
    fi
    if wants "$TRAIN" s2; then
        local s1
        s1=$(finished s1)
        [[ -n "$s1" ]] || { echo "stage 2 needs a finished stage-1 run (TRAIN must include s1)"; exit 2; }
        # shellcheck disable=SC2086
        train s2 "$CONFIG_S2" "$STAGE2_TIME" \
            "model.params.first_stage_config.params.ckpt_path=$s1/checkpoints/last.ckpt" ${S2_OVERRIDES:-}
    fi
    if wants "$TRAIN" s3; then
        local s2
        s2=$(finished s2)
        [[ -n "$s2" ]] || { echo "stage 3 needs a finished stage-2 run (TRAIN must include s2)"; exit 2; }
        # shellcheck disable=SC2086  # CONFIG_S3 may be two files, the stage-2 config and its overlay
        train s3 "$CONFIG_S3" "$STAGE3_TIME" "model.params.ckpt_path=$s2/checkpoints/last.ckpt" ${S3_OVERRIDES:-}
    fi
    for name in s1 liif liif-skip s2 s3; do
        printf '%s: %s\n' "$name" "$(finished "$name")"
    done | tee "$OUT/runs.txt"
}

part_eval() {
    banner "eval: LR $EVAL_LR px, x${EVAL_SCALES// / x}, $EVAL_STEPS DDIM steps, $EVAL_PRECISION"
    local s1 liif liif_skip s2 s3
    s1=$(finished s1); liif=$(finished liif); liif_skip=$(finished liif-skip); s2=$(finished s2); s3=$(finished s3)
    local regress=() run_dir
    for run_dir in "$liif" "$liif_skip" "$s1"; do
        if [[ -n "$run_dir" ]]; then regress+=("$run_dir"); fi
    done
    # shellcheck disable=SC2206  # EVAL_SCALES and EVAL_ARGS are word lists
    local ev=("$PY" eval_sr.py --lr_size "$EVAL_LR" --scale_ratio $EVAL_SCALES --steps "$EVAL_STEPS"
        --device "$DEVICE" --precision "$EVAL_PRECISION" --batch_size "$EVAL_BATCH" --data_root "$DATA_DIR/CT"
        --list "$DATA_DIR/test.txt" --overwrite --no_progress ${EVAL_ARGS:-})
    if [[ -n "$s2" ]]; then
        # the table's main source: bicubic, Lanczos, the regressions and the LDM's 1 sample and
        # mean of 8 (one draw of 8: the 1-sample row is its first sample)
        local compare=()
        if [[ ${#regress[@]} -gt 0 ]]; then compare=(--compare "${regress[@]}"); fi
        run "${ev[@]}" --exp "$s2" --n_samples 8 "${compare[@]}" --out "$OUT/eval/ldm-mean8"
        if [[ "$EVAL_BP" != 0 ]]; then
            # data consistency: every trained model back-projected onto its LR (rows "+ back-projection")
            run "${ev[@]}" --exp "$s2" --n_samples 1 --back_projection "$EVAL_BP" "${compare[@]}" \
                --out "$OUT/eval/ldm-1sample-bp$EVAL_BP"
        fi
    elif [[ ${#regress[@]} -gt 0 ]]; then
        # no LDM: the regressions side by side, the first one found as --exp
        local compare=()
        if [[ ${#regress[@]} -gt 1 ]]; then compare=(--compare "${regress[@]:1}"); fi
        run "${ev[@]}" --exp "${regress[0]}" "${compare[@]}" --out "$OUT/eval/regressions"
        if [[ "$EVAL_BP" != 0 ]]; then
            run "${ev[@]}" --exp "${regress[0]}" "${compare[@]}" --back_projection "$EVAL_BP" \
                --out "$OUT/eval/regressions-bp$EVAL_BP"
        fi
    else
        echo "no trained run to evaluate (part train first)"
    fi
    if [[ -n "$s3" ]]; then
        run "${ev[@]}" --exp "$s3" --n_samples 8 --out "$OUT/eval/align-mean8"
    fi
}

part_sampling() {
    banner "sampling: bench on the trained stage-2 run and real test slices"
    local s2
    s2=$(finished s2)
    [[ -n "$s2" ]] || { echo "no finished stage-2 run (part train with s2 first)"; return 0; }
    local common=("$PY" bench/sampling.py --exp "$s2" --data_root "$DATA_DIR/CT" --list "$DATA_DIR/test.txt"
        --device "$DEVICE" --samplers ddim dpmpp_2m)
    # torch.compile pays off on a GPU; on the CPU its compile time would dominate the bench
    if [[ "$DEVICE" == cuda* ]]; then common+=(--compile); fi
    # shellcheck disable=SC2086
    run "${common[@]}" --out "$OUT/sampling.json" ${SAMPLING_ARGS:-}
    if [[ "$DEVICE" == cuda* ]]; then
        # batch-1 latency with CUDA graphs (reduce-overhead): many small launches per DDIM step
        run "${common[@]}" --compile_mode reduce-overhead --dtype bf16 --steps 25 50 --batch 1 \
            --out "$OUT/sampling-cudagraphs.json"
    fi
}

check_names() {
    local part name
    for part in $PARTS; do
        case $part in
            benches | data | train | eval | sampling) ;;
            *) echo "PARTS: unknown part '$part' (benches data train eval sampling)"; exit 2 ;;
        esac
    done
    for name in $TRAIN; do
        case $name in
            s1 | liif | liif-skip | s2 | s3) ;;
            *) echo "TRAIN: unknown run '$name' (s1 liif liif-skip s2 s3)"; exit 2 ;;
        esac
    done
}

# on any exit (the end, an error, SIGTERM at a time limit): let tee finish the log, then pack
finish() {
    local rc=$?
    set +e  # nothing in here may stop the packing
    if [[ $rc != 0 ]]; then echo "FAILED (exit $rc)"; fi
    exec >/dev/null 2>&1
    sleep 0.5
    pack
    exit "$rc"
}

main() {
    check_names
    # paths given relative to the caller's directory, before moving to the repo root
    OUT=$(realpath -m "${1:-$(dirname "$0")/out}")
    DATA_DIR=$(realpath -m "$DATA_DIR")
    if [[ -n "$PACK_TO" ]]; then PACK_TO=$(realpath -m "$PACK_TO"); fi
    cd "$(dirname "$0")/.."
    LOGS="$OUT/logs"
    mkdir -p "$OUT" "$LOGS"
    rm -f "$OUT/DONE"
    # tee ignores TERM and INT: a signal to the whole process group (a time limit) must not take the
    # log with it, nor kill the pipe bash writes to before the EXIT trap has packed
    exec > >(trap '' TERM INT; exec tee -a "$OUT/gpu_measure.log") 2>&1
    trap finish EXIT
    trap on_signal TERM INT

    banner "the card"
    if [[ "$DEVICE" == cuda* ]]; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv \
            | tee "$OUT/nvidia-smi.csv"
        "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; print(torch.__version__, torch.cuda.get_device_name())"
    fi
    git rev-parse --short HEAD 2>/dev/null || echo "commit unknown"
    echo "PARTS=$PARTS TRAIN=$TRAIN"

    for part in $PARTS; do
        "part_$part"
        pack
    done
    banner "done"
    echo "runs: $OUT/runs.txt; quality tables: $OUT/eval/*/summary.json; speed: $OUT/{decoder,training,sampling}.json"
    date -u +%FT%TZ > "$OUT/DONE"
}

# the whole file is read before anything runs: a script replaced on disk mid-run cannot change it
main "$@"
exit
