"""Correctness gate: every shape is checked before it is timed.

fastln's function of the norm (fastln.layer_norm, rms_norm, add_layer_norm,
add_rms_norm) and torch eager (F.layer_norm / F.rms_norm, for the add norms the
unfused h = x + residual, y = norm(h)), forward and backward through autograd,
run on the same inputs, and both are compared with torch evaluated in float64
on those inputs: y (and h) forward; the gradients of x (, residual), weight
(, bias) backward, for the add norms from gradients of both y and h. fastln
passes when its error is within the dtype's tolerance or no worse than torch
eager's own: torch's CPU bfloat16 backward, for one, accumulates
dweight/dbias in a way that misses the exact answer by several percent, and
fastln must not be failed for being more accurate than that.

The error measure is max |result - exact| divided by max |exact| of that
tensor: dweight/dbias are sums over M rows and grow with M, so absolute
tolerances would not fit all shapes. Tolerances are about one or two ulps of
the output dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from .impls import TORCH_FNS, Inputs, _fastln_impl, _leaves

# (forward, backward) tolerance on the max-normalized error, by input dtype.
TOLERANCE: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (1e-5, 1e-4),
    torch.float16: (2e-3, 5e-3),
    torch.bfloat16: (1.6e-2, 3e-2),
}


@dataclass
class CheckResult:
    fwd_err: float = float("nan")  # fastln vs exact
    bwd_err: float = float("nan")
    eager_fwd_err: float = float("nan")  # torch eager vs exact
    eager_bwd_err: float = float("nan")
    fwd_ok: bool = False
    bwd_ok: bool = False
    messages: list[str] = field(default_factory=list)

    def ok(self, mode: str) -> bool:
        return {"fwd": self.fwd_ok, "bwd": self.bwd_ok, "fwdbwd": self.fwd_ok and self.bwd_ok}[mode]


def normalized_error(actual: torch.Tensor | None, exact: torch.Tensor | None) -> float:
    if actual is None or exact is None:
        return 0.0 if actual is None and exact is None else float("inf")
    if actual.shape != exact.shape:
        return float("inf")
    a, e = actual.detach().double(), exact.detach().double()
    if e.numel() == 0:
        return 0.0
    diff = (a - e).abs().max().item()
    if diff != diff:  # NaN where the exact result has none
        return float("inf")
    return diff / max(e.abs().max().item(), 1e-30)


def run(fn: object, inp: Inputs, backward: bool) -> tuple[torch.Tensor, ...]:
    """(y[, h]) or (y[, h], dx[, dresidual], dweight[, dbias]) of fn on fresh leaves of inp."""
    if not backward:
        with torch.no_grad():
            out = fn(*inp.api_args(inp.tensors()))  # type: ignore[operator]
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)
    leaves = _leaves(inp)
    out = fn(*inp.api_args(leaves))  # type: ignore[operator]
    outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
    dys = inp.grad_outputs
    return (*outs, *torch.autograd.grad(outs, leaves, dys if isinstance(dys, tuple) else (dys,)))


def _gate(name: str, err: float, eager_err: float, tol: float, messages: list[str]) -> bool:
    if err <= tol or err <= 1.5 * eager_err:
        return True
    messages.append(f"{name}: error {err:.3g} > tolerance {tol:g} (torch eager: {eager_err:.3g})")
    return False


def _double(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.double()


def check(inp: Inputs, modes: list[str]) -> CheckResult:
    result = CheckResult()
    norm = inp.norm
    backward = any(m != "fwd" for m in modes)
    fwd_tol, bwd_tol = TOLERANCE[inp.x.dtype]
    exact_inp = replace(
        inp,
        x=inp.x.double(),
        weight=inp.weight.double(),
        bias=_double(inp.bias),
        grad_out=inp.grad_out.double(),
        residual=_double(inp.residual),
        grad_h=_double(inp.grad_h),
    )
    torch_fn = TORCH_FNS[norm.name]
    exact = run(torch_fn, exact_inp, backward)
    eager = run(torch_fn, inp, backward)
    try:
        got = run(_fastln_impl(norm).fn, inp, backward)
    except Exception as exc:
        result.messages.append(f"fastln raised {type(exc).__name__}: {exc}")
        return result
    outputs = ("output", "h") if norm.add else ("output",)
    expected = (inp.x.dtype, inp.residual.dtype) if inp.residual is not None else (inp.x.dtype,)
    for name, t, dtype in zip(outputs, got, expected):
        if t.dtype != dtype:
            result.messages.append(f"{name} dtype {t.dtype}, expected {dtype}")
            return result
    k = len(outputs)
    result.fwd_ok = True
    errors, eager_errors = [], []
    for name, g, e, x in zip(outputs, got[:k], eager[:k], exact[:k]):
        errors.append(normalized_error(g, x))
        eager_errors.append(normalized_error(e, x))
        ok = _gate(name, errors[-1], eager_errors[-1], fwd_tol, result.messages)
        result.fwd_ok = result.fwd_ok and ok
    result.fwd_err, result.eager_fwd_err = max(errors), max(eager_errors)
    if backward:
        result.bwd_ok = True
        names = ["dx", *(["dresidual"] if norm.add else []), "dweight"]
        names += [] if norm.rms else ["dbias"]
        errors, eager_errors = [], []
        for name, g, e, x in zip(names, got[k:], eager[k:], exact[k:]):
            errors.append(normalized_error(g, x))
            eager_errors.append(normalized_error(e, x))
            ok = _gate(name, errors[-1], eager_errors[-1], bwd_tol, result.messages)
            result.bwd_ok = result.bwd_ok and ok
        result.bwd_err, result.eager_bwd_err = max(errors), max(eager_errors)
    return result
