#!/usr/bin/env bash
# GPU figures of record (issue 18), in one call: TorchServe end to end on the GPU, next to the
# in-process ceiling, with binary answers, for a ResNet152 (random weights: speed does not depend
# on them), and optionally a short GPU training run whose servable must embed on the CPU.
#
#   bash bench/gpu_check.sh [--dry-run] [--train]
#
# From the device tool (after `bash bench/gpu_prepare.sh` here, which builds what is carried):
#   run(carry=[".whl", ".device"], command="bash bench/gpu_check.sh", timeout_s=540)
#
# Steps:
#  0. setup: installs the carried wheels (.whl/*.whl -> $GPU_CHECK_SITE, default /tmp/site, on
#     PYTHONPATH with the repository), puts the carried JRE on PATH (.device/jre, or unpacked from
#     .device/jre.tar.xz into /tmp/gpu-check-jre), prints versions; refuses to go on without CUDA.
#  a. python -m bench.random_servable --backbone resnet152 --run runs/gpu-resnet152 --input-size 224
#  b. python -m bench.serving --device cuda --answer binary --batch-sizes 64 --max-batch-delay 5
#       --workers 2,4 --concurrency 64,128 --images 512 (generated 500x260 JPEGs) ...: the in-process
#     ceiling for 2 and 4 processes, then TorchServe per worker count (closed loop at each
#     concurrency, open loop at half load) -> serving.json; then python -m bench.inprocess
#     (embedder, handler JSON and handler binary in one process, batch 64 and 128) -> inprocess.json.
#     nvidia-smi is sampled every 2 s meanwhile.
#  c. prints (and writes summary.md) img/s, p50/p99, batch sizes seen, e2e / in-process, the
#     handler ceilings, GPU utilisation/memory seen and an nvidia-smi snapshot.
#  d. only with --train or GPU_CHECK_TRAIN=1: python -m train.train (default recipe, resnet50,
#     --weights none, 2 epochs) on $GPU_CHECK_DATA, else .device/cars-subset (gpu_prepare.sh
#     --photos), else generated synthetic images; then the saved servable embeds one image on the CPU.
#
# Results go to $OUT if set (the device tool brings that folder back), else runs/gpu-check
# (runs/gpu-check-dry for a dry run): gpu_check.log, serving.json, inprocess.json, summary.md,
# nvidia-smi.txt, nvidia-smi-during.csv.
#
# --dry-run (or GPU_CHECK_DRY_RUN=1): the same steps on the CPU with a tiny model (resnet18, 64 px,
# one worker, batch 8, 4 clients, 32 images, 3 s per point) so the whole pipeline runs anywhere.
#
# Needs: Python with torch + torchvision (CUDA build for the real run), PIL, numpy; TorchServe 0.12,
# torch-model-archiver and quaterion-models installed or carried in .whl/; Java 17+ on PATH or
# carried in .device/; for --train also Quaterion, pytorch-lightning 1.9.5, torchmetrics 0.8.2 (carried).
# Without Java it still measures the in-process figures (bench.serving --no-torchserve) and says so.
# Other knobs: PYTHON (default python3), GPU_CHECK_SERVING_ARGS (appended to bench.serving's
# arguments, e.g. "--workers 1,2,4"), GPU_CHECK_HANDLER=0 (skips bench.inprocess).
#
# Expected runtime (an estimate: not yet run on a GPU): about 5-6 min on one H200 (servable ~15 s,
# ceiling ~1 min, archive + two TorchServe starts with 3 points each ~3 min, handler ceiling ~1 min),
# +2-3 min with --train; pass timeout_s=540. The dry run took 62 s (71 s with --train) on the
# project's 2-core CPU VM. Short of device time: GPU_CHECK_HANDLER=0 and
# GPU_CHECK_SERVING_ARGS="--workers 4 --concurrency 128" cut it to ~3 min.
set -euo pipefail

DRY=${GPU_CHECK_DRY_RUN:-0}
TRAIN=${GPU_CHECK_TRAIN:-0}
for arg in "$@"; do
    case $arg in
        --dry-run) DRY=1 ;;
        --train) TRAIN=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown argument $arg (see --help)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
if ((DRY)); then
    RESULTS=${OUT:-runs/gpu-check-dry}
    SITE=${GPU_CHECK_SITE:-/tmp/gpu-check-dry-site}
else
    RESULTS=${OUT:-runs/gpu-check}
    SITE=${GPU_CHECK_SITE:-/tmp/site}
fi
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
exec > >(tee "$RESULTS/gpu_check.log") 2>&1

SMI_PID=
cleanup() {
    if [[ -n $SMI_PID ]]; then
        kill "$SMI_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
STARTED=$SECONDS
step() { echo; echo "=== [$((SECONDS - STARTED)) s] $*"; }

step "0. setup ($(date -u '+%Y-%m-%d %H:%M:%S UTC'), ${HOSTNAME:-host}, dry run: $DRY, train: $TRAIN, results: $RESULTS)"
# Carried wheels: all that this Python can install (pure Python, abi3, and its own cpXY binaries).
if compgen -G ".whl/*.whl" >/dev/null; then
    tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
    wheels=()
    for wheel in .whl/*.whl; do
        case $wheel in
            *-none-any.whl | *-abi3-*.whl | *-"$tag"-*.whl) wheels+=("$wheel") ;;
            *) echo "  skipping $wheel (not for $tag)" ;;
        esac
    done
    echo "  installing ${#wheels[@]} carried wheels into $SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --ignore-requires-python \
        --upgrade --target "$SITE" "${wheels[@]}"
    export PATH="$SITE/bin:$PATH"
    export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
# Carried JRE: TorchServe's frontend honours JAVA_HOME.
JRE=
if [[ -x .device/jre/bin/java ]]; then
    JRE=$ROOT/.device/jre
elif [[ -f .device/jre.tar.xz ]]; then
    jre_dir=${GPU_CHECK_JRE_DIR:-/tmp/gpu-check-jre}
    if [[ ! -x $jre_dir/jre/bin/java || .device/jre.tar.xz -nt $jre_dir/jre/bin/java ]]; then
        rm -rf "$jre_dir/jre"
        mkdir -p "$jre_dir"
        tar -xJf .device/jre.tar.xz -C "$jre_dir" 2>/dev/null \
            || "$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' .device/jre.tar.xz "$jre_dir"
        touch "$jre_dir/jre/bin/java"
    fi
    JRE=$jre_dir/jre
fi
if [[ -n $JRE ]]; then
    export JAVA_HOME=$JRE PATH="$JRE/bin:$PATH"
fi
NO_TS=()
if command -v java >/dev/null; then
    echo "  java: $(command -v java) ($(java -version 2>&1 | head -1))"
else
    echo "!! no Java (neither on PATH nor carried in .device/): in-process figures only, no TorchServe"
    NO_TS=(--no-torchserve)
fi
"$PY" - "$DRY" <<'EOF'
import importlib.util
import sys

import numpy
import torch
import torchvision

print(f"  python {sys.version.split()[0]} ({sys.executable}), torch {torch.__version__}, torchvision "
      f"{torchvision.__version__}, numpy {numpy.__version__}")
for name in ("quaterion_models", "ts", "model_archiver", "serve.embedder", "bench.serving"):
    spec = importlib.util.find_spec(name)
    print(f"  {name}: {spec.origin if spec else 'MISSING'}")
if torch.cuda.is_available():
    print(f"  CUDA {torch.version.cuda}: {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
elif sys.argv[1] != "1":
    sys.exit("error: torch sees no CUDA device; on a CPU machine run `bash bench/gpu_check.sh --dry-run`")
else:
    print("  no CUDA (dry run on the CPU)")
EOF
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/  /'
fi

if ((DRY)); then
    BACKBONE=resnet18 SIZE=64 SERVABLE=runs/gpu-check-dry-resnet18 DEVICE=cpu
    SERVING=(--batch-sizes 8 --max-batch-delay 5 --workers 1 --concurrency 4 --images 32
        --warmup 1 --seconds 3 --repeats 1 --worker-threads 1)
    INPROCESS=(--batch-sizes 8 --images 32 --repeats 1 --threads 1)
else
    BACKBONE=resnet152 SIZE=224 SERVABLE=runs/gpu-resnet152 DEVICE=cuda
    SERVING=(--batch-sizes 64 --max-batch-delay 5 --workers 2,4 --concurrency 64,128 --images 512
        --warmup 3 --seconds 6 --repeats 3)
    INPROCESS=(--batch-sizes 64,128 --images 512 --repeats 3)
fi
# Generated 500x260 JPEGs everywhere (the GPU machine has no ../shared; the same photos here).
export CARS_SHARED=$RESULTS/.no-shared

step "a. random-weights $BACKBONE servable ($SIZE px) -> $SERVABLE"
rm -rf "$SERVABLE"  # always fresh: a stale servable would not match its run.json
"$PY" -m bench.random_servable --backbone "$BACKBONE" --run "$SERVABLE" --input-size "$SIZE"

step "b. serving benchmark on $DEVICE, binary answers -> $RESULTS/serving.json"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,memory.total,power.draw \
        --format=csv,nounits -l 2 >"$RESULTS/nvidia-smi-during.csv" 2>&1 &
    SMI_PID=$!
fi
# shellcheck disable=SC2086  # GPU_CHECK_SERVING_ARGS is a list of words on purpose
"$PY" -m bench.serving --run "$SERVABLE" --device "$DEVICE" --answer binary "${SERVING[@]}" "${NO_TS[@]}" \
    --results "$RESULTS/serving.json" ${GPU_CHECK_SERVING_ARGS:-}
if [[ ${GPU_CHECK_HANDLER:-1} != 0 ]]; then
    step "b2. in-process embedder and handler (JSON and binary answers) -> $RESULTS/inprocess.json"
    handler=()
    "$PY" -c 'import ts' 2>/dev/null || handler=(--no-handler)
    "$PY" -m bench.inprocess --run "$SERVABLE" --device "$DEVICE" "${INPROCESS[@]}" "${handler[@]}" \
        --results "$RESULTS/inprocess.json"
fi
cleanup
SMI_PID=

step "c. summary -> $RESULTS/summary.md"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi >"$RESULTS/nvidia-smi.txt" 2>&1 || true
fi
"$PY" - "$RESULTS" "$((SECONDS - STARTED))" >"$RESULTS/summary.md" <<'EOF'
import csv
import json
import sys
from pathlib import Path

results, elapsed = Path(sys.argv[1]), sys.argv[2]


def fmt(value):
    return "-" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))


serving = json.loads((results / "serving.json").read_text())
machine = serving["machine"]
print(f"# GPU check summary ({'dry run, ' if serving['device'] == 'cpu' else ''}{elapsed} s so far)\n")
print(f"{machine['date']}; {machine.get('gpu', 'no GPU')}; {machine['cpus']} CPUs ({machine['cpu']}); "
      f"Python {machine['python']}, torch {machine.get('torch')}; run {serving['run']}; {serving['images']}; "
      f"device {serving['device']}\n")
print("In process (the ceiling), per batch size and processes:\n")
print("| batch | processes | in-process img/s | forward-only img/s | in-process / forward |")
print("|---|---|---|---|---|")
for r in serving["inprocess"]:
    print(f"| {r['batch_size']} | {r['processes']} | {fmt(r['inprocess_img_s'])} | {fmt(r['forward_img_s'])} "
          f"| {fmt(r['inprocess/forward'])} |")
if serving["serving"]:
    print("\nEnd to end through TorchServe (binary answers):\n")
    print("| batch | delay ms | workers | load | img/s | p50 ms | p99 ms | errors | mean batch | batch sizes seen "
          "| e2e / in-process | p99/p50 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in serving["serving"]:
        print(f"| {r['batch_size']} | {r['max_batch_delay']} | {r['workers']} | {r['load']} | {fmt(r['img_s'])} "
              f"| {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | {r['errors']} | {fmt(r['mean_batch'])} "
              f"| {r['batch_sizes'] or '-'} | {fmt(r.get('e2e/inprocess'))} | {fmt(r.get('p99/p50'))} |")
    s = serving["summary"]
    print(f"\n**Best end to end {fmt(s['best_e2e_img_s'])} img/s** {s['best_config']}; best in process "
          f"{fmt(s['best_inprocess_img_s'])} img/s; **e2e / in-process {fmt(s['best_e2e/best_inprocess'])}** "
          "(target >= 0.60).")
else:
    print("\n**No TorchServe figures** (no Java, or --no-torchserve given): in-process only.")
inprocess = results / "inprocess.json"
if inprocess.is_file():
    rows = json.loads(inprocess.read_text())["results"]
    print("\nOne process: embedder, handler with JSON and with binary answers:\n")
    print("| batch | in-process img/s | handler JSON img/s | handler binary img/s | forward-only img/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch_size']} | {fmt(r['inprocess_img_s'])} | {fmt(r.get('handler_img_s'))} "
              f"| {fmt(r.get('handler_binary_img_s'))} | {fmt(r['forward_img_s'])} |")
samples = results / "nvidia-smi-during.csv"
if samples.is_file():
    try:
        rows = list(csv.reader(samples.read_text().splitlines()[1:]))
        util = [float(r[1]) for r in rows if len(r) > 3]
        memory = [float(r[2]) for r in rows if len(r) > 3]
        print(f"\nnvidia-smi every 2 s during b: {len(util)} samples, GPU utilisation max {max(util):.0f} %, "
              f"median {sorted(util)[len(util) // 2]:.0f} %; memory used max {max(memory):.0f} MiB "
              f"of {rows[0][3].strip()} MiB")
    except (ValueError, IndexError):
        print(f"\nnvidia-smi samples unreadable: see {samples}")
EOF
cat "$RESULTS/summary.md"
if [[ -f $RESULTS/nvidia-smi.txt ]]; then
    echo
    cat "$RESULTS/nvidia-smi.txt"
fi

if ((TRAIN)); then
    step "d. short training run (default recipe) and a CPU embedding from its servable"
    DATA=${GPU_CHECK_DATA:-}
    if [[ -z $DATA && -d .device/cars-subset ]]; then
        DATA=.device/cars-subset
    elif [[ -z $DATA ]]; then
        DATA=runs/gpu-check-train-data  # not under $RESULTS: it would travel back from the device
        "$PY" -m train.synthetic --out "$DATA"
    fi
    if ((DRY)); then
        TRAIN_OUT=runs/gpu-check-dry-train
        TRAIN_ARGS=(--backbone resnet18 --input-size 64 --epochs 2)
    else
        TRAIN_OUT=runs/gpu-train
        TRAIN_ARGS=(--backbone resnet50 --epochs 2)
    fi
    echo "  python -m train.train --data $DATA --weights none ${TRAIN_ARGS[*]} --run $TRAIN_OUT --overwrite"
    echo "  (its output: $RESULTS/train.log)"
    if ! "$PY" -m train.train --data "$DATA" --weights none "${TRAIN_ARGS[@]}" --run "$TRAIN_OUT" --overwrite \
        >"$RESULTS/train.log" 2>&1; then
        tail -n 40 "$RESULTS/train.log"
        echo "error: training failed (log above and in $RESULTS/train.log)" >&2
        exit 1
    fi
    grep -E "^Saved|^Wrote|GPU available" "$RESULTS/train.log" | sed 's/^/  /'
    CUDA_VISIBLE_DEVICES= "$PY" - "$TRAIN_OUT" "$DATA" <<'EOF' | tee -a "$RESULTS/summary.md"
import sys
from pathlib import Path

import numpy as np

from serve.embedder import Embedder

run, data = Path(sys.argv[1]), Path(sys.argv[2])
image = next(p for p in sorted(data.rglob("*")) if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
embedder = Embedder.load(run, device="cpu")
[vector] = embedder.embed_bytes([image.read_bytes()])
if isinstance(vector, Exception):
    sys.exit(f"error: the trained servable refused {image}: {vector}")
norm = float(np.linalg.norm(vector))
ok = vector.shape == (embedder.dim,) and np.isfinite(vector).all() and abs(norm - 1) < 1e-3
print(f"\nTraining check: {run} (version {embedder.model_version[:12]}) embeds {image.name} on the CPU: "
      f"dim {vector.shape[0]}, norm {norm:.6f}: {'OK' if ok else 'FAILED'}")
sys.exit(0 if ok else 1)
EOF
fi

step "done in $((SECONDS - STARTED)) s; results in $RESULTS"
