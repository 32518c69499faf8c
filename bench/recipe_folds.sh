#!/usr/bin/env bash
# Train and evaluate one recipe on both make-disjoint folds of a dataset, one core per fold,
# so docs/quality.md's rows come from one command each.
#   bash bench/recipe_folds.sh NAME [train.train options...]
# Writes runs/quality/NAME-f{1,2}/ (the runs, train.log, eval.json, time.txt).
set -euo pipefail
name=${1:?usage: bench/recipe_folds.sh NAME [train.train options...]}
shift
data=${DATA:-../shared/data/cars196-dev}
weights=${WEIGHTS:-../shared/weights/mobilenet_v2_imagenet.pt}
python=${PYTHON:-.venv/bin/python}
out=${OUT:-runs/quality}
mkdir -p "$out"
fold() {
    local f=$1 run="$out/$name-f$1"
    shift
    local start
    start=$(date +%s)
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$python" -m train.train --data "$data" \
        --backbone mobilenet_v2 --weights "$weights" --split-by make --fold "$f" \
        --run "$run" --overwrite --quiet "$@" >"$out/$name-f$f.train.log" 2>&1
    local trained
    trained=$(date +%s)
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$python" -m train.evaluate --run "$run" --data "$data" \
        --json --quiet >"$out/$name-f$f.eval.json" 2>"$out/$name-f$f.eval.log"
    echo "train_s=$((trained - start)) eval_s=$(( $(date +%s) - trained ))" >"$out/$name-f$f.time.txt"
}
fold 1 "$@" &
p1=$!
fold 2 "$@" &
p2=$!
rc=0
wait $p1 || rc=1
wait $p2 || rc=1
exit $rc
