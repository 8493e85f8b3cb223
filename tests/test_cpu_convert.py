"""The CPU kernels' half/bfloat16 conversions (csrc/cpu/kernels.h): the scalar
branch-free ones exhaustively against IEEE reference conversions, and the vector
ones of both kernel copies (baseline, AVX2 + F16C) against the scalar ones, in
plain C++."""

from __future__ import annotations

import platform

import pytest
from conftest import AVX2_FLAGS, AVX512_FLAGS, cpu_flags
from test_cuda_plan import ROOT, compiler, run_check


@pytest.mark.skipif(compiler() is None, reason="needs a C++ compiler")
def test_half_bfloat16_conversions(tmp_path):
    out = run_check(tmp_path, ROOT / "tests" / "cpu_convert_check.cpp", opt="-O2")
    if platform.machine() == "x86_64":
        # The copies this processor runs must have been checked.
        flags = cpu_flags()
        if AVX2_FLAGS <= flags:
            assert "f16c: checked" in out, out
        if AVX2_FLAGS | AVX512_FLAGS <= flags:
            assert "avx512: checked" in out, out
