#!/usr/bin/env bash
# Compile cuda_ext/compile_check.cu (the shared Feature Mixing header inside CUDA kernels; no
# torch headers needed) for sm_80 and sm_90. No GPU needed. Exits non-zero on any error.
# Usage: tools/check_cuda_compile.sh   (NVCC=/path/to/nvcc to override; default: PATH, then
# /usr/local/cuda/bin/nvcc)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
nvcc="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
[ -x "$nvcc" ] || { echo "check_cuda_compile: nvcc not found" >&2; exit 2; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for arch in sm_80 sm_90; do
  "$nvcc" -c -std=c++17 -O2 -arch="$arch" -Werror all-warnings -I "$root/cuda_ext" \
    "$root/cuda_ext/compile_check.cu" -o "$tmp/compile_check_$arch.o"
  echo "check_cuda_compile: $arch ok"
done
