"""The one byte model behind every GB/s number of the harness.

It counts the bytes an ideal kernel must move between memory and the chip,
each tensor read or written exactly once:

  forward  = 2*M*N*elem (read x, write y) + 2*N*param (read w, b)
             + 2*M*stat (write mean, rstd)
  backward = 3*M*N*elem (read dy, x, write dx) + 3*N*param (read w, write dw, db)
             + 2*M*stat (read mean, rstd)
  fwd+bwd  = forward + backward

Implementations that move more (extra passes, fp32 partial buffers, a torch
backward that recomputes its statistics) get no credit for it: the same bytes
divide every implementation's time, so GB/s ratios equal speed ratios.
"""

from __future__ import annotations

import torch

from .sweeps import DtypeConfig


def stats_element_size(config: DtypeConfig) -> int:
    # mean/rstd are float32 for every input dtype benchmarked here (float64 for double).
    return 8 if config.input == torch.float64 else 4


def bytes_moved(mode: str, m: int, n: int, config: DtypeConfig) -> int:
    elem = torch.empty((), dtype=config.input).element_size()
    param = torch.empty((), dtype=config.param).element_size()
    stat = stats_element_size(config)
    forward = 2 * m * n * elem + 2 * n * param + 2 * m * stat
    backward = 3 * m * n * elem + 3 * n * param + 2 * m * stat
    if mode == "fwd":
        return forward
    if mode == "bwd":
        return backward
    if mode == "fwdbwd":
        return forward + backward
    raise ValueError(f"unknown mode {mode!r}")


def gb_per_s(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9
