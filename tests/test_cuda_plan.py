"""The CUDA tuning table (csrc/cuda/plan.h) checked on the host: it is plain C++,
so this runs without a GPU (and without the CUDA build)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _compiler() -> str | None:
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(_compiler() is None, reason="needs a C++ compiler")
def test_cuda_plan_invariants(tmp_path):
    exe = tmp_path / "cuda_plan_check"
    subprocess.run(
        [
            _compiler(),
            "-std=c++17",
            "-O1",
            "-Wall",
            "-Werror",
            f"-I{ROOT / 'csrc'}",
            str(ROOT / "tests" / "cuda_plan_check.cpp"),
            "-o",
            str(exe),
        ],
        check=True,
    )
    result = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("ok")
