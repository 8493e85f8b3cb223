"""The CPU kernels' branch-free half/bfloat16 conversions (csrc/cpu/kernels.h),
checked exhaustively against IEEE reference conversions in plain C++."""

from __future__ import annotations

import pytest
from test_cuda_plan import ROOT, compiler, run_check


@pytest.mark.skipif(compiler() is None, reason="needs a C++ compiler")
def test_half_bfloat16_conversions(tmp_path):
    run_check(tmp_path, ROOT / "tests" / "cpu_convert_check.cpp", opt="-O2")
