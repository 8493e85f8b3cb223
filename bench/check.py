"""Correctness gate: every shape is checked before it is timed.

fastln.layer_norm and torch eager (forward, and backward through autograd) run
on the same inputs, and both are compared with torch evaluated in float64 on
those inputs. fastln passes when its error is within the dtype's tolerance or
no worse than torch eager's own: torch's CPU bfloat16 backward, for one,
accumulates dweight/dbias in a way that misses the exact answer by several
percent, and fastln must not be failed for being more accurate than that.

The error measure is max |result - exact| divided by max |exact| of that
tensor: dweight/dbias are sums over M rows and grow with M, so absolute
tolerances would not fit all shapes. Tolerances are about one or two ulps of
the output dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

import fastln

from .impls import Inputs, _leaves

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
    """(y,) or (y, dx, dweight, dbias) of fn on fresh leaves of inp."""
    if not backward:
        with torch.no_grad():
            return (fn(inp.x, inp.shape, inp.weight, inp.bias, inp.eps),)  # type: ignore[operator]
    x, w, b = _leaves(inp)
    y = fn(x, inp.shape, w, b, inp.eps)  # type: ignore[operator]
    return (y, *torch.autograd.grad(y, (x, w, b), inp.grad_out))


def _gate(name: str, err: float, eager_err: float, tol: float, messages: list[str]) -> bool:
    if err <= tol or err <= 1.5 * eager_err:
        return True
    messages.append(f"{name}: error {err:.3g} > tolerance {tol:g} (torch eager: {eager_err:.3g})")
    return False


def check(inp: Inputs, modes: list[str]) -> CheckResult:
    result = CheckResult()
    backward = any(m != "fwd" for m in modes)
    fwd_tol, bwd_tol = TOLERANCE[inp.x.dtype]
    exact_inp = replace(
        inp,
        x=inp.x.double(),
        weight=inp.weight.double(),
        bias=inp.bias.double(),
        grad_out=inp.grad_out.double(),
    )
    exact = run(F.layer_norm, exact_inp, backward)
    eager = run(F.layer_norm, inp, backward)
    try:
        got = run(fastln.layer_norm, inp, backward)
    except Exception as exc:
        result.messages.append(f"fastln raised {type(exc).__name__}: {exc}")
        return result
    if got[0].dtype != inp.x.dtype:
        result.messages.append(f"output dtype {got[0].dtype}, expected {inp.x.dtype}")
        return result
    result.fwd_err = normalized_error(got[0], exact[0])
    result.eager_fwd_err = normalized_error(eager[0], exact[0])
    result.fwd_ok = _gate("output", result.fwd_err, result.eager_fwd_err, fwd_tol, result.messages)
    if backward:
        result.bwd_ok = True
        errors, eager_errors = [], []
        for name, g, e, x in zip(("dx", "dweight", "dbias"), got[1:], eager[1:], exact[1:]):
            errors.append(normalized_error(g, x))
            eager_errors.append(normalized_error(e, x))
            ok = _gate(name, errors[-1], eager_errors[-1], bwd_tol, result.messages)
            result.bwd_ok = result.bwd_ok and ok
        result.bwd_err, result.eager_bwd_err = max(errors), max(eager_errors)
    return result
