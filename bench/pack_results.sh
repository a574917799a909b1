#!/usr/bin/env bash
# The small files of a bench/gpu_measure.sh output folder, for a transfer that takes few files:
#
#     bash bench/pack_results.sh WORK DEST
#
# DEST gets results.tgz (every JSON, CSV, TXT, LOG, YAML and DONE file under WORK below 4000 KiB:
# metrics, run records, configs, training CSVs; no checkpoints or images) and a copy of
# WORK/gpu_measure.log when there is one. The archive is written beside and renamed, so DEST
# never holds half of one.
set -euo pipefail
work=${1:?usage: pack_results.sh WORK DEST}
dest=${2:?usage: pack_results.sh WORK DEST}
[[ -d "$work" ]] || { echo "pack_results.sh: $work: no such folder" >&2; exit 2; }
mkdir -p "$dest"
# gpu_measure.log is left out (tee may still be appending to it, which makes tar fail); it is copied
(cd "$work" && find . -type f \( -name '*.json' -o -name '*.csv' -o -name '*.txt' -o -name '*.log' \
    -o -name '*.yaml' -o -name 'DONE' \) ! -path ./gpu_measure.log -size -4000k -print0 \
    | tar czf - --null -T -) > "$dest/results.tgz.part"
mv "$dest/results.tgz.part" "$dest/results.tgz"
if [[ -f "$work/gpu_measure.log" ]]; then cp "$work/gpu_measure.log" "$dest/gpu_measure.log"; fi
