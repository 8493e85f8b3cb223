// Host launchers of the fastln CUDA kernels, called by the op entry points of
// layer_norm_cuda.cu after the shared checks and the allocation of outputs.
// Each launcher lives in its own translation unit (layer_norm_fwd.cu,
// layer_norm_bwd.cu), so that the two kernel families compile in parallel.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace fastln {
namespace cuda {

// Forward over M > 0 rows of N > 0 elements. x is contiguous; w and b are
// contiguous or undefined and share `param_dtype` (x's dtype, or float for
// half/bfloat16 x). Writes y (x's shape; x's dtype, or float for half/bfloat16
// x, whose w and b are then float or absent) and mean/rstd (M values of the
// accumulation dtype). Runs on the current stream of x's device.
void launch_layer_norm_fwd(const at::Tensor& x, const at::Tensor& w,
                           const at::Tensor& b, at::ScalarType param_dtype,
                           double eps, int64_t M, int64_t N,
                           const at::Tensor& y, const at::Tensor& mean,
                           const at::Tensor& rstd);

// Backward over M > 0 rows of N > 0 elements. dy, x, mean, rstd are
// contiguous; w is contiguous or undefined. dx, dw, db are the outputs to
// write, each undefined when not wanted (at least one is defined); dw/db
// have `param_dtype`. dy has x's dtype, or float for half/bfloat16 x (whose w
// is then float or absent).
void launch_layer_norm_bwd(const at::Tensor& dy, const at::Tensor& x,
                           const at::Tensor& mean, const at::Tensor& rstd,
                           const at::Tensor& w, at::ScalarType param_dtype,
                           int64_t M, int64_t N, const at::Tensor& dx,
                           const at::Tensor& dw, const at::Tensor& db);

// RMSNorm forward over M > 0 rows of N > 0 elements: y (x's dtype) and rstd
// (M values of the accumulation dtype). w as in launch_layer_norm_fwd.
void launch_rms_norm_fwd(const at::Tensor& x, const at::Tensor& w,
                         at::ScalarType param_dtype, double eps, int64_t M,
                         int64_t N, const at::Tensor& y,
                         const at::Tensor& rstd);

// RMSNorm backward: dx (x's dtype) and dw (param_dtype), each undefined when
// not wanted (at least one is defined). dy has x's dtype.
void launch_rms_norm_bwd(const at::Tensor& dy, const at::Tensor& x,
                         const at::Tensor& rstd, const at::Tensor& w,
                         at::ScalarType param_dtype, int64_t M, int64_t N,
                         const at::Tensor& dx, const at::Tensor& dw);

// The fused residual add and norm over M > 0 rows of N > 0 elements: writes
// h = x + residual in h's dtype (x's, or float for half/bfloat16 x; residual
// has x's or h's dtype), y = norm(h) in x's dtype, and rstd, plus mean for
// layer norm (rms: mean is not written; b is then undefined). w and b are
// contiguous or undefined and share `param_dtype` (x's, or float for 16-bit
// x).
void launch_add_norm_fwd(const at::Tensor& x, const at::Tensor& residual,
                         const at::Tensor& w, const at::Tensor& b,
                         at::ScalarType param_dtype, double eps, bool rms,
                         int64_t M, int64_t N, const at::Tensor& y,
                         const at::Tensor& h, const at::Tensor& mean,
                         const at::Tensor& rstd);

// Its backward: dh = grad_h + the norm's input gradient (h's dtype; grad_h
// undefined when absent), dw/db (param_dtype). dy has the forward's output
// dtype (h's, or half/bfloat16 under a float h), mean is unused for rms.
// dh, dw, db are undefined when not wanted (at least one is defined).
void launch_add_norm_bwd(const at::Tensor& dy, const at::Tensor& grad_h,
                         const at::Tensor& h, const at::Tensor& mean,
                         const at::Tensor& rstd, const at::Tensor& w,
                         at::ScalarType param_dtype, bool rms, int64_t M,
                         int64_t N, const at::Tensor& dh, const at::Tensor& dw,
                         const at::Tensor& db);

}  // namespace cuda
}  // namespace fastln
