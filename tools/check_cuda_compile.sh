#!/usr/bin/env bash
# Compile the Feature Mixing CUDA code with nvcc; no GPU and no CUDA build of torch needed.
#   1. cuda_ext/compile_check.cu (the shared header inside CUDA kernels, no torch headers) for
#      sm_80 and sm_90 (~3 s each);
#   2. with --ext: cuda_ext/feature_mixing_cuda.cu itself (the real kernel and launcher) for
#      sm_90, against the torch headers of $PYTHON (a CPU build of torch ships the ATen and
#      c10/cuda headers; the one header it lacks, c10/cuda/impl/cuda_cmake_macros.h, is stubbed).
#      ~1 min on 2 cores (the torch headers), compile only: nothing is linked or loaded.
# Exits non-zero on any error.
# Usage: tools/check_cuda_compile.sh [--ext]   (NVCC=/path/to/nvcc to override; default: PATH,
#        then /usr/local/cuda/bin/nvcc; PYTHON default python3)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
nvcc="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
[ -x "$nvcc" ] || { echo "check_cuda_compile: nvcc not found" >&2; exit 2; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for arch in sm_80 sm_90; do
  "$nvcc" -c -std=c++17 -O2 -arch="$arch" -Werror all-warnings -I "$root/cuda_ext" \
    "$root/cuda_ext/compile_check.cu" -o "$tmp/compile_check_$arch.o"
  echo "check_cuda_compile: compile_check.cu $arch ok"
done
if [ "${1:-}" = "--ext" ]; then
  inc="$("${PYTHON:-python3}" -c 'import torch.utils.cpp_extension as c; print(" ".join(c.include_paths()))')"
  mkdir -p "$tmp/stub/c10/cuda/impl"
  printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > "$tmp/stub/c10/cuda/impl/cuda_cmake_macros.h"
  flags=(-c -std=c++20 -O2 -arch=sm_90 -I "$root/cuda_ext")
  for dir in $inc; do flags+=(-isystem "$dir"); done
  "$nvcc" "${flags[@]}" -isystem "$tmp/stub" "$root/cuda_ext/feature_mixing_cuda.cu" -o "$tmp/feature_mixing_cuda.o"
  echo "check_cuda_compile: feature_mixing_cuda.cu sm_90 ok"
fi
