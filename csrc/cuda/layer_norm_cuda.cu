// CUDA backend of the fastln ops: the entry points registered with
// TORCH_LIBRARY_IMPL(fastln, CUDA) (and, in the SIMT build, with
// TORCH_LIBRARY_IMPL(fastln_simt, CPU): the same code on CPU tensors, see
// backend.h). They run the shared checks of ops.cpp,
// allocate the outputs (from the caching allocator, stream-ordered, so the
// ops are safe under CUDA graph capture), handle the empty cases exactly as
// the CPU backend does, and call the launchers of layer_norm_fwd.cu and
// layer_norm_bwd.cu on the current stream of the input's device. The ops:
// layer_norm_fwd/bwd, rms_norm_fwd/bwd and the fused residual add
// add_norm_fwd/bwd (schemas.h).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>
#include <limits>
#include <optional>
#include <tuple>

#include "../layer_norm.h"
#include "backend.h"
#include "layer_norm_cuda.h"

namespace fastln {
namespace cuda {
namespace {

// dtype shared by weight and bias (the checks guarantee they agree), or the
// input's dtype when both are absent.
at::ScalarType param_dtype(const at::Tensor& input, const at::Tensor& w,
                           const at::Tensor& b) {
  if (w.defined()) return w.scalar_type();
  if (b.defined()) return b.scalar_type();
  return input.scalar_type();
}

// dtype of the given weight/bias, Float when there is none (nothing to cast).
at::ScalarType weight_or_bias_dtype(const std::optional<at::Tensor>& w,
                                    const std::optional<at::Tensor>& b) {
  if (w.has_value() && w->defined()) return w->scalar_type();
  if (b.has_value() && b->defined()) return b->scalar_type();
  return at::kFloat;
}

void check_backend_input(const at::Tensor& input) {
  // The dispatcher picks this kernel when any argument is a CUDA tensor; the
  // shared checks already require every other tensor on the input's device.
  TORCH_CHECK(on_backend_device(input),
              "fastln layer_norm: expected all tensors on one device, but "
              "got input on ",
              input.device(), " with other tensors on ", kBackendDevice);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_fwd_cuda(
    const at::Tensor& input, at::IntArrayRef normalized_shape,
    const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps,
    std::optional<at::ScalarType> out_dtype) {
  const RowShape rows =
      check_forward_inputs(input, normalized_shape, weight, bias);
  check_backend_input(input);
  const at::ScalarType out_type = output_dtype(input, out_dtype);
  if (out_type != input.scalar_type() &&
      weight_or_bias_dtype(weight, bias) != at::kFloat) {
    // The float-output kernels read float32 weight/bias (torch's autocast
    // has cast them already): cast 16-bit ones, N elements.
    return layer_norm_fwd_cuda(input, normalized_shape, as_float(weight),
                               as_float(bias), eps, out_type);
  }
  const int64_t M = rows.M;
  const int64_t N = rows.N;
  const DeviceGuard guard(input.device());
  auto [out, mean, rstd, done] =
      allocate_forward(input, normalized_shape, rows, out_type);
  if (done) return {out, mean, rstd};
  poison(out);
  poison(mean);
  poison(rstd);
  const at::Tensor x = input.contiguous();
  const at::Tensor w = contiguous_or_undefined(weight);
  const at::Tensor b = contiguous_or_undefined(bias);
  launch_layer_norm_fwd(x, w, b, param_dtype(input, w, b), eps, M, N, out, mean,
                        rstd);
  return {out, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& input,
    at::IntArrayRef normalized_shape, const at::Tensor& mean,
    const at::Tensor& rstd, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, std::array<bool, 3> output_mask) {
  const RowShape rows = check_backward_inputs(grad_out, input, normalized_shape,
                                              mean, rstd, weight, bias);
  check_backend_input(input);
  const at::ScalarType param_in = weight_or_bias_dtype(weight, bias);
  if (grad_out.scalar_type() != input.scalar_type() && param_in != at::kFloat) {
    // float32 grad_out (the float-output forward) with 16-bit weight/bias:
    // the kernels take float32 ones; dweight/dbias rounded back at the end.
    auto [dx, dw, db] =
        layer_norm_bwd_cuda(grad_out, input, normalized_shape, mean, rstd,
                            as_float(weight), as_float(bias), output_mask);
    return {dx, dw.defined() ? dw.to(param_in) : dw,
            db.defined() ? db.to(param_in) : db};
  }
  const int64_t M = rows.M;
  const int64_t N = rows.N;
  const DeviceGuard guard(input.device());
  const at::Tensor w_in = contiguous_or_undefined(weight);
  const at::Tensor b_in = contiguous_or_undefined(bias);
  const bool want_dx = output_mask[0];
  const bool want_dw = output_mask[1] && w_in.defined();
  const bool want_db = output_mask[2] && b_in.defined();
  at::Tensor dx =
      want_dx ? at::empty(input.sizes(), input.options()) : at::Tensor();
  at::Tensor dw =
      want_dw ? at::empty(w_in.sizes(), w_in.options()) : at::Tensor();
  at::Tensor db =
      want_db ? at::empty(b_in.sizes(), b_in.options()) : at::Tensor();
  if (M == 0 || N == 0) {
    // No rows: the column sums are empty sums. No columns: nothing to do.
    if (want_dw) dw.zero_();
    if (want_db) db.zero_();
    return {dx, dw, db};
  }
  if (!want_dx && !want_dw && !want_db) return {dx, dw, db};
  for (const at::Tensor* t : {&dx, &dw, &db}) poison(*t);
  const at::Tensor x = input.contiguous();
  const at::Tensor dy = grad_out.contiguous();
  launch_layer_norm_bwd(dy, x, mean.contiguous(), rstd.contiguous(), w_in,
                        param_dtype(input, w_in, b_in), M, N, dx, dw, db);
  return {dx, dw, db};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_fwd_cuda(
    const at::Tensor& input, at::IntArrayRef normalized_shape,
    const std::optional<at::Tensor>& weight, double eps) {
  const RowShape rows = check_forward_inputs(input, normalized_shape, weight,
                                             std::nullopt, "rms_norm");
  check_backend_input(input);
  const DeviceGuard guard(input.device());
  // allocate_forward's mean is not returned; its N == 0 rstd is NaN, as for
  // layer_norm.
  auto [out, mean, rstd, done] =
      allocate_forward(input, normalized_shape, rows, input.scalar_type());
  if (done) return {out, rstd};
  poison(out);
  poison(rstd);
  const at::Tensor x = input.contiguous();
  const at::Tensor w = contiguous_or_undefined(weight);
  launch_rms_norm_fwd(x, w, param_dtype(input, w, at::Tensor()), eps, rows.M,
                      rows.N, out, rstd);
  return {out, rstd};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& input,
    at::IntArrayRef normalized_shape, const at::Tensor& rstd,
    const std::optional<at::Tensor>& weight, std::array<bool, 2> output_mask) {
  const RowShape rows = check_rms_backward_inputs(
      grad_out, input, normalized_shape, rstd, weight);
  check_backend_input(input);
  const DeviceGuard guard(input.device());
  const at::Tensor w = contiguous_or_undefined(weight);
  const bool want_dx = output_mask[0];
  const bool want_dw = output_mask[1] && w.defined();
  at::Tensor dx =
      want_dx ? at::empty(input.sizes(), input.options()) : at::Tensor();
  at::Tensor dw = want_dw ? at::empty(w.sizes(), w.options()) : at::Tensor();
  if (rows.M == 0 || rows.N == 0) {
    if (want_dw) dw.zero_();
    return {dx, dw};
  }
  if (!want_dx && !want_dw) return {dx, dw};
  poison(dx);
  poison(dw);
  launch_rms_norm_bwd(grad_out.contiguous(), input.contiguous(),
                      rstd.contiguous(), w, param_dtype(input, w, at::Tensor()),
                      rows.M, rows.N, dx, dw);
  return {dx, dw};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_norm_fwd_cuda(
    const at::Tensor& input, const at::Tensor& residual,
    at::IntArrayRef normalized_shape, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps, bool rms,
    at::ScalarType residual_dtype) {
  const RowShape rows = check_add_norm_inputs(
      input, residual, normalized_shape, weight, bias, rms, residual_dtype);
  check_backend_input(input);
  const DeviceGuard guard(input.device());
  auto [out, mean, rstd, done] =
      allocate_forward(input, normalized_shape, rows, input.scalar_type());
  at::Tensor h =
      at::empty(input.sizes(), input.options().dtype(residual_dtype));
  // RMSNorm has no mean: an empty one of the statistics' dtype (schemas.h).
  if (rms) mean = at::empty({0}, mean.options());
  // No rows or no columns: h and out have no elements either.
  if (done) return {out, h, mean, rstd};
  poison(out);
  poison(h);
  poison(mean);
  poison(rstd);
  const at::Tensor x = input.contiguous();
  const at::Tensor r = residual.contiguous();
  const at::Tensor w = contiguous_or_undefined(weight);
  const at::Tensor b = contiguous_or_undefined(bias);
  launch_add_norm_fwd(x, r, w, b, param_dtype(input, w, b), eps, rms, rows.M,
                      rows.N, out, h, rms ? at::Tensor() : mean, rstd);
  return {out, h, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> add_norm_bwd_cuda(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_h,
    const at::Tensor& h, at::IntArrayRef normalized_shape,
    const at::Tensor& mean, const at::Tensor& rstd,
    const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, bool rms,
    std::array<bool, 3> output_mask) {
  const RowShape rows = check_add_norm_backward_inputs(
      grad_out, grad_h, h, normalized_shape, mean, rstd, weight, bias, rms);
  check_backend_input(h);
  const DeviceGuard guard(h.device());
  const at::Tensor w = contiguous_or_undefined(weight);
  const at::Tensor b = contiguous_or_undefined(bias);
  const bool want_dh = output_mask[0];
  const bool want_dw = output_mask[1] && w.defined();
  const bool want_db = output_mask[2] && b.defined();
  at::Tensor dh = want_dh ? at::empty(h.sizes(), h.options()) : at::Tensor();
  at::Tensor dw = want_dw ? at::empty(w.sizes(), w.options()) : at::Tensor();
  at::Tensor db = want_db ? at::empty(b.sizes(), b.options()) : at::Tensor();
  if (rows.M == 0 || rows.N == 0) {
    // dh has no elements; the column sums are empty sums.
    if (want_dw) dw.zero_();
    if (want_db) db.zero_();
    return {dh, dw, db};
  }
  if (!want_dh && !want_dw && !want_db) return {dh, dw, db};
  for (const at::Tensor* t : {&dh, &dw, &db}) poison(*t);
  // The parameters' dtype defaults to the output's (grad_out's).
  launch_add_norm_bwd(grad_out.contiguous(), contiguous_or_undefined(grad_h),
                      h.contiguous(), rms ? at::Tensor() : mean.contiguous(),
                      rstd.contiguous(), w, param_dtype(grad_out, w, b), rms,
                      rows.M, rows.N, dh, dw, db);
  return {dh, dw, db};
}

TORCH_LIBRARY_IMPL(FASTLN_CUDA_OPS, FASTLN_CUDA_DISPATCH_KEY, m) {
  m.impl("layer_norm_fwd", &layer_norm_fwd_cuda);
  m.impl("layer_norm_bwd", &layer_norm_bwd_cuda);
  m.impl("rms_norm_fwd", &rms_norm_fwd_cuda);
  m.impl("rms_norm_bwd", &rms_norm_bwd_cuda);
  m.impl("add_norm_fwd", &add_norm_fwd_cuda);
  m.impl("add_norm_bwd", &add_norm_bwd_cuda);
}

}  // namespace cuda
}  // namespace fastln
