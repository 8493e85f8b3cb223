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
#   CUDA_HOME            the CUDA toolkit (default /usr/local/cuda)
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

export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
nvcc_bin=""
if [[ -x "$CUDA_HOME/bin/nvcc" ]]; then
  nvcc_bin="$CUDA_HOME/bin/nvcc"
elif command -v nvcc > /dev/null 2>&1; then
  nvcc_bin="$(command -v nvcc)"
  CUDA_HOME="$(dirname "$(dirname "$nvcc_bin")")"
  export CUDA_HOME
fi
if [[ -z "$nvcc_bin" ]]; then
  echo "cuda_lane: SKIPPED: no nvcc found (neither \$CUDA_HOME/bin/nvcc nor nvcc on PATH)"
  exit 0
fi
export PATH="$CUDA_HOME/bin:$PATH"
echo "cuda_lane: nvcc $("$nvcc_bin" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p') at $nvcc_bin"

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
  "$torch_req" ninja pybind11 pytest numpy setuptools wheel
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
MAX_JOBS="${MAX_JOBS:-2}" "$venv/bin/python" setup.py build_ext --inplace \
  > "$work/build.log" 2>&1 || {
  tail -n 80 "$work/build.log"
  echo "cuda_lane: FAILED: build"
  exit 1
}
echo "cuda_lane: built in $((SECONDS - start)) s"
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

"$venv/bin/python" -m pytest -q tests
echo "cuda_lane: PASSED"
