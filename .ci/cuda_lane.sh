#!/usr/bin/env bash
# CUDA lane of fastln's CI: builds the extension with nvcc against the
# CUDA-enabled torch from the package registry and runs the test suite
# against that build. No GPU is needed: the CUDA tests skip without one, but
# the kernels must compile (sm_80, sm_90 + PTX) and link, fastln must import
# with its CUDA kernels registered, and the CPU tests must pass on that build.
#
# Usage: .ci/cuda_lane.sh [VENV_DIR]   (from the repository root)
#   VENV_DIR  where to create the fresh virtual environment (default: a
#             temporary directory, removed at the end).
# Environment:
#   CUDA_HOME            left to the build: when unset (as in CI), fastln finds the
#                        toolkit itself (the one the nvcc on PATH belongs to, else
#                        /usr/local/cuda...), and this lane proves that it does.
#   FASTLN_CUDA_TORCH    the torch requirement to install (default
#                        torch==2.13.0, the version .ci/run pins for the CPU
#                        lane; its registry wheel is built for CUDA 13.0, the
#                        major version of /usr/local/cuda, which
#                        torch.utils.cpp_extension requires to match).
#   MAX_JOBS             parallel compile jobs (default 2)
#
# The build happens in a copy of the working tree, so that the in-place
# extension it produces (linked against CUDA torch) never replaces the one a
# developer built in the checkout against the CPU torch.
set -euo pipefail

repo_root="$(pwd)"
if [[ ! -f "$repo_root/setup.py" || ! -d "$repo_root/csrc/cuda" ]]; then
  echo "cuda_lane: run me from the fastln repository root" >&2
  exit 2
fi

if [[ -z "${CUDA_HOME:-}${CUDA_PATH:-}" ]] && ! command -v nvcc > /dev/null 2>&1 &&
  [[ ! -x /usr/local/cuda/bin/nvcc ]]; then
  echo "cuda_lane: SKIPPED: no CUDA toolkit (no CUDA_HOME, no nvcc on PATH, no /usr/local/cuda)"
  exit 0
fi

work="$(mktemp -d -t fastln-cuda-lane.XXXXXX)"
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
venv="${1:-$work/venv}"
src="$work/src"

python_bin="${PYTHON:-python3}"
"$python_bin" -m venv "$venv"
pip=("$venv/bin/python" -m pip)
# The registry's default torch wheel is the CUDA build. Ignore local wheel
# directories (PIP_FIND_LINKS / pip config), which may hold a +cpu wheel of
# the same version that pip would otherwise prefer.
torch_req="${FASTLN_CUDA_TORCH:-torch==2.13.0}"
echo "cuda_lane: installing $torch_req (CUDA build) into $venv"
env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "${pip[@]}" install -q \
  "$torch_req" ninja pybind11 pytest numpy onnx onnxscript onnxruntime setuptools wheel
"$venv/bin/python" - << 'EOF'
import torch
if torch.version.cuda is None:
    raise SystemExit(f"cuda_lane: installed torch {torch.__version__} is not a CUDA build")
print(f"cuda_lane: torch {torch.__version__} (CUDA {torch.version.cuda})")
EOF

# Copy the tracked and untracked-but-not-ignored files (no build outputs).
# Files deleted in the working tree but still in the index are skipped.
mkdir -p "$src"
cd "$repo_root"
while IFS= read -r -d '' f; do
  if [[ -e "$f" ]]; then cp --parents "$f" "$src"; fi
done < <(git ls-files -z --cached --others --exclude-standard)
cd "$src"

start=$SECONDS
# FASTLN_REQUIRE_CUDA=1: a toolkit that fastln fails to find or accept fails the lane
# at once, instead of passing it with a CPU-only build.
FASTLN_REQUIRE_CUDA=1 MAX_JOBS="${MAX_JOBS:-2}" "$venv/bin/python" setup.py build_ext --inplace \
  > "$work/build.log" 2>&1 || {
  tail -n 80 "$work/build.log"
  echo "cuda_lane: FAILED: build"
  exit 1
}
echo "cuda_lane: built in $((SECONDS - start)) s"
grep -E "^fastln: building the CUDA kernels" "$work/build.log" || true
if grep -E "(warning|Warning)" "$work/build.log" | grep -E "csrc/" > /dev/null; then
  echo "cuda_lane: compiler warnings in fastln sources:"
  grep -E "(warning|Warning)" "$work/build.log" | grep -E "csrc/" | sort -u
fi

"$venv/bin/python" - << 'EOF'
import torch
import fastln
assert fastln.cuda_built(), "fastln was built without its CUDA kernels"
kernels = torch._C._dispatch_dump("fastln::layer_norm_fwd")
assert "CUDA:" in kernels, "no CUDA kernel registered for fastln::layer_norm_fwd"
print("cuda_lane: import ok, cuda_built() is True, CUDA kernels registered")
EOF

# The SIMT backend takes each kernel's registers and static shared memory from
# this build (csrc/simt/resource_usage.inc): the committed table must be what
# cuobjdump reads from it now.
"$venv/bin/python" tools/simt_resources.py --so fastln/_C*.so --check

"$venv/bin/python" -m fastln
"$venv/bin/python" -m pytest -q tests
echo "cuda_lane: PASSED"
