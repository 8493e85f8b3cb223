"""The CUDA tuning table (csrc/cuda/plan.h) checked on the host: it is plain C++,
so this runs without a GPU (and without the CUDA build)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def compiler() -> str | None:
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    return None


def build_check(
    tmp_path: Path,
    source: Path,
    opt: str = "-O1",
    extra_sources: Sequence[Path] = (),
    flags: Sequence[str] = (),
    name: str | None = None,
) -> Path:
    """Compiles a self-checking C++ program against csrc/; returns the binary."""
    exe = tmp_path / (name or source.stem)
    cmd = [compiler(), "-std=c++17", opt, "-Wall", "-Werror", f"-I{ROOT / 'csrc'}", *flags]
    subprocess.run([*cmd, str(source), *map(str, extra_sources), "-o", str(exe)], check=True)
    return exe


def run_check(
    tmp_path: Path,
    source: Path,
    opt: str = "-O1",
    extra_sources: Sequence[Path] = (),
    flags: Sequence[str] = (),
    args: Sequence[str] = (),
) -> str:
    """Compiles a self-checking C++ file against csrc/ and runs it: it must exit
    0 and print "ok" last. Returns its output."""
    exe = build_check(tmp_path, source, opt, extra_sources, flags)
    result = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("ok")
    return result.stdout


@pytest.mark.skipif(compiler() is None, reason="needs a C++ compiler")
def test_cuda_plan_invariants(tmp_path):
    run_check(tmp_path, ROOT / "tests" / "cuda_plan_check.cpp")
