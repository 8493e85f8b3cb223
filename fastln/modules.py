"""``fastln.LayerNorm``, ``fastln.RMSNorm``, ``fastln.replace_layernorm`` and
``fastln.replace_norms``."""

from __future__ import annotations

import torch
from torch import nn

from .functional import _rms_weight, layer_norm, low_precision_layer_norm, rms_norm

__all__ = ["LayerNorm", "LowPrecisionLayerNorm", "RMSNorm", "replace_layernorm", "replace_norms"]


class LayerNorm(nn.LayerNorm):
    """Drop-in :class:`torch.nn.LayerNorm` running fastln's kernels.

    It subclasses ``nn.LayerNorm`` and changes only ``forward``: the constructor
    (``normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, device=None,
    dtype=None``), the parameters and their initialization, the ``state_dict``
    keys and the ``repr`` are torch's own, and ``isinstance(m, nn.LayerNorm)``
    still holds, so code that treats LayerNorms specially (weight-decay groups,
    wrapping policies) keeps working.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def __prepare_scriptable__(self) -> nn.Module:
        # torch.jit.script compiles the module this returns, and puts it in the
        # place of this one in the parent module (torch's design): the same
        # parameters and attributes, a subclass whose forward TorchScript can
        # compile (it calls fastln's op, which a saved script keeps; `import
        # fastln` registers the op on loading) and which in eager runs this
        # forward. This one stays free of a per-call is_scripting() test.
        scriptable = _ScriptableLayerNorm.__new__(_ScriptableLayerNorm)
        scriptable.__dict__.update(self.__dict__)
        return scriptable


class _ScriptableLayerNorm(LayerNorm):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return torch.ops.fastln.layer_norm(
                input, self.normalized_shape, self.weight, self.bias, self.eps
            )
        return self._eager_forward(input)

    @torch.jit.unused
    def _eager_forward(self, input: torch.Tensor) -> torch.Tensor:
        return super().forward(input)

    def __prepare_scriptable__(self) -> nn.Module:
        return self


class LowPrecisionLayerNorm(LayerNorm):
    """:class:`LayerNorm` whose output, under ``torch.autocast``, has the autocast
    dtype (see :func:`fastln.low_precision_layer_norm`); outside autocast it is
    :class:`LayerNorm`. An explicit opt-in: torch's policy, which
    ``LayerNorm`` follows, gives float32 under ``torch.autocast("cuda")``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return low_precision_layer_norm(
            input, self.normalized_shape, self.weight, self.bias, self.eps
        )

    def __prepare_scriptable__(self) -> nn.Module:
        # Not the scriptable LayerNorm, which would drop the low-precision policy:
        # TorchScript compiles this forward or says why it cannot.
        return self


def replace_layernorm(module: nn.Module, *, low_precision: bool = False) -> nn.Module:
    """Turns every ``torch.nn.LayerNorm`` in ``module`` (itself included) into a
    ``fastln.LayerNorm``, in place, and returns ``module``.

    The modules keep their identity, parameters (the same ``Parameter`` objects,
    so an optimizer built before the swap still updates them), device, dtype,
    hooks and training mode: only their class changes, which is sound because
    ``fastln.LayerNorm`` adds no state to ``nn.LayerNorm``. Subclasses of
    ``nn.LayerNorm`` are left alone, since they may override ``forward``.
    ``low_precision=True`` makes them :class:`LowPrecisionLayerNorm` instead.
    """
    cls = LowPrecisionLayerNorm if low_precision else LayerNorm
    for sub in module.modules():
        if type(sub) is nn.LayerNorm:
            sub.__class__ = cls
    return module


class RMSNorm(nn.RMSNorm):
    """Drop-in :class:`torch.nn.RMSNorm` running fastln's kernels.

    Like :class:`LayerNorm`, it changes only ``forward``: constructor
    (``normalized_shape, eps=None, elementwise_affine=True, device=None,
    dtype=None``), parameters, ``state_dict`` keys and ``repr`` are torch's own,
    and ``isinstance(m, nn.RMSNorm)`` holds.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return rms_norm(input, self.normalized_shape, self.weight, self.eps)

    def __prepare_scriptable__(self) -> nn.Module:
        # As LayerNorm's: TorchScript compiles a subclass that calls the op.
        scriptable = _ScriptableRMSNorm.__new__(_ScriptableRMSNorm)
        scriptable.__dict__.update(self.__dict__)
        return scriptable


class _ScriptableRMSNorm(RMSNorm):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            weight = _rms_weight(input, self.weight)
            return torch.ops.fastln.rms_norm(input, self.normalized_shape, weight, self.eps)
        return self._eager_forward(input)

    @torch.jit.unused
    def _eager_forward(self, input: torch.Tensor) -> torch.Tensor:
        return super().forward(input)

    def __prepare_scriptable__(self) -> nn.Module:
        return self


def replace_norms(module: nn.Module, *, low_precision: bool = False) -> nn.Module:
    """:func:`replace_layernorm` for every norm fastln has: each exact
    ``torch.nn.LayerNorm`` becomes a ``fastln.LayerNorm`` (``LowPrecisionLayerNorm``
    with ``low_precision=True``) and each exact ``torch.nn.RMSNorm`` a
    ``fastln.RMSNorm``, in place, keeping identity, parameters, hooks and mode;
    subclasses are left alone. Returns ``module``."""
    replace_layernorm(module, low_precision=low_precision)
    for sub in module.modules():
        if type(sub) is nn.RMSNorm:
            sub.__class__ = RMSNorm
    return module
