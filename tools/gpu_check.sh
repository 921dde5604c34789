#!/usr/bin/env bash
# The prepared GPU check (issue 15): one command, one JSON and one Markdown table.
#   bash tools/gpu_check.sh OUT [--time-limit S] [--dry-run] [--stages ...]
# On the GPU machine (DEVELOPERS.md "GPU check"): builds the Feature Mixing CUDA extension,
# checks CUDA == CPU == reference bit for bit, runs the synthesis bench on the device, trains the
# demo model (fp32 and bf16 AMP), times replay frames and evaluates; writes OUT/gpu_check.json,
# OUT/gpu_check.md and OUT/gpu_check.log after every stage. Stops itself at --time-limit
# (default 420 s); `timeout` below is the backstop 30 s later. Needs python3 with torch, numpy,
# scipy (nvcc and ninja for the build); nothing is installed.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:?usage: tools/gpu_check.sh OUT [options]}"
shift
limit=420
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do [ "${args[$i]}" = "--time-limit" ] && limit="${args[$((i + 1))]}"; done
mkdir -p "$out"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"   # the H200 only: halves the nvcc time
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
python="${PYTHON:-python3}"
timeout --kill-after=10 "$((${limit%.*} + 30))" "$python" -m segood.bench.gpu_check "$out" "$@"
rc=$?
echo "gpu_check: exit $rc; results in $out/gpu_check.md and $out/gpu_check.json"
exit $rc
