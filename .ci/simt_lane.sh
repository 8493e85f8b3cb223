#!/usr/bin/env bash
# SIMT lane: fastln's CUDA kernels, their own source, executed on the CPU by the
# SIMT runtime (csrc/simt), with its checkers on. No GPU, CPU build of torch.
#   1. build fastln with FASTLN_SIMT=1 (adds fastln._simt);
#   2. the runtime's own tests (intrinsics, each checker on a planted bug), the
#      SIMT checks (schedule independence, plan paths, A100) and the whole CUDA
#      test matrix (tests/test_cuda.py, and tests/test_cuda_norms.py for
#      RMSNorm and the fused residual add) on the SIMT backend;
#   3. rebuild fastln._simt with AddressSanitizer (FASTLN_SIMT_ASAN=1) and run a
#      subset of the matrix with ASan checking every global-memory access.
#
# Usage: .ci/simt_lane.sh VENV_DIR   (from the repository root)
# The build happens in a copy of the working tree (.ci/lib.sh copy_tree), so the
# SIMT and ASan builds never replace the extension of the checkout.
set -euo pipefail
# shellcheck source=.ci/lib.sh
source .ci/lib.sh
venv=$1

work="$(mktemp -d -t fastln-simt-lane.XXXXXX)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q torch==2.13.0 ninja pybind11 pytest numpy setuptools wheel
copy_tree "$work/src"
cd "$work/src"

stage() {
  echo "simt_lane: $1 took $((SECONDS - $2)) s"
}

start=$SECONDS
FASTLN_SIMT=1 MAX_JOBS="${MAX_JOBS:-2}" "$py" setup.py build_ext --inplace > "$work/build.log" 2>&1 || {
  tail -n 60 "$work/build.log"
  echo "simt_lane: FAILED: build"
  exit 1
}
stage "build (FASTLN_SIMT=1)" "$start"

start=$SECONDS
"$py" -m pytest -q tests/test_simt_runtime.py tests/test_simt.py tests/test_cuda.py \
  tests/test_cuda_norms.py
stage "runtime tests, SIMT checks and the CUDA matrix" "$start"

start=$SECONDS
FASTLN_SIMT=1 FASTLN_SIMT_ASAN=1 MAX_JOBS="${MAX_JOBS:-2}" "$py" setup.py build_ext --inplace \
  > "$work/build-asan.log" 2>&1 || {
  tail -n 60 "$work/build-asan.log"
  echo "simt_lane: FAILED: ASan build"
  exit 1
}
stage "build (FASTLN_SIMT_ASAN=1)" "$start"

# python itself is not instrumented: the ASan runtime comes first, with libstdc++
# (ASan's C++ exception interceptor needs it loaded before the extension).
# pytest's faulthandler would swallow ASan's report of a fault.
start=$SECONDS
LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)" \
  ASAN_OPTIONS=detect_leaks=0 \
  "$py" -m pytest -q -p no:faulthandler tests/test_simt.py tests/test_cuda.py tests/test_cuda_norms.py \
  -k "simt and not grid_cap and (schedule or plan_paths or (parity and wb and (float32 or bfloat16)) or (misaligned and (float32 or bfloat16)) or add_norm_misaligned or output_mask or empty or nan)"
stage "the ASan subset" "$start"
echo "simt_lane: PASSED"
