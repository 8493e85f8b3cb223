"""The implementations under test and the workloads that time them.

Every norm of bench/sweeps.NORMS goes through the same code; what differs is
read from its descriptor (rms: no bias and no mean; add: a residual input and
the (y, h) outputs). Two levels:
  api: what a model calls, with autograd, as a drop-in is used: fastln's
       function of the norm (fastln.layer_norm, rms_norm, add_layer_norm,
       add_rms_norm) vs torch eager (F.layer_norm / F.rms_norm; for the add
       norms the unfused composition h = x + residual, y = norm(h)),
       torch.compile of that and any other library installed.
  op:  the raw kernels without Python wrappers or autograd: fastln's ops vs
       aten's (native_layer_norm(_backward), _fused_rms_norm(_backward), for
       the add norms aten add plus those, composed). This isolates kernel speed
       from per-call overhead, which is what one tunes a kernel against.

API signatures (shape: normalized_shape; rms norms take no bias):
  layer_norm(x, shape, w, b, eps) -> y        rms_norm(x, shape, w, eps) -> y
  add_layer_norm(x, residual, shape, w, b, eps) -> (y, h)
  add_rms_norm(x, residual, shape, w, eps) -> (y, h)
h is in residual's dtype, y in x's.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import fastln

from .sweeps import LAYER_NORM, DtypeConfig, Norm
from .timing import Workload

NormFn = Callable[..., object]  # the norm's API signature (module doc)
FwdOp = Callable[..., tuple[torch.Tensor, ...]]
BwdOp = Callable[..., tuple[torch.Tensor | None, ...]]
ALL_GRADS = [True, True, True]
RMS_GRADS = [True, True]


@dataclass
class Impl:
    name: str
    fn: NormFn | None = None  # api level
    fwd_op: FwdOp | None = None  # op level: fastln's fwd op signature, Inputs.op_fwd_args
    bwd_op: BwdOp | None = None  # op level: fastln's bwd op without the mask, Inputs.op_bwd_args
    prepare: Callable[[torch.Tensor], None] | None = None  # marks inputs before tracing


def _fastln_bwd(*args: object) -> tuple[torch.Tensor | None, ...]:
    return torch.ops.fastln.layer_norm_bwd(*args, ALL_GRADS)


def _aten_bwd(*args: object) -> tuple[torch.Tensor | None, ...]:
    return torch.ops.aten.native_layer_norm_backward(*args, ALL_GRADS)


FASTLN = Impl(
    "fastln", fn=fastln.layer_norm, fwd_op=torch.ops.fastln.layer_norm_fwd, bwd_op=_fastln_bwd
)
EAGER = Impl("eager", fn=F.layer_norm, fwd_op=torch.ops.aten.native_layer_norm, bwd_op=_aten_bwd)


# --- fastln for the other norms (looked up when used: a fastln without them
# still benchmarks LayerNorm) ---


def _fastln_rms_bwd(*args: object) -> tuple[torch.Tensor | None, ...]:
    return torch.ops.fastln.rms_norm_bwd(*args, RMS_GRADS)


def _fastln_add_bwd(*args: object) -> tuple[torch.Tensor | None, ...]:
    return torch.ops.fastln.add_norm_bwd(*args, ALL_GRADS)


def _fastln_impl(norm: Norm) -> Impl:
    if norm.name == "layer_norm":
        return FASTLN
    if norm.name == "rms_norm":
        return Impl(
            "fastln",
            fn=fastln.rms_norm,
            fwd_op=torch.ops.fastln.rms_norm_fwd,
            bwd_op=_fastln_rms_bwd,
        )
    add_norm = fastln.add_rms_norm if norm.rms else fastln.add_layer_norm

    if norm.rms:

        def fn(
            x: torch.Tensor, r: torch.Tensor, shape: Sequence[int], w: torch.Tensor, eps: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
            return add_norm(x, r, shape, w, eps, residual_dtype=r.dtype)

    else:

        def fn(  # type: ignore[misc]
            x: torch.Tensor,
            r: torch.Tensor,
            shape: Sequence[int],
            w: torch.Tensor,
            b: torch.Tensor,
            eps: float,
        ) -> tuple[torch.Tensor, torch.Tensor]:
            return add_norm(x, r, shape, w, b, eps, residual_dtype=r.dtype)

    return Impl("fastln", fn=fn, fwd_op=torch.ops.fastln.add_norm_fwd, bwd_op=_fastln_add_bwd)


# --- torch: eager (unfused for the add norms) and aten's ops ---


def _torch_add_layer_norm(
    x: torch.Tensor,
    r: torch.Tensor,
    shape: Sequence[int],
    w: torch.Tensor,
    b: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    h = x + r  # in residual's dtype (type promotion)
    return F.layer_norm(h, shape, w, b, eps).to(x.dtype), h


def _torch_add_rms_norm(
    x: torch.Tensor, r: torch.Tensor, shape: Sequence[int], w: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    h = x + r
    return F.rms_norm(h, shape, w, eps).to(x.dtype), h


TORCH_FNS: dict[str, NormFn] = {
    "layer_norm": F.layer_norm,
    "rms_norm": F.rms_norm,
    "add_layer_norm": _torch_add_layer_norm,
    "add_rms_norm": _torch_add_rms_norm,
}


def _composite_rms_fwd(
    x: torch.Tensor, shape: Sequence[int], w: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm forward from torch ops (the harness's inputs are 2-D: rows of N)."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    rstd = torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
    y = xf * rstd
    if w is not None:
        y = y * w
    return y.to(x.dtype), rstd


def _composite_rms_bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    shape: Sequence[int],
    rstd: torch.Tensor,
    w: torch.Tensor | None,
    mask: Sequence[bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    acc = torch.promote_types(x.dtype, torch.float32)
    xhat = x.to(acc) * rstd
    dyf = dy.to(acc)
    g = dyf * w if w is not None else dyf
    dx = rstd * (g - xhat * (g * xhat).mean(-1, keepdim=True))
    dw = (dyf * xhat).sum(0).to(w.dtype) if w is not None and mask[1] else None
    return (dx.to(x.dtype) if mask[0] else None), dw


def _aten_rms_ops(device: str) -> tuple[FwdOp, Callable[..., tuple], list[str]]:
    """aten._fused_rms_norm(_backward) where this torch has them for device, else
    the composite of torch ops; notes say which."""
    fwd: FwdOp = _composite_rms_fwd
    bwd: Callable[..., tuple] = _composite_rms_bwd
    notes = []
    x = torch.ones(2, 8, device=device)
    w = torch.ones(8, device=device)
    try:
        _, rstd = torch.ops.aten._fused_rms_norm(x, [8], w, 1e-5)
        fwd = torch.ops.aten._fused_rms_norm
        try:
            torch.ops.aten._fused_rms_norm_backward(x, x, [8], rstd, w, RMS_GRADS)
            bwd = torch.ops.aten._fused_rms_norm_backward
        except Exception:
            notes.append(
                f"aten._fused_rms_norm_backward: not available on {device}; "
                "the op-level torch RMSNorm backward is composed of torch ops"
            )
    except Exception:
        notes.append(
            f"aten._fused_rms_norm: not available on {device}; "
            "the op-level torch RMSNorm is composed of torch ops"
        )
    return fwd, bwd, notes


def _eager_impl(norm: Norm, device: str, level: str) -> tuple[Impl, list[str]]:
    if norm.name == "layer_norm":
        return EAGER, []
    notes: list[str] = []
    rms_fwd: FwdOp = _composite_rms_fwd
    rms_bwd: Callable[..., tuple] = _composite_rms_bwd
    if norm.rms and level == "op":  # the api level runs F.rms_norm
        rms_fwd, rms_bwd, notes = _aten_rms_ops(device)
    if not norm.add:

        def rms_bwd_op(*args: object) -> tuple[torch.Tensor | None, ...]:
            return rms_bwd(*args, RMS_GRADS)

        return Impl("eager", fn=F.rms_norm, fwd_op=rms_fwd, bwd_op=rms_bwd_op), notes

    def add_fwd(
        x: torch.Tensor,
        r: torch.Tensor,
        shape: Sequence[int],
        w: torch.Tensor,
        b: torch.Tensor | None,
        eps: float,
        rms: bool,
        residual_dtype: torch.dtype,
    ) -> tuple[torch.Tensor, ...]:
        h = torch.ops.aten.add(x, r)
        if rms:
            y, rstd = rms_fwd(h, shape, w, eps)
            mean = h.new_empty(0, dtype=rstd.dtype)
        else:
            y, mean, rstd = torch.ops.aten.native_layer_norm(h, shape, w, b, eps)
        return (y.to(x.dtype) if y.dtype != x.dtype else y), h, mean, rstd

    def add_bwd(
        dy: torch.Tensor,
        dh: torch.Tensor | None,
        h: torch.Tensor,
        shape: Sequence[int],
        mean: torch.Tensor,
        rstd: torch.Tensor,
        w: torch.Tensor,
        b: torch.Tensor | None,
        rms: bool,
    ) -> tuple[torch.Tensor | None, ...]:
        if dy.dtype != h.dtype:  # the backward of y's cast to x's dtype
            dy = dy.to(h.dtype)
        if rms:
            dn, dw = rms_bwd(dy, h, shape, rstd, w, RMS_GRADS)
            db = None
        else:
            dn, dw, db = torch.ops.aten.native_layer_norm_backward(
                dy, h, shape, mean, rstd, w, b, ALL_GRADS
            )
        return (dn if dh is None else torch.ops.aten.add(dn, dh)), dw, db

    return Impl("eager", fn=TORCH_FNS[norm.name], fwd_op=add_fwd, bwd_op=add_bwd), notes


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


def _compiled(dynamic: str, norm: Norm = LAYER_NORM) -> Impl:
    """torch.compile of torch's eager function of the norm (for the add norms the
    unfused composition, which inductor may fuse).

    dynamic="static": one specialized kernel per shape (what a model with fixed
    shapes gets, but compiling every shape of a sweep takes long);
    "m": M symbolic, N specialized, as for a model with variable batch x tokens;
    "all": one shape-generic kernel (fastest to compile).
    """
    _raise_recompile_limits()
    # bwd mode replays one backward with retain_graph=True, which compiled
    # backwards with donated (reused) saved buffers refuse.
    torch._functorch.config.donated_buffer = False
    eager = TORCH_FNS[norm.name]
    at = 2 if norm.add else 1  # position of normalized_shape in the API arguments

    def traced(*args: object) -> object:
        # normalized_shape from the input, not an argument: no guard on it.
        x = args[0]
        return eager(*args[:at], (x.shape[-1],), *args[at:])  # type: ignore[union-attr]

    if dynamic == "m":
        # N stays specialized: no automatic dynamic shapes, only the marked dim 0.
        torch._dynamo.config.automatic_dynamic_shapes = False
    compiled = torch.compile(traced, dynamic={"all": True, "static": False}.get(dynamic))

    def fn(*args: object) -> object:
        return compiled(*args[:at], *args[at + 1 :])

    def mark_rows_dynamic(x: torch.Tensor) -> None:
        torch._dynamo.maybe_mark_dynamic(x, 0)

    return Impl("compile", fn=fn, prepare=mark_rows_dynamic if dynamic == "m" else None)


# --- third-party libraries (CUDA only) ---


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


def _apex_rms() -> Impl:
    from apex.normalization import fused_layer_norm as apex_ln

    def fn(x: torch.Tensor, shape: Sequence[int], w: torch.Tensor, eps: float) -> torch.Tensor:
        if w.dtype != x.dtype:
            return apex_ln.mixed_dtype_fused_rms_norm_affine(x, w, shape, eps)
        return apex_ln.fused_rms_norm_affine(x, w, shape, eps)

    return Impl("apex", fn=fn)


def _liger_rms() -> Impl:
    from liger_kernel.ops.rms_norm import LigerRMSNormFunction

    def fn(x: torch.Tensor, shape: Sequence[int], w: torch.Tensor, eps: float) -> torch.Tensor:
        # in_place=False: an in-place backward would overwrite the replayed dy.
        return LigerRMSNormFunction.apply(x, w, eps, 0.0, "llama", False)

    return Impl("liger", fn=fn)


def _flash_attn_rms() -> Impl:
    from flash_attn.ops.triton.layer_norm import rms_norm_fn

    def fn(x: torch.Tensor, shape: Sequence[int], w: torch.Tensor, eps: float) -> torch.Tensor:
        return rms_norm_fn(x, w, None, eps=eps)

    return Impl("flash_attn", fn=fn)


def _liger_add_rms() -> Impl:
    from liger_kernel.ops.fused_add_rms_norm import LigerFusedAddRMSNormFunction

    def fn(
        x: torch.Tensor, r: torch.Tensor, shape: Sequence[int], w: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return LigerFusedAddRMSNormFunction.apply(x, r, w, eps, 0.0, "llama", False)

    return Impl("liger", fn=fn)


def _flash_attn_add(rms: bool) -> Callable[[], Impl]:
    def build() -> Impl:
        from flash_attn.ops.triton.layer_norm import layer_norm_fn

        def fn(x: torch.Tensor, r: torch.Tensor, shape: Sequence[int], *wb_eps: object) -> object:
            *wb, eps = wb_eps
            w, b = (wb[0], None) if rms else wb
            return layer_norm_fn(
                x, w, b, residual=r, eps=eps, prenorm=True, is_rms_norm=rms,
                residual_in_fp32=r.dtype == torch.float32,
            )  # fmt: skip

        return Impl("flash_attn", fn=fn)

    return build


# Third-party implementations per norm: (name, how to build it, devices it runs on).
OPTIONAL: dict[str, list[tuple[str, Callable[[], Impl], tuple[str, ...]]]] = {
    "layer_norm": [
        ("apex (apex.normalization.fused_layer_norm)", _apex, ("cuda",)),
        ("liger_kernel (LigerLayerNormFunction)", _liger, ("cuda",)),
        ("flash_attn (ops.triton.layer_norm)", _flash_attn, ("cuda",)),
    ],
    "rms_norm": [
        ("apex (FusedRMSNorm: fused_rms_norm_affine)", _apex_rms, ("cuda",)),
        ("liger_kernel (LigerRMSNormFunction)", _liger_rms, ("cuda",)),
        ("flash_attn (ops.triton.layer_norm.rms_norm_fn)", _flash_attn_rms, ("cuda",)),
    ],
    "add_layer_norm": [
        ("flash_attn (layer_norm_fn, residual, prenorm)", _flash_attn_add(False), ("cuda",)),
    ],
    "add_rms_norm": [
        ("liger_kernel (LigerFusedAddRMSNormFunction)", _liger_add_rms, ("cuda",)),
        ("flash_attn (rms_norm via layer_norm_fn, residual, prenorm)", _flash_attn_add(True),
         ("cuda",)),
    ],
}  # fmt: skip


def discover(
    device: str, level: str, compile_mode: str, norm: Norm = LAYER_NORM
) -> tuple[list[Impl], list[str]]:
    """fastln first, then every baseline usable here; notes say what was skipped.
    Raises if fastln lacks the norm."""
    notes: list[str] = []
    try:
        fast = _fastln_impl(norm)
    except AttributeError as exc:
        raise RuntimeError(
            f"this fastln has no {norm.name} ({exc}); rebuild fastln from a checkout that has it"
        ) from None
    eager, eager_notes = _eager_impl(norm, device, level)
    impls = [fast, eager]
    notes += eager_notes
    if level == "op":
        if norm.name == "layer_norm":
            notes.append(
                "level=op: raw kernels only (fastln ops vs aten native_layer_norm); "
                "torch.compile and third-party LayerNorms are not timed"
            )
        else:
            notes.append(
                f"level=op: raw kernels only (fastln ops vs aten's, composed for {norm.name}); "
                "torch.compile and third-party implementations are not timed"
            )
        return impls, notes
    if compile_mode == "off":
        notes.append("torch.compile: skipped (--compile off)")
    else:
        impls.append(_compiled(compile_mode, norm))
    for label, build, devices in OPTIONAL[norm.name]:
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
    bias: torch.Tensor | None  # None for the rms norms
    grad_out: torch.Tensor
    shape: tuple[int, ...]
    eps: float = 1e-5
    norm: Norm = LAYER_NORM
    residual: torch.Tensor | None = None  # the add norms only
    grad_h: torch.Tensor | None = None  # gradient of h (add norms)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """What gets gradients: x (, residual), weight (, bias)."""
        head = (self.x,) if self.residual is None else (self.x, self.residual)
        tail = (self.weight,) if self.bias is None else (self.weight, self.bias)
        return (*head, *tail)

    def api_args(self, tensors: Sequence[torch.Tensor]) -> tuple[object, ...]:
        """The norm's API arguments (module doc), tensors as from tensors()."""
        at = 2 if self.norm.add else 1
        return (*tensors[:at], self.shape, *tensors[at:], self.eps)

    @property
    def grad_outputs(self) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """dy, or (dy, dh) for the add norms: their loss depends on y and h."""
        if self.grad_h is None:
            return self.grad_out
        return self.grad_out, self.grad_h

    def op_fwd_args(self) -> tuple[object, ...]:
        """fastln's forward op arguments (aten's baselines take the same)."""
        shape = list(self.shape)
        if self.norm.add:
            assert self.residual is not None
            return (self.x, self.residual, shape, self.weight, self.bias, self.eps,
                    self.norm.rms, self.residual.dtype)  # fmt: skip
        if self.norm.rms:
            return self.x, shape, self.weight, self.eps
        return self.x, shape, self.weight, self.bias, self.eps

    def op_bwd_args(self, out: Sequence[torch.Tensor]) -> tuple[object, ...]:
        """The backward op arguments (without the output mask) from the forward's outputs."""
        shape, dy = list(self.shape), self.grad_out
        if self.norm.add:  # out = (y, h, mean, rstd)
            return (dy, self.grad_h, out[1], shape, out[2], out[3], self.weight, self.bias,
                    self.norm.rms)  # fmt: skip
        if self.norm.rms:  # out = (y, rstd)
            return dy, self.x, shape, out[1], self.weight
        return dy, self.x, shape, out[1], out[2], self.weight, self.bias  # (y, mean, rstd)


def make_inputs(
    m: int, n: int, config: DtypeConfig, device: str, norm: Norm = LAYER_NORM
) -> Inputs:
    # Non-trivial affine parameters and a mean offset, so that a kernel that
    # ignores weight/bias or computes the variance naively gets caught.
    gen = torch.Generator(device="cpu").manual_seed(m * 100_003 + n)

    def randn(*size: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.randn(*size, generator=gen).to(device=device, dtype=dtype)

    x = (randn(m, n, dtype=torch.float32) + 0.5).to(config.input)
    weight = (1 + 0.2 * randn(n, dtype=torch.float32)).to(config.param)
    bias = (0.2 * randn(n, dtype=torch.float32)).to(config.param)
    inp = Inputs(x, weight, bias, randn(m, n, dtype=config.input), (n,), norm=norm)
    if norm.rms:
        inp.bias = None
    if norm.add:
        inp.residual = randn(m, n, dtype=config.residual_dtype)
        inp.grad_h = randn(m, n, dtype=config.residual_dtype)
    return inp


def _leaves(inp: Inputs) -> tuple[torch.Tensor, ...]:
    return tuple(t.detach().requires_grad_(True) for t in inp.tensors())


def workload(impl: Impl, mode: str, level: str, inp: Inputs) -> Workload:
    """A zero-argument callable doing one `mode` step of `impl` on `inp`.

    bwd keeps one forward's autograd graph (retain_graph=True) and replays only
    the backward; autograd.grad returns the gradients without accumulating them
    into .grad, which would add a kernel to every call. For the add norms the
    backward takes gradients of both outputs, y and h.
    """
    if level == "op":
        return _op_workload(impl, mode, inp)
    fn, dy = impl.fn, inp.grad_outputs
    assert fn is not None
    activations = 2 if inp.norm.add else 1  # x (, residual): the tensors with M rows
    if mode == "fwd":
        args = inp.api_args(inp.tensors())
        if impl.prepare:
            for t in inp.tensors()[:activations]:
                impl.prepare(t)
        return lambda: fn(*args)
    leaves = _leaves(inp)
    if impl.prepare:
        for t in leaves[:activations]:
            impl.prepare(t)
    args = inp.api_args(leaves)
    if mode == "bwd":
        y = fn(*args)
        return lambda: torch.autograd.grad(y, leaves, dy, retain_graph=True)
    if mode == "fwdbwd":

        def step() -> tuple[torch.Tensor, ...]:
            y = fn(*args)
            return torch.autograd.grad(y, leaves, dy)

        return step
    raise ValueError(f"unknown mode {mode!r}")


def _op_workload(impl: Impl, mode: str, inp: Inputs) -> Workload:
    fwd, bwd = impl.fwd_op, impl.bwd_op
    assert fwd is not None and bwd is not None
    fwd_args = inp.op_fwd_args()
    if mode == "fwd":
        return lambda: fwd(*fwd_args)
    if mode == "bwd":
        bwd_args = inp.op_bwd_args(fwd(*fwd_args))
        return lambda: bwd(*bwd_args)
    if mode == "fwdbwd":
        to_bwd = inp.op_bwd_args

        def step() -> tuple[torch.Tensor | None, ...]:
            return bwd(*to_bwd(fwd(*fwd_args)))

        return step
    raise ValueError(f"unknown mode {mode!r}")


def copy_workload(nbytes: int, device: str) -> tuple[Workload, int]:
    """The copy ceiling: clone a buffer of half the modeled bytes, so that the
    read plus the write move as many bytes as the norm's step. clone (not
    copy_ into a preallocated buffer) because the norm also allocates its
    output every call. Returns the workload and the bytes it moves."""
    src = torch.ones(max(1, nbytes // 2), dtype=torch.uint8, device=device)
    return (lambda: src.clone()), 2 * src.numel()
