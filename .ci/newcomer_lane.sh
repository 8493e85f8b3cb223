#!/usr/bin/env bash
# Newcomer lane: the README's two commands, exactly as written, the way a new user
# runs them on a fresh machine: a fresh clone, a fresh virtual environment with no
# torch in it, no CUDA variables, and whatever torch `pip install torch` brings (on
# this machine the CUDA build). Checks that the main command wrote benchmark results,
# that fastln found the nvcc toolkit by itself when there is one and then registered
# its CUDA kernels, that the SIMT resource table matches that nvcc build, and that the
# test command (the whole suite against that build) passed. This is CI's one CUDA
# build: the test command's editable install reuses the main command's objects.
#
# Usage: .ci/newcomer_lane.sh   (from the repository root)
set -euo pipefail
# shellcheck source=.ci/lib.sh
source .ci/lib.sh
main_command=$(readme_command main-command)
test_command=$(readme_command test-command)

work="$(mktemp -d -t fastln-newcomer.XXXXXX)"
trap 'rm -rf "$work"' EXIT
# A clone, as a newcomer gets it, with uncommitted work copied over it for a run by
# hand (in CI the checkout is clean and the copy changes nothing).
git clone -q "$(pwd)" "$work/src"
copy_tree "$work/src"

# Nothing a newcomer would not have: no CUDA or build variables of ours or torch's.
unset CUDA_HOME CUDA_PATH CUDA_ROOT CUDA_TOOLKIT_ROOT_DIR CUDACXX TORCH_CUDA_ARCH_LIST \
  FASTLN_FORCE_CPU FASTLN_REQUIRE_CUDA FASTLN_CPU_ISA MAX_JOBS PYTHONPATH VIRTUAL_ENV

python3 -m venv "$work/venv"
# shellcheck disable=SC1091
source "$work/venv/bin/activate"
if python -c "import torch" 2> /dev/null; then
  echo "newcomer: FAILED: the fresh venv already has torch" >&2
  exit 1
fi

cd "$work/src"
touch "$work/before-main"
echo "+ $main_command"
start=$SECONDS
bash -euo pipefail -c "$main_command"
echo "newcomer: main command took $((SECONDS - start)) s"
python -c "import torch; print(f'newcomer: pip installed torch {torch.__version__} (CUDA {torch.version.cuda})')"

mapfile -t results < <(find bench/results -name 'quick*.json' -newer "$work/before-main")
if [[ ${#results[@]} -eq 0 ]]; then
  echo "newcomer: FAILED: the main command wrote no bench/results/*/quick*.json" >&2
  exit 1
fi
python - "${results[@]}" << 'PY'
import json
import sys

for path in sys.argv[1:]:
    with open(path) as f:
        data = json.load(f)
    rows = data["rows"] if isinstance(data, dict) else data
    ok = [r for r in rows if r.get("status") == "ok" and r.get("impl") == "fastln"]
    if not ok:
        raise SystemExit(f"newcomer: FAILED: {path} holds no timed fastln row")
    print(f"newcomer: benchmark results {path}: {len(ok)} fastln rows")
PY

# From outside the source folder, which would shadow the installed fastln.
(cd "$work" && python -m fastln)
# With a toolkit on this machine and a CUDA torch, a CPU-only build would mean the
# discovery failed a newcomer (the README promises the CUDA kernels then).
if command -v nvcc > /dev/null 2>&1 || [[ -x /usr/local/cuda/bin/nvcc ]]; then
  (cd "$work" && python -c "
import torch, fastln
if torch.version.cuda is not None and not fastln.cuda_built():
    raise SystemExit('newcomer: FAILED: nvcc is here and torch is a CUDA build, '
                     'but fastln was built CPU-only: ' + str(fastln.build_info()['NO_CUDA_REASON']))
")
  # The rest of what a CUDA build must show without a GPU, on this very build (one nvcc
  # build in CI, not two): the kernels registered with the dispatcher, and the SIMT
  # backend's resource table (csrc/simt/resource_usage.inc: each kernel's registers and
  # static shared memory) equal to what cuobjdump reads from the compiled kernels.
  so=$(cd "$work" && python -c "
import torch, fastln, fastln._C
if torch.version.cuda is not None:
    assert 'CUDA:' in torch._C._dispatch_dump('fastln::layer_norm_fwd'), 'no CUDA kernel registered'
    print(fastln._C.__file__)
")
  if [[ -n "$so" ]]; then
    echo "newcomer: CUDA kernels registered; checking the SIMT resource table against $so"
    python tools/simt_resources.py --so "$so" --check
  fi
fi

echo "+ $test_command"
start=$SECONDS
bash -euo pipefail -c "$test_command"
echo "newcomer: test command took $((SECONDS - start)) s"
echo "newcomer: PASSED"
