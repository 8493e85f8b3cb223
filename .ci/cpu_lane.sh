#!/usr/bin/env bash
# CPU lane: the README's test command in a fresh virtual environment with the CPU
# build of torch, pinned beforehand (the command's `pip install torch` is then
# already satisfied), in the checkout itself.
#
# Usage: .ci/cpu_lane.sh VENV_DIR   (from the repository root)
set -euo pipefail
# shellcheck source=.ci/lib.sh
source .ci/lib.sh
venv=$1
test_command=$(readme_command test-command)

python3 -m venv "$venv"
# shellcheck disable=SC1091
source "$venv/bin/activate"
python -m pip install -q torch==2.13.0
python -c "import torch; assert torch.version.cuda is None, torch.__version__; print('torch', torch.__version__)"

echo "+ $test_command"
bash -euo pipefail -c "$test_command"
python -m fastln

# The narrower copies of the CPU kernels (the portable one, what a processor
# without AVX2/FMA/F16C runs, and the AVX2 one) through the parity, edge-case,
# accuracy and seed tests too: the default run above takes the widest copy this
# machine has (AVX-512 here).
isa_tests=(tests/test_parity.py tests/test_edge.py tests/test_accuracy.py tests/test_seeds.py)
for isa in base avx2; do
  echo "+ FASTLN_CPU_ISA=$isa python -m pytest -q ${isa_tests[*]}"
  FASTLN_CPU_ISA=$isa python -m pytest -q "${isa_tests[@]}"
done
