// The schemas of the fastln kernel ops, one place for every library that
// declares them: torch.ops.fastln (ops.cpp) and torch.ops.fastln_simt (the
// SIMT build of the CUDA kernels, csrc/simt/module.cpp), which must match.
#pragma once

namespace fastln {

inline constexpr const char* kLayerNormFwdSchema =
    "layer_norm_fwd(Tensor input, int[] normalized_shape, Tensor? weight, "
    "Tensor? bias, float eps, ScalarType? out_dtype=None) -> "
    "(Tensor, Tensor, Tensor)";
inline constexpr const char* kLayerNormBwdSchema =
    "layer_norm_bwd(Tensor grad_out, Tensor input, int[] normalized_shape, "
    "Tensor mean, Tensor rstd, Tensor? weight, Tensor? bias, "
    "bool[3] output_mask) -> (Tensor, Tensor, Tensor)";

// RMSNorm: layer_norm without the mean (and without bias). rstd as
// layer_norm_fwd's. output_mask: (input, weight).
inline constexpr const char* kRmsNormFwdSchema =
    "rms_norm_fwd(Tensor input, int[] normalized_shape, Tensor? weight, "
    "float eps) -> (Tensor, Tensor)";
inline constexpr const char* kRmsNormBwdSchema =
    "rms_norm_bwd(Tensor grad_out, Tensor input, int[] normalized_shape, "
    "Tensor rstd, Tensor? weight, bool[2] output_mask) -> (Tensor, Tensor)";

// The fused residual add: h = input + residual (in residual_dtype), then
// out = norm(h) (layer norm, or RMSNorm when rms) in the input's dtype.
// Returns (out, h, mean, rstd); for rms, mean has no elements. The backward
// returns (dh, dweight, dbias) with dh = grad_h + d out/d h . grad_out in
// h's dtype: the gradient of input and of residual alike. output_mask:
// (dh, weight, bias).
inline constexpr const char* kAddNormFwdSchema =
    "add_norm_fwd(Tensor input, Tensor residual, int[] normalized_shape, "
    "Tensor? weight, Tensor? bias, float eps, bool rms, "
    "ScalarType residual_dtype) -> (Tensor, Tensor, Tensor, Tensor)";
inline constexpr const char* kAddNormBwdSchema =
    "add_norm_bwd(Tensor grad_out, Tensor? grad_h, Tensor h, "
    "int[] normalized_shape, Tensor mean, Tensor rstd, Tensor? weight, "
    "Tensor? bias, bool rms, bool[3] output_mask) -> (Tensor, Tensor, Tensor)";

}  // namespace fastln
