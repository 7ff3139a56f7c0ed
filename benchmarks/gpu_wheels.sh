#!/usr/bin/env bash
# Fetch, here, the wheels of the packages the lent GPU machine lacks, so that they travel with the
# working tree (the GPU machine reaches no network). That machine has Python 3.12 and torch 2.11 with
# numpy, scipy, scikit-image, opencv-python-headless, timm, einops, safetensors, matplotlib, pyyaml and
# tqdm (/work/.library/device/KINDS.md); robustprior also needs segment-anything and pycocotools (and
# mobilesam-mirror for the vit_t encoder; basicsr for the restoration package: --restoration).
#
#   bash benchmarks/gpu_wheels.sh                 # -> .whl/ (ignored by .gitignore; WHEELS_DIR=... elsewhere)
#   bash benchmarks/gpu_wheels.sh --restoration   # also basicsr (built here from its source) and its imports
#
# The wheels are not committed. A device call names the folder in `carry` and installs them first:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; ...
set -euo pipefail

cd "$(dirname "$0")/.."
DEST=${WHEELS_DIR:-.whl}
PYTHON=${PYTHON:-python3}
RESTORATION=0
for argument in "$@"; do
  case "$argument" in
    --restoration) RESTORATION=1 ;;
    *) echo "error: unknown argument $argument (only --restoration)" >&2; exit 2 ;;
  esac
done

# the GPU machine's interpreter: CPython 3.12 on x86-64 manylinux
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
PACKAGES=(segment-anything==1.0 mobilesam-mirror==1.0.0 pycocotools==2.0.11)

mkdir -p "$DEST"  # .gitignore ignores /.whl/: never committed, it travels only when a device call carries it
"$PYTHON" -m pip download -q --no-deps "${TARGET[@]}" -d "$DEST" "${PACKAGES[@]}"
if [ "$RESTORATION" = 1 ]; then
  # basicsr 1.4.2 is published as a source archive only: build its pure-Python wheel here (its setup.py
  # imports torch, hence no build isolation), then the modules it imports that the GPU machine lacks
  "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" basicsr==1.4.2
  "$PYTHON" -m pip download -q --no-deps "${TARGET[@]}" -d "$DEST" addict future lmdb yapf
fi
ls -l "$DEST"
du -sh "$DEST"
