"""The CPU kernels' half/bfloat16 conversions (csrc/cpu/kernels.h): the scalar
branch-free ones exhaustively against IEEE reference conversions, and the vector
ones of both kernel copies (baseline, AVX2 + F16C) against the scalar ones, in
plain C++."""

from __future__ import annotations

import platform

import pytest
from test_cuda_plan import ROOT, compiler, run_check


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return set()


@pytest.mark.skipif(compiler() is None, reason="needs a C++ compiler")
def test_half_bfloat16_conversions(tmp_path):
    out = run_check(tmp_path, ROOT / "tests" / "cpu_convert_check.cpp", opt="-O2")
    if platform.machine() == "x86_64":
        # The copies this processor runs must have been checked.
        flags = _cpu_flags()
        if {"avx2", "fma", "f16c"} <= flags:
            assert "f16c: checked" in out, out
        if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
            assert "avx512: checked" in out, out
