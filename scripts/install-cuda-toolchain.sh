#!/usr/bin/env bash
# Installs nvcc 13.0 from PyPI into <repo>/.cuda (ignored by git), where build.rs looks
# for it. No GPU and no system CUDA are needed: nvcc only compiles kernels/*.cu to a
# fatbin that build.rs embeds. Idempotent: a working nvcc there is left as it is.
#
# The five packages go in ONE pip command: a second `pip install --target` into the
# same folder replaces the first one's files. cccl brings cuda_fp16.h and friends.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$repo/.cuda"
nvcc="$dir/nvidia/cu13/bin/nvcc"

if [ -x "$nvcc" ] && "$nvcc" --version >/dev/null 2>&1; then
    echo "nvcc already installed: $nvcc ($("$nvcc" --version | grep -o 'release [0-9.]*'))"
    exit 0
fi

python="${PYTHON:-python3}"
rm -rf "$dir"
"$python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
    --target "$dir" \
    "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-crt==13.0.*" \
    "nvidia-nvvm==13.0.*" "nvidia-cuda-cccl==13.0.*"

if ! "$nvcc" --version >/dev/null 2>&1; then
    echo "error: installed the nvcc packages but $nvcc does not run" >&2
    exit 1
fi
# build.rs watches this nvcc only once it exists: make the next cargo build rerun it.
touch "$repo/build.rs"
echo "nvcc installed: $nvcc ($("$nvcc" --version | grep -o 'release [0-9.]*'))"
echo "rebuild (cargo build) to compile the CUDA kernels into bertcls"
