"""The CPU kernels' half/bfloat16 conversions (csrc/cpu/kernels.h): the scalar
branch-free ones exhaustively against IEEE reference conversions, and the vector
ones of both kernel copies (baseline, AVX2 + F16C) against the scalar ones, in
plain C++."""

from __future__ import annotations

import platform

import pytest
from test_cuda_plan import ROOT, compiler, run_check


def _cpu_has_f16c() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return {"avx2", "fma", "f16c"} <= set(flags)


@pytest.mark.skipif(compiler() is None, reason="needs a C++ compiler")
def test_half_bfloat16_conversions(tmp_path):
    out = run_check(tmp_path, ROOT / "tests" / "cpu_convert_check.cpp", opt="-O2")
    if platform.machine() == "x86_64" and _cpu_has_f16c():
        # The F16C path is the one the AVX2 kernels run here: it must be checked.
        assert "f16c: checked" in out, out
