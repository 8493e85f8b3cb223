"""The one byte model behind every GB/s number of the harness.

It counts the bytes an ideal kernel must move between memory and the chip,
each tensor read or written exactly once. elem is the element size of x (and
of y, dy, dx), res that of the residual stream (residual, h, dh and the
gradient of x and residual of the add norms; elem unless the dtype config sets
a residual dtype), param that of weight/bias, stat that of mean/rstd (4, 8 for
float64 input). M rows of N elements.

layer_norm:
  forward  = 2*M*N*elem (read x, write y) + 2*N*param (read w, b)
             + 2*M*stat (write mean, rstd)
  backward = 3*M*N*elem (read dy, x, write dx) + 3*N*param (read w, write dw, db)
             + 2*M*stat (read mean, rstd)
rms_norm (no bias, no mean):
  forward  = 2*M*N*elem + N*param + M*stat
  backward = 3*M*N*elem + 2*N*param + M*stat
add_layer_norm (h = x + residual, y = layer_norm(h)):
  forward  = M*N*(2*elem + 2*res) (read x, residual, write y, h)
             + 2*N*param + 2*M*stat
  backward = M*N*(elem + 3*res) (read dy, dh, h, write the one gradient of x
             and residual) + 3*N*param + 2*M*stat
add_rms_norm: as add_layer_norm with rms_norm's param and stat counts
  forward  = M*N*(2*elem + 2*res) + N*param + M*stat
  backward = M*N*(elem + 3*res) + 2*N*param + M*stat
fwd+bwd = forward + backward, for every norm.

Implementations that move more (extra passes, fp32 partial buffers, a torch
backward that recomputes its statistics) get no credit for it: the same bytes
divide every implementation's time, so GB/s ratios equal speed ratios.

For the add norms, unfused_bytes() counts what the unfused composition
(h = x + residual, then the norm of h) must move at best, each of its two ops
ideal on its own: forward the add (read x, residual, write h: elem + 2*res)
then the norm (read h, write y: res + elem), M*N*(2*elem + 3*res); backward the
norm's backward (read dy, h, write dh_norm: elem + 2*res) then the gradient
add (read dh_norm, dh, write the sum: 3*res), M*N*(elem + 5*res); weight, bias
and statistics as fused. unfused / fused bytes is the speedup that fusing can
buy on bandwidth-bound shapes (5/4 forward, 3/2 backward at one dtype).
"""

from __future__ import annotations

import torch

from .sweeps import LAYER_NORM, DtypeConfig, Norm


def stats_element_size(config: DtypeConfig) -> int:
    # mean/rstd are float32 for every input dtype benchmarked here (float64 for double).
    return 8 if config.input == torch.float64 else 4


def _sizes(config: DtypeConfig) -> tuple[int, int, int, int]:
    """(elem, res, param, stat) element sizes."""
    elem = torch.empty((), dtype=config.input).element_size()
    res = torch.empty((), dtype=config.residual_dtype).element_size()
    param = torch.empty((), dtype=config.param).element_size()
    return elem, res, param, stats_element_size(config)


def _combine(mode: str, forward: int, backward: int) -> int:
    if mode == "fwd":
        return forward
    if mode == "bwd":
        return backward
    if mode == "fwdbwd":
        return forward + backward
    raise ValueError(f"unknown mode {mode!r}")


def _small(norm: Norm, m: int, n: int, param: int, stat: int) -> tuple[int, int]:
    """(forward, backward) bytes of weight, bias and statistics."""
    params = 1 if norm.rms else 2  # weight (, bias)
    stats = 1 if norm.rms else 2  # rstd (, mean)
    return params * n * param + stats * m * stat, (params + 1) * n * param + stats * m * stat


def bytes_moved(mode: str, m: int, n: int, config: DtypeConfig, norm: Norm = LAYER_NORM) -> int:
    elem, res, param, stat = _sizes(config)
    small_fwd, small_bwd = _small(norm, m, n, param, stat)
    if norm.add:
        forward = m * n * (2 * elem + 2 * res) + small_fwd
        backward = m * n * (elem + 3 * res) + small_bwd
    else:
        forward = 2 * m * n * elem + small_fwd
        backward = 3 * m * n * elem + small_bwd
    return _combine(mode, forward, backward)


def unfused_bytes(mode: str, m: int, n: int, config: DtypeConfig, norm: Norm) -> int | None:
    """Bytes of the unfused composition of an add norm (see the module doc);
    None for the norms without a residual add."""
    if not norm.add:
        return None
    elem, res, param, stat = _sizes(config)
    small_fwd, small_bwd = _small(norm, m, n, param, stat)
    forward = m * n * (2 * elem + 3 * res) + small_fwd
    backward = m * n * (elem + 5 * res) + small_bwd
    return _combine(mode, forward, backward)


def gb_per_s(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9
