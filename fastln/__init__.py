"""fastln: a drop-in torch.nn.LayerNorm with hand-written CUDA and C++ kernels."""

from ._ops import cpu_isa, cuda_built
from .functional import layer_norm
from .modules import LayerNorm, replace_layernorm

__all__ = [
    "LayerNorm",
    "cpu_isa",
    "cuda_built",
    "layer_norm",
    "replace_layernorm",
]
__version__ = "0.1.0"
