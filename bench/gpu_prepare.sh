#!/usr/bin/env bash
# Builds what bench/gpu_check.sh needs carried to a GPU machine that has no internet and no Java
# (issue 18). Run it HERE, on a machine with pip's index and a JDK 17 (jlink):
#
#     bash bench/gpu_prepare.sh [--photos]
#
# It writes (both ignored by git, both carried: `run` with carry [".whl", ".device"]):
#   .whl/             Python 3.12 x86-64 wheels, --no-deps, of what the GPU machine lacks:
#                     serving  torchserve, torch-model-archiver, quaterion-models, enum-compat, psutil
#                     training quaterion, pytorch-lightning 1.9.5, torchmetrics 0.8.2, lightning-utilities,
#                              pyDeprecate, loguru, mmh3, rich, commonmark, protobuf, setuptools<81
#                     Versions come from requirements/constraints.txt, serve.in and quaterion.txt,
#                     except mmh3: 3.1.0 has no cp312 wheel, so 4.1.0 (same hash64 API Quaterion uses).
#   .device/jre.tar.xz  a jlink'd Java 17 runtime (TorchServe's frontend); gpu_check.sh unpacks it.
#   .device/cars-subset only with --photos: 8 classes x 12 real photos from ../shared for the
#                     optional training check (those photos stay out of git; ~2-3 MB).
# Then it prints the carried sizes: everything carried must stay under 64 MiB (the `run` tool's
# limit). If it does not, the training-only wheels are dropped (gpu_check.sh's serving check
# does not need them) and that is said.
#
# Needs: python3 with pip, network access to the package index, jlink (openjdk-17-jdk-headless),
# xz. Takes about a minute (the xz compression of the JRE is most of it).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
LIMIT=$((64 * 1024 * 1024))
PY=${PYTHON:-python3}
PHOTOS=0
for arg in "$@"; do
    case $arg in
        --photos) PHOTOS=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown argument $arg (see --help)" >&2; exit 2 ;;
    esac
done

# NAME==VERSION as pinned in the project's requirement files (first match wins).
pin() {
    local line
    line=$(grep -i -h -E "^$1==" requirements/constraints.txt requirements/serve.in requirements/quaterion.txt | head -1)
    if [[ -z $line ]]; then
        echo "error: no pin for $1 in requirements/" >&2
        exit 1
    fi
    echo "${line%%[[:space:]#]*}"
}

SERVE_WHEELS=("$(pin torchserve)" "$(pin torch-model-archiver)" "$(pin quaterion-models)" "$(pin enum-compat)" "$(pin psutil)")
TRAIN_WHEELS=("$(pin quaterion)" "$(pin pytorch-lightning)" "$(pin torchmetrics)" "$(pin lightning-utilities)"
    "$(pin pyDeprecate)" "$(pin loguru)" "mmh3==4.1.0" "$(pin rich)" "$(pin commonmark)" "$(pin protobuf)"
    "setuptools<81")

echo "== wheels for CPython 3.12, manylinux x86-64 (--no-deps) into .whl/"
download=$(mktemp -d /tmp/gpu-prepare-whl.XXXXXX)
trap 'rm -rf "$download"' EXIT
for requirement in "${SERVE_WHEELS[@]}" "${TRAIN_WHEELS[@]}"; do
    "$PY" -m pip download -q --no-deps --ignore-requires-python --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d "$download" "$requirement" 2>&1 \
        | grep -v "^WARNING: Location" || true
    name=$(echo "${requirement%%[=<>]*}" | tr - _)
    if [[ -z $(find "$download" -maxdepth 1 -iname "${name}-*.whl" -print -quit) ]]; then
        echo "error: no wheel downloaded for $requirement" >&2
        exit 1
    fi
    echo "  $requirement"
done
rm -rf .whl
mkdir .whl
mv "$download"/*.whl .whl/

echo "== JRE (jlink) into .device/jre.tar.xz"
command -v jlink >/dev/null || { echo "error: jlink not found (apt-get install openjdk-17-jdk-headless)" >&2; exit 1; }
mkdir -p .device
rm -rf .device/jre .device/jre.tar.xz
jlink --add-modules java.base,java.logging,java.management,java.naming,java.xml,java.sql,jdk.unsupported,java.net.http,java.desktop \
    --strip-debug --no-man-pages --no-header-files --output .device/jre
.device/jre/bin/java -version 2>&1 | head -1 | sed 's/^/  /'
tar -cJf .device/jre.tar.xz -C .device jre
# Only the archive is carried: the unpacked JRE (~50 MB) would push `.device` over the limit.
rm -rf .device/jre

rm -rf .device/cars-subset
if ((PHOTOS)); then
    echo "== 8 classes x 12 real photos into .device/cars-subset (optional training check)"
    source_dir=${CARS_SHARED:-$ROOT/../shared}/data/cars196-dev
    [[ -d $source_dir ]] || { echo "error: no $source_dir" >&2; exit 1; }
    mapfile -t classes < <(find "$source_dir" -mindepth 1 -maxdepth 1 -type d | sort)
    for class in "${classes[@]:0:8}"; do
        mkdir -p ".device/cars-subset/$(basename "$class")"
        mapfile -t photos < <(find "$class" -maxdepth 1 -iname '*.jpg' | sort)
        cp "${photos[@]:0:12}" ".device/cars-subset/$(basename "$class")/"
    done
fi

bytes() { find "$@" -type f -printf '%s\n' 2>/dev/null | awk '{s += $1} END {print s + 0}'; }
mib() { awk -v b="$1" 'BEGIN {printf "%.2f MiB", b / 1048576}'; }
report() {
    echo "== carried sizes"
    for wheel in .whl/*.whl; do printf '  %-60s %s\n' "$wheel" "$(mib "$(bytes "$wheel")")"; done
    printf '  %-60s %s\n' ".whl/ total" "$(mib "$(bytes .whl)")"
    printf '  %-60s %s\n' ".device/jre.tar.xz" "$(mib "$(bytes .device/jre.tar.xz)")"
    [[ -d .device/cars-subset ]] && printf '  %-60s %s\n' ".device/cars-subset" "$(mib "$(bytes .device/cars-subset)")"
    total=$(bytes .whl .device)
    printf '  %-60s %s (%s bytes; limit 64 MiB = %s bytes)\n' "total carried" "$(mib "$total")" "$total" "$LIMIT"
}
report
if ((total > LIMIT)); then
    echo "!! over 64 MiB: dropping the training-only wheels (gpu_check.sh --train will not work)"
    for requirement in "${TRAIN_WHEELS[@]}"; do
        name=$(echo "${requirement%%[=<>]*}" | tr - _)
        find .whl -maxdepth 1 -iname "${name}-*.whl" -print -delete | sed 's/^/  dropped /'
    done
    report
    ((total <= LIMIT)) || { echo "error: still over 64 MiB" >&2; exit 1; }
fi
echo "Carry with: run(carry=[\".whl\", \".device\"], command=\"bash bench/gpu_check.sh\")"
