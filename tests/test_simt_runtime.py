"""The SIMT runtime (csrc/simt) on its own: its intrinsics against the CUDA C++
Programming Guide's definitions, and each checker on a deliberately broken
kernel that it must catch (tests/simt_runtime_check.cpp). Plain C++, no torch:
it runs wherever a C++ compiler does, with or without the SIMT build."""

from __future__ import annotations

import re
import subprocess

import pytest
from test_cuda_plan import ROOT, build_check, compiler, run_check

SOURCE = ROOT / "tests" / "simt_runtime_check.cpp"
RUNTIME = [ROOT / "csrc" / "simt" / "runtime.cpp"]
FLAGS = ["-Wno-unknown-pragmas", "-pthread"]
ASAN = ["-fsanitize=address", "-fno-omit-frame-pointer", "-g"]

pytestmark = pytest.mark.skipif(compiler() is None, reason="needs a C++ compiler")

# Each planted bug of simt_runtime_check.cpp and the check that must report it.
PLANTED = {
    "smem_oob_write": "shared memory out of bounds",
    "smem_oob_read": "shared memory out of bounds",
    "smem_uninit_read": "uninitialized shared memory",
    "smem_misaligned": "misaligned shared memory access",
    "smem_race_write_after_read": "shared memory race",
    "smem_race_read_after_write": "shared memory race",
    "smem_race_two_writers": "shared memory race",
    "barrier_some_threads": "divergent __syncthreads",
    "barrier_two_sites": "divergent __syncthreads",
    "shuffle_lane_at_barrier": "divergent warp sync",
    "shuffle_reads_exited_lane": "shuffle source",
    "syncwarp_mismatch": "divergent warp sync",
    "shuffle_width_mismatch": "shuffle width",
    "shuffle_width_not_pow2": "shuffle width",
    "mask_without_caller": "warp sync",
}


def test_intrinsics_follow_the_programming_guide(tmp_path):
    run_check(tmp_path, SOURCE, extra_sources=RUNTIME, flags=FLAGS, args=["intrinsics"])


def test_checkers_catch_planted_bugs(tmp_path):
    out = run_check(tmp_path, SOURCE, extra_sources=RUNTIME, flags=FLAGS, args=["checkers"])
    found = re.findall(r"caught: fastln simt: ([^:]+): kernel (\w+),", out)
    assert {kernel: check for check, kernel in found} == PLANTED, out


def test_asan_build_catches_global_out_of_bounds(tmp_path):
    """FASTLN_SIMT_ASAN builds: AddressSanitizer reports a kernel's global read
    past its buffer and the runtime names the CUDA thread (thread 100 of a
    100-element buffer: seed 0 runs threads in index order)."""
    exe = build_check(tmp_path, SOURCE, extra_sources=RUNTIME, flags=FLAGS + ASAN, name="asan")
    result = subprocess.run([str(exe), "global-oob"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0, result.stdout
    assert "AddressSanitizer: heap-buffer-overflow" in result.stderr, result.stderr
    assert (
        "fastln simt: global memory (AddressSanitizer): kernel global_oob, block (0, 0, 0), "
        "thread (100, 0, 0)" in result.stderr
    ), result.stderr


def test_asan_build_runs_correct_kernels_clean(tmp_path):
    """The fibers' stack switches are annotated for ASan: correct kernels give
    no report (a false positive would make the ASan lane useless)."""
    exe = build_check(tmp_path, SOURCE, extra_sources=RUNTIME, flags=FLAGS + ASAN, name="asan")
    for what in ("intrinsics", "checkers"):
        result = subprocess.run([str(exe), what], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "AddressSanitizer" not in result.stderr, result.stderr
