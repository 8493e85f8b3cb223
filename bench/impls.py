"""The LayerNorm implementations under test and the workloads that time them.

Two levels:
  api: what a model calls, F.layer_norm's signature with autograd, as a drop-in
       is used. fastln.layer_norm vs torch eager, torch.compile and any other
       LayerNorm library installed.
  op:  the raw kernels without Python wrappers or autograd: fastln's ops vs
       aten's native_layer_norm(_backward). This isolates kernel speed from
       per-call overhead, which is what one tunes a kernel against.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import fastln

from .sweeps import DtypeConfig
from .timing import Workload

LayerNormFn = Callable[..., torch.Tensor]  # (x, normalized_shape, weight, bias, eps) -> y
FwdOp = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
BwdOp = Callable[..., tuple[torch.Tensor | None, ...]]
ALL_GRADS = [True, True, True]


@dataclass
class Impl:
    name: str
    fn: LayerNormFn | None = None  # api level
    fwd_op: FwdOp | None = None  # op level: (x, shape, w, b, eps) -> (y, mean, rstd)
    bwd_op: BwdOp | None = None  # op level: (dy, x, shape, mean, rstd, w, b) -> grads
    prepare: Callable[[torch.Tensor], None] | None = None  # marks inputs before tracing


def _fastln_bwd(*args: object) -> tuple[torch.Tensor | None, ...]:
    return torch.ops.fastln.layer_norm_bwd(*args, ALL_GRADS)


def _aten_bwd(*args: object) -> tuple[torch.Tensor | None, ...]:
    return torch.ops.aten.native_layer_norm_backward(*args, ALL_GRADS)


FASTLN = Impl(
    "fastln", fn=fastln.layer_norm, fwd_op=torch.ops.fastln.layer_norm_fwd, bwd_op=_fastln_bwd
)
EAGER = Impl("eager", fn=F.layer_norm, fwd_op=torch.ops.aten.native_layer_norm, bwd_op=_aten_bwd)


def _raise_recompile_limits() -> None:
    # One graph per (shape, dtype, grad mode): the default limit of 8 would make
    # dynamo silently fall back to eager in the middle of a sweep.
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, 100_000)
    for name in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, 1_000_000)


def _compiled(dynamic: str) -> Impl:
    """torch.compile of F.layer_norm.

    dynamic="static": one specialized kernel per shape (what a model with fixed
    shapes gets, but compiling every shape of a sweep takes long);
    "m": M symbolic, N specialized, as for a model with variable batch x tokens;
    "all": one shape-generic kernel (fastest to compile).
    """
    _raise_recompile_limits()
    # bwd mode replays one backward with retain_graph=True, which compiled
    # backwards with donated (reused) saved buffers refuse.
    torch._functorch.config.donated_buffer = False

    def ln(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), w, b, eps)

    if dynamic == "m":
        # N stays specialized: no automatic dynamic shapes, only the marked dim 0.
        torch._dynamo.config.automatic_dynamic_shapes = False
    compiled = torch.compile(ln, dynamic={"all": True, "static": False}.get(dynamic))

    def fn(
        x: torch.Tensor, shape: Sequence[int], w: torch.Tensor, b: torch.Tensor, eps: float
    ) -> torch.Tensor:
        return compiled(x, w, b, eps)

    def mark_rows_dynamic(x: torch.Tensor) -> None:
        torch._dynamo.maybe_mark_dynamic(x, 0)

    return Impl("compile", fn=fn, prepare=mark_rows_dynamic if dynamic == "m" else None)


def _apex() -> Impl:
    from apex.normalization import fused_layer_norm as apex_ln

    def fn(
        x: torch.Tensor, shape: Sequence[int], w: torch.Tensor, b: torch.Tensor, eps: float
    ) -> torch.Tensor:
        if w.dtype != x.dtype:  # fp32 weights with half input: apex's mixed-dtype kernel
            return apex_ln.mixed_dtype_fused_layer_norm_affine(x, w, b, shape, eps)
        return apex_ln.fused_layer_norm_affine(x, w, b, shape, eps)

    return Impl("apex", fn=fn)


def _liger() -> Impl:
    from liger_kernel.ops.layer_norm import LigerLayerNormFunction

    def fn(
        x: torch.Tensor, shape: Sequence[int], w: torch.Tensor, b: torch.Tensor, eps: float
    ) -> torch.Tensor:
        return LigerLayerNormFunction.apply(x, w, b, eps)

    return Impl("liger", fn=fn)


def _flash_attn() -> Impl:
    from flash_attn.ops.triton.layer_norm import layer_norm_fn

    def fn(
        x: torch.Tensor, shape: Sequence[int], w: torch.Tensor, b: torch.Tensor, eps: float
    ) -> torch.Tensor:
        return layer_norm_fn(x, w, b, eps=eps)

    return Impl("flash_attn", fn=fn)


# Third-party LayerNorms: (name, how to build it, devices it runs on).
OPTIONAL: list[tuple[str, Callable[[], Impl], tuple[str, ...]]] = [
    ("apex (apex.normalization.fused_layer_norm)", _apex, ("cuda",)),
    ("liger_kernel (LigerLayerNormFunction)", _liger, ("cuda",)),
    ("flash_attn (ops.triton.layer_norm)", _flash_attn, ("cuda",)),
]


def discover(device: str, level: str, compile_mode: str) -> tuple[list[Impl], list[str]]:
    """fastln first, then every baseline usable here; notes say what was skipped."""
    notes: list[str] = []
    impls = [FASTLN, EAGER]
    if level == "op":
        notes.append(
            "level=op: raw kernels only (fastln ops vs aten native_layer_norm); "
            "torch.compile and third-party LayerNorms are not timed"
        )
        return impls, notes
    if compile_mode == "off":
        notes.append("torch.compile: skipped (--compile off)")
    else:
        impls.append(_compiled(compile_mode))
    for label, build, devices in OPTIONAL:
        if device not in devices:
            notes.append(f"{label}: skipped, runs on {'/'.join(devices)} only")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                impls.append(build())
        except Exception as exc:  # ImportError, or a broken install failing on import
            notes.append(f"{label}: skipped, not usable ({type(exc).__name__}: {exc})"[:200])
    return impls, notes


@dataclass
class Inputs:
    x: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    grad_out: torch.Tensor
    shape: tuple[int, ...]
    eps: float = 1e-5


def make_inputs(m: int, n: int, config: DtypeConfig, device: str) -> Inputs:
    # Non-trivial affine parameters and a mean offset, so that a kernel that
    # ignores weight/bias or computes the variance naively gets caught.
    gen = torch.Generator(device="cpu").manual_seed(m * 100_003 + n)

    def randn(*size: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.randn(*size, generator=gen).to(device=device, dtype=dtype)

    x = (randn(m, n, dtype=torch.float32) + 0.5).to(config.input)
    weight = (1 + 0.2 * randn(n, dtype=torch.float32)).to(config.param)
    bias = (0.2 * randn(n, dtype=torch.float32)).to(config.param)
    return Inputs(x, weight, bias, randn(m, n, dtype=config.input), (n,))


def _leaves(inp: Inputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(t.detach().requires_grad_(True) for t in (inp.x, inp.weight, inp.bias))


def workload(impl: Impl, mode: str, level: str, inp: Inputs) -> Workload:
    """A zero-argument callable doing one `mode` step of `impl` on `inp`.

    bwd keeps one forward's autograd graph (retain_graph=True) and replays only
    the backward; autograd.grad returns the gradients without accumulating them
    into .grad, which would add a kernel to every call.
    """
    if level == "op":
        return _op_workload(impl, mode, inp)
    fn, shape, eps, dy = impl.fn, inp.shape, inp.eps, inp.grad_out
    assert fn is not None
    if mode == "fwd":
        x, w, b = inp.x, inp.weight, inp.bias
        if impl.prepare:
            impl.prepare(x)
        return lambda: fn(x, shape, w, b, eps)
    leaves = _leaves(inp)
    if impl.prepare:
        impl.prepare(leaves[0])
    if mode == "bwd":
        y = fn(*leaves[:1], shape, *leaves[1:], eps)
        return lambda: torch.autograd.grad(y, leaves, dy, retain_graph=True)
    if mode == "fwdbwd":

        def step() -> tuple[torch.Tensor, ...]:
            y = fn(leaves[0], shape, leaves[1], leaves[2], eps)
            return torch.autograd.grad(y, leaves, dy)

        return step
    raise ValueError(f"unknown mode {mode!r}")


def _op_workload(impl: Impl, mode: str, inp: Inputs) -> Workload:
    fwd, bwd = impl.fwd_op, impl.bwd_op
    assert fwd is not None and bwd is not None
    x, w, b, dy, shape, eps = inp.x, inp.weight, inp.bias, inp.grad_out, list(inp.shape), inp.eps
    if mode == "fwd":
        return lambda: fwd(x, shape, w, b, eps)
    if mode == "bwd":
        _, mean, rstd = fwd(x, shape, w, b, eps)
        return lambda: bwd(dy, x, shape, mean, rstd, w, b)
    if mode == "fwdbwd":

        def step() -> tuple[torch.Tensor | None, ...]:
            _, mean, rstd = fwd(x, shape, w, b, eps)
            return bwd(dy, x, shape, mean, rstd, w, b)

        return step
    raise ValueError(f"unknown mode {mode!r}")


def copy_workload(nbytes: int, device: str) -> tuple[Workload, int]:
    """The copy ceiling: clone a buffer of half the modeled bytes, so that the
    read plus the write move as many bytes as the LayerNorm step. clone (not
    copy_ into a preallocated buffer) because LayerNorm also allocates its
    output every call. Returns the workload and the bytes it moves."""
    src = torch.ones(max(1, nbytes // 2), dtype=torch.uint8, device=device)
    return (lambda: src.clone()), 2 * src.numel()
