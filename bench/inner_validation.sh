#!/usr/bin/env bash
# Choose recipes without looking at the held-out makes: for each make-disjoint fold of a dataset,
# run bench/recipe_folds.sh on that fold's *training* classes only, which splits them by make
# once more (inner folds 1 and 2). The held-out makes are never read, so these scores may pick
# a recipe or a setting, and the outer folds then measure the pick once (docs/quality.md).
#   bash bench/inner_validation.sh NAME [train.train options...]
# Writes runs/quality/inner-f{1,2}/NAME-f{1,2}/; `python -m bench.recipe_table --dir
# runs/quality/inner-f1 NAME` tabulates one outer fold.
set -euo pipefail
name=${1:?usage: bench/inner_validation.sh NAME [train.train options...]}
data=${DATA:-../shared/data/cars196-dev}
python=${PYTHON:-.venv/bin/python}
out=${OUT:-runs/quality}
for outer in 1 2; do
    side="$out/inner-data-f$outer"
    # Symlinks to the outer fold's training classes: the photos are never copied.
    "$python" - "$data" "$side" "$outer" <<'PY'
import sys
from pathlib import Path

from train.data import load_image_list, split_classes

data, side, fold = Path(sys.argv[1]).resolve(), Path(sys.argv[2]), int(sys.argv[3])
classes = sorted(set(load_image_list(data).classes))
train = split_classes(classes, 0.5, 42, fold, "make").train
side.mkdir(parents=True, exist_ok=True)
for name in train:
    link = side / name
    if not link.is_symlink():
        link.symlink_to(data / name, target_is_directory=True)
PY
    DATA="$side" OUT="$out/inner-f$outer" PYTHON="$python" bash "$(dirname "$0")/recipe_folds.sh" "$@"
done
