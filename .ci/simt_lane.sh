#!/usr/bin/env bash
# SIMT lane: fastln's CUDA kernels, their own source, executed on the CPU by the
# SIMT runtime (csrc/simt), with its checkers on. No GPU, CPU build of torch.
#   1. add fastln._simt to the checkout's build (FASTLN_SIMT=1);
#   2. the runtime's own tests (intrinsics, each checker on a planted bug), the
#      SIMT checks (schedule independence, plan paths, A100) and the whole CUDA
#      test matrix (tests/test_cuda.py, and tests/test_cuda_norms.py for
#      RMSNorm and the fused residual add) on the SIMT backend;
#   3. rebuild fastln._simt with AddressSanitizer (FASTLN_SIMT_ASAN=1) and run a
#      subset of the matrix with ASan checking every global-memory access.
#
# Usage: .ci/simt_lane.sh VENV_DIR   (from the repository root)
# VENV_DIR is the cpu lane's environment when .ci/run calls this lane: the build
# happens in the checkout, whose fastln._C the cpu lane has just compiled in the same
# build folder against the same torch, so ninja compiles only fastln._simt (a second
# fastln._C build, in a copy of the tree, was a quarter of CI's time). Without such
# an environment the lane makes one and builds both modules. The plain fastln._simt
# is put back after the ASan build, so the checkout keeps a module that loads without
# the ASan runtime.
set -euo pipefail
venv=$1

work="$(mktemp -d -t fastln-simt-lane.XXXXXX)"
restore_simt() {
  if [[ -d "$work/plain" ]]; then cp -p "$work"/plain/_simt*.so fastln/; fi
  rm -rf "$work"
}
trap restore_simt EXIT
if [[ ! -x "$venv/bin/python" ]]; then python3 -m venv "$venv"; fi
py="$venv/bin/python"
# The venv's ninja, as in the cpu lane's activated venv: another ninja (the system's
# 1.11 beside pip's 1.13) keeps its log in another format and recompiles everything.
export PATH="$venv/bin:$PATH"
"$py" -m pip install -q torch==2.13.0 ninja pybind11 pytest numpy setuptools wheel

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
# (Less the two 1024-column cases of backward_deterministic, 85 s of the matrix: the
# schedule tests of test_simt.py check run-to-run independence on SIMT.)
"$py" -m pytest -q tests/test_simt_runtime.py tests/test_simt.py tests/test_cuda.py \
  tests/test_cuda_norms.py -k "not (backward_deterministic and simt and shape0-1024)"
stage "runtime tests, SIMT checks and the CUDA matrix" "$start"

mkdir "$work/plain"
cp -p fastln/_simt*.so "$work/plain/"
start=$SECONDS
FASTLN_SIMT=1 FASTLN_SIMT_ASAN=1 MAX_JOBS="${MAX_JOBS:-2}" "$py" setup.py build_ext --inplace \
  > "$work/build-asan.log" 2>&1 || {
  tail -n 60 "$work/build-asan.log"
  echo "simt_lane: FAILED: ASan build"
  exit 1
}
stage "build (FASTLN_SIMT_ASAN=1)" "$start"
# The subset below is only worth its time on an instrumented module.
# (The symbols into a variable first: grep -q would end nm by SIGPIPE under pipefail.)
undefined=$(nm -D --undefined-only fastln/_simt*.so)
if [[ $undefined != *__asan_init* ]]; then
  echo "simt_lane: FAILED: the FASTLN_SIMT_ASAN=1 build of fastln._simt is not instrumented"
  exit 1
fi

# python itself is not instrumented: the ASan runtime comes first, with libstdc++
# (ASan's C++ exception interceptor needs it loaded before the extension).
# pytest's faulthandler would swallow ASan's report of a fault.
# The subset took 864 s on 5af4bf0 (138 tests); the N = 4096 cases of misaligned_views
# and output_mask were 38% of it (measured without ASan) and are left out: their kernel
# stays in the subset through parity at 4096, misalignment and output masks through
# the other sizes.
start=$SECONDS
LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)" \
  ASAN_OPTIONS=detect_leaks=0 \
  "$py" -m pytest -q -p no:faulthandler tests/test_simt.py tests/test_cuda.py tests/test_cuda_norms.py \
  -k "simt and not grid_cap and (schedule or plan_paths or (parity and wb and (float32 or bfloat16)) or (misaligned and (float32 or bfloat16)) or add_norm_misaligned or output_mask or empty or nan) and not ((misaligned_views or test_output_mask) and 4096)"
stage "the ASan subset" "$start"
echo "simt_lane: PASSED"
