#!/usr/bin/env bash
# Wheels the GPU checks need beside what the device machine's image holds (torch, torchvision,
# timm, pyarrow, pillow, huggingface_hub, regex, safetensors, tqdm, xxhash, pyyaml): open_clip
# and ftfy. Downloaded here, for the device's Python 3.12, into .whl/ (ignored by git), which the
# device call carries. See bench/device_check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
PIP_FIND_LINKS= python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d .whl open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.2.13
ls -l .whl
