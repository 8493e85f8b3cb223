"""python -m bench.copy_check: large fp32 shapes against a copy into a preallocated buffer.

The sweep's copy ceiling clones a fresh buffer for every sample, so on a VM it also
pays the new buffer's page faults and, on the 2-core EPYC, ranged from 6 to 137 GB/s
across the rows of one run. This measures fastln's and torch's raw ops (same byte
model, bench/bytemodel.py) next to ``dst.copy_(src)`` of the same bytes into a
buffer allocated once, interleaved call by call, medians over a few seconds.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable

import torch

import fastln  # noqa: F401  (registers torch.ops.fastln)

from .bytemodel import bytes_moved, gb_per_s
from .sweeps import DTYPES

SHAPES = [(65536, 64), (16384, 256), (8192, 384), (4096, 768), (4096, 1024), (2048, 2048),
          (1024, 4096), (256, 16384)]  # fmt: skip
LARGE_BYTES = 32 * 10**6


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


def _time(fns: dict[str, Callable[[], object]], seconds: float) -> dict[str, float]:
    """Median seconds per call of each function, interleaved call by call."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    end = time.time() + seconds
    while time.time() < end:
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return {k: _median(v) for k, v in times.items()}


def measure(m: int, n: int, seconds: float) -> list[str]:
    """Table lines for the large modes of one shape."""
    x, g = torch.randn(m, n), torch.randn(m, n)
    w, b = torch.randn(n), torch.randn(n)
    _, mean, rstd = torch.ops.fastln.layer_norm_fwd(x, [n], w, b, 1e-5)
    _, t_mean, t_rstd = torch.ops.aten.native_layer_norm(x, [n], w, b, 1e-5)
    grads = [True, True, True]
    ops = {
        "fwd": (
            lambda: torch.ops.fastln.layer_norm_fwd(x, [n], w, b, 1e-5),
            lambda: torch.ops.aten.native_layer_norm(x, [n], w, b, 1e-5),
        ),
        "bwd": (
            lambda: torch.ops.fastln.layer_norm_bwd(g, x, [n], mean, rstd, w, b, grads),
            lambda: torch.ops.aten.native_layer_norm_backward(
                g, x, [n], t_mean, t_rstd, w, b, grads
            ),
        ),
    }
    lines = []
    for mode, (ours, theirs) in ops.items():
        nbytes = bytes_moved(mode, m, n, DTYPES["float32"])
        if nbytes < LARGE_BYTES:
            continue
        # A copy reads and writes: half the bytes each way.
        src = torch.ones(nbytes // 8)
        copy = functools.partial(torch.empty_like(src).copy_, src)
        t = _time({"fastln": ours, "torch": theirs, "copy": copy}, seconds)
        gbps = {k: gb_per_s(nbytes, v) for k, v in t.items()}
        pct = {k: 100 * gbps[k] / gbps["copy"] for k in ("fastln", "torch")}
        lines.append(
            f"| {mode} | {m} x {n} | {nbytes / 1e6:.1f} | {gbps['fastln']:.1f} | "
            f"{gbps['torch']:.1f} | {gbps['copy']:.1f} | {pct['fastln']:.0f}% | "
            f"{pct['torch']:.0f}% |"
        )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.copy_check", description=__doc__)
    p.add_argument("--seconds", type=float, default=3.0, help="per shape and mode")
    args = p.parse_args()
    print(f"torch {torch.__version__}, fastln cpu_isa={fastln.cpu_isa()}, "
          f"{torch.get_num_threads()} threads, float32\n")  # fmt: skip
    print("| mode | M x N | MB | fastln GB/s | torch GB/s | copy GB/s | fastln % copy "
          "| torch % copy |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for m, n in SHAPES:
        for line in measure(m, n, args.seconds):
            print(line, flush=True)


if __name__ == "__main__":
    main()
