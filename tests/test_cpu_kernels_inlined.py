"""The CPU kernel copies (csrc/cpu/kernels.h) keep every vector inside one function.

GCC 12 miscompiled calls, within the AVX2 and AVX-512 copies (target pragmas), to
lambdas left out of line that return a vector: the caller read only its low 16
bytes, so dx rows were three quarters zeros and row sums covered half the row. The
entry points are flattened so that nothing else is out of line; this checks the
built library: in the copies' namespaces only the entry points may have symbols.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import fastln

ENTRY_POINTS = {"forward_rows", "backward_rows", "row_as_acc", "row_from_acc", "long_row_sums"}


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs binutils nm")
def test_only_entry_points_are_out_of_line():
    library = Path(fastln._C.__file__)
    out = subprocess.run(
        ["nm", "-C", "--defined-only", str(library)], capture_output=True, text=True, check=True
    ).stdout
    functions: set[str] = set()
    for line in out.splitlines():
        match = re.search(r"fastln::cpu::isa_(base|avx2|avx512)::([A-Za-z_0-9]+)", line)
        if match is None:
            continue
        symbol = line.split(" ", 2)[-1]
        # A lambda's own body: ...::{lambda(auto:1)#1}::operator()<...>.
        assert "}::operator()" not in symbol, f"out-of-line lambda: {symbol[:300]}"
        functions.add(match.group(2))
    assert functions, "no kernel symbols found: was the library stripped?"
    assert functions <= ENTRY_POINTS, sorted(functions - ENTRY_POINTS)
