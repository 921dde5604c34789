#!/usr/bin/env bash
# Full CUDA build of the Feature Mixing extension (cuda_ext/*.cpp + feature_mixing_cuda.cu),
# in a separate venv with a CUDA build of torch. Works without a GPU: it compiles and loads the
# op library and checks that the CUDA kernels are registered (running them needs a GPU).
#
# Usage: tools/build_cuda_ext.sh [VENV_DIR]        (default /tmp/segood-cuda-venv; reused)
# Env:   CUDA_HOME (default /usr/local/cuda), TORCH_SPEC (default torch==2.14.1, a CUDA 13.0
#        build), TORCH_CUDA_ARCH_LIST (default "8.0;9.0"), PYTHON (default python3).
# Cost:  ~5.5 GB of wheels on the first run, then the nvcc + g++ build (minutes on 2 cores).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-/tmp/segood-cuda-venv}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
export PATH="$CUDA_HOME/bin:$PATH"
[ -x "$CUDA_HOME/bin/nvcc" ] || { echo "build_cuda_ext: no nvcc in $CUDA_HOME/bin" >&2; exit 2; }

start=$(date +%s)
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet "${TORCH_SPEC:-torch==2.14.1}" ninja numpy
echo "build_cuda_ext: venv ready after $(( $(date +%s) - start )) s"

# The pip CUDA wheels ship headers (cuBLAS, cuSPARSE, ...) that torch's CUDA headers include but
# a bare toolkit may lack.
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
export CPATH="$site/nvidia/cu13/include${CPATH:+:$CPATH}"
export SEGOOD_EXT_CUDA=1                          # build the .cu although no GPU is present
export SEGOOD_EXT_DIR="${SEGOOD_EXT_DIR:-$venv/segood-ext}"
export MAX_JOBS="${MAX_JOBS:-2}"

# segood.ood.feature_mixing needs only torch and numpy: import it from the source tree.
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$venv/bin/python" - <<'PY'
import time, torch
from segood.ood.feature_mixing import build as fm_build
print("build_cuda_ext: torch", torch.__version__, "cuda", torch.version.cuda)
t = time.time()
ok = fm_build.load_extension(verbose=True)
assert ok, fm_build.extension_reason()
has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key("segood::feature_mixing", "CUDA")
print(f"build_cuda_ext: built and loaded in {time.time() - t:.0f} s; CUDA kernel registered: {has_cuda}")
assert has_cuda
if torch.cuda.is_available():                            # with a GPU: CUDA == CPU, bit for bit
    c, l = torch.randn(1000, 64), torch.randn(1000, 48)
    cpu = torch.ops.segood.feature_mixing(c, l, None, 5, 123, 7)
    gpu = torch.ops.segood.feature_mixing(c.cuda(), l.cuda(), None, 5, 123, 7)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu, gpu)), "CUDA != CPU"
    print("build_cuda_ext: CUDA output == CPU output")
PY
echo "build_cuda_ext: done in $(( $(date +%s) - start )) s"
