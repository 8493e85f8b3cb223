// fastln::layer_norm under torch.autocast("cuda"): torch's policy, without
// torch's extra pass.
//
// torch puts layer_norm on CUDA autocast's float32 list: every eligible
// floating argument (CUDA, not double) is cast to float32, so float16/bfloat16
// activations give a float32 output computed from the upcast input. Here the
// 16-bit input is read as it is by the float-output kernels (out_dtype =
// float32: the same values, without writing and re-reading a float32 copy of
// the activations, and the backward saves the 16-bit input, not a float32
// copy); only 16-bit weight/bias are cast, N elements each, through
// autocast's weight cache. float32 and float64 inputs run unchanged, and an
// explicit out_dtype is obeyed as given.
//
// torch.autocast("cpu") keeps layer_norm in the input's dtype (it is on no CPU
// list), which is what the op does with no autocast kernel: nothing is
// registered for AutocastCPU.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include "layer_norm.h"

namespace fastln {
namespace {

// The arguments the op runs with under CUDA autocast.
struct AutocastArgs {
  std::optional<at::Tensor> weight, bias;
  std::optional<at::ScalarType> out_dtype;
};

AutocastArgs autocast_args(const at::Tensor& input,
                           const std::optional<at::Tensor>& weight,
                           const std::optional<at::Tensor>& bias,
                           std::optional<at::ScalarType> out_dtype) {
  const at::ScalarType in = input.scalar_type();
  const bool low_precision = in == at::kHalf || in == at::kBFloat16;
  if (out_dtype.has_value() || !(low_precision || in == at::kFloat))
    return {weight, bias, out_dtype};
  const auto as_float = [](const std::optional<at::Tensor>& t) {
    return t.has_value() ? std::optional<at::Tensor>(at::autocast::cached_cast(
                               at::kFloat, *t, c10::DeviceType::CUDA))
                         : t;
  };
  return {
      as_float(weight), as_float(bias),
      low_precision ? std::optional<at::ScalarType>(at::kFloat) : std::nullopt};
}

// fastln::layer_norm (what fastln.layer_norm calls in eager and compiled code).
at::Tensor layer_norm_autocast_cuda(const at::Tensor& input,
                                    at::IntArrayRef normalized_shape,
                                    const std::optional<at::Tensor>& weight,
                                    const std::optional<at::Tensor>& bias,
                                    double eps,
                                    std::optional<at::ScalarType> out_dtype) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(
      c10::DispatchKey::AutocastCUDA);
  const AutocastArgs a = autocast_args(input, weight, bias, out_dtype);
  return layer_norm_op().call(input, normalized_shape, a.weight, a.bias, eps,
                              a.out_dtype);
}

// fastln::layer_norm_fwd, which the torch.func path (fastln/_transforms.py)
// calls directly. Called from layer_norm above, autocast is already excluded.
std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_fwd_autocast_cuda(
    const at::Tensor& input, at::IntArrayRef normalized_shape,
    const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps,
    std::optional<at::ScalarType> out_dtype) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(
      c10::DispatchKey::AutocastCUDA);
  const AutocastArgs a = autocast_args(input, weight, bias, out_dtype);
  return layer_norm_fwd_op().call(input, normalized_shape, a.weight, a.bias,
                                  eps, a.out_dtype);
}

// fastln::rms_norm: torch puts rms_norm on CUDA autocast's float32 list too
// (its AutocastCUDA kernel casts input and weight to float32), and fastln
// does the same: the output is the float32 RMSNorm of the upcast input.
// fastln::add_norm has no autocast kernel: its output dtypes are given by
// its arguments (y in the input's dtype, h in residual_dtype).
at::Tensor rms_norm_autocast_cuda(const at::Tensor& input,
                                  at::IntArrayRef normalized_shape,
                                  const std::optional<at::Tensor>& weight,
                                  std::optional<double> eps) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastln::rms_norm", "")
          .typed<at::Tensor(const at::Tensor&, at::IntArrayRef,
                            const std::optional<at::Tensor>&,
                            std::optional<double>)>();
  c10::impl::ExcludeDispatchKeyGuard no_autocast(
      c10::DispatchKey::AutocastCUDA);
  const auto cast = [](const at::Tensor& t) {
    if (t.is_cuda())
      return at::autocast::cached_cast(at::kFloat, t, c10::DeviceType::CUDA);
    // CPU tensors come here only by an explicit redispatch (the tests of
    // this policy on a machine without a GPU): the same cast, uncached.
    const at::ScalarType dtype = t.scalar_type();
    return dtype == at::kHalf || dtype == at::kBFloat16 ? t.to(at::kFloat) : t;
  };
  return op.call(
      cast(input), normalized_shape,
      weight.has_value() ? std::optional<at::Tensor>(cast(*weight)) : weight,
      eps);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastln, AutocastCUDA, m) {
  m.impl("layer_norm", &layer_norm_autocast_cuda);
  m.impl("layer_norm_fwd", &layer_norm_fwd_autocast_cuda);
  m.impl("rms_norm", &rms_norm_autocast_cuda);
}

}  // namespace fastln
