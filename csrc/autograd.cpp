// fastln::layer_norm, the op behind fastln.layer_norm: the forward kernel
// plus its autograd, both in C++.
//
// Why C++ and not a Python torch.autograd.Function: on small inputs a Python
// Function costs tens of microseconds per forward + backward (measured 50-80
// us on a 2-core CPU, where the kernels themselves take 5-15 us), which made
// fastln slower than torch's native layer_norm on every small shape. Here the
// autograd node is a C++ node and the backward calls the backward op directly.
//
// Registrations:
//   CompositeExplicitAutograd: runs layer_norm_fwd and returns its output
//     (every backend that implements layer_norm_fwd, so CPU and CUDA alike).
//   Autograd: the same forward, saving mean/rstd for layer_norm_bwd.
// The fake (meta) kernel is registered from Python (fastln/_ops.py).
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "layer_norm.h"

namespace fastln {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_forward(
    const at::Tensor& input, at::IntArrayRef normalized_shape,
    const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps,
    std::optional<at::ScalarType> out_dtype) {
  return layer_norm_fwd_op().call(input, normalized_shape, weight, bias, eps,
                                  out_dtype);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_backward(
    const at::Tensor& grad_out, const at::Tensor& input,
    at::IntArrayRef normalized_shape, const at::Tensor& mean,
    const at::Tensor& rstd, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, std::array<bool, 3> output_mask) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastln::layer_norm_bwd", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, at::IntArrayRef,
              const at::Tensor&, const at::Tensor&,
              const std::optional<at::Tensor>&,
              const std::optional<at::Tensor>&, std::array<bool, 3>)>();
  return op.call(grad_out, input, normalized_shape, mean, rstd, weight, bias,
                 output_mask);
}

std::optional<at::Tensor> optional_of(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// Gradients that are themselves differentiable, for backward with
// create_graph=True. The fused backward kernel is not differentiable, so the
// forward is recomputed from differentiable ATen ops (two-pass statistics in
// the accumulation dtype, as the kernels do) and differentiated with
// create_graph=True; double backward is rare enough that its speed does not
// matter, its correctness does (gradgradcheck in tests/test_grad.py).
variable_list composite_grads(const at::Tensor& grad_out,
                              const at::Tensor& input,
                              at::IntArrayRef normalized_shape,
                              const at::Tensor& weight, const at::Tensor& bias,
                              double eps, at::ScalarType out_dtype,
                              std::array<bool, 3> needs) {
  const at::ScalarType acc = stats_dtype(input.scalar_type());
  std::vector<int64_t> dims;
  for (int64_t d = -static_cast<int64_t>(normalized_shape.size()); d < 0; ++d)
    dims.push_back(d);
  const at::Tensor x = input.to(acc);
  const at::Tensor centered = x - x.mean(dims, /*keepdim=*/true);
  at::Tensor y = centered * at::rsqrt(centered.square().mean(dims, true) + eps);
  if (weight.defined()) y = y * weight.to(acc);
  if (bias.defined()) y = y + bias.to(acc);
  y = y.to(out_dtype);

  const std::array<const at::Tensor*, 3> tensors = {&input, &weight, &bias};
  variable_list wanted;
  for (size_t i = 0; i < 3; ++i)
    if (needs[i] && tensors[i]->defined()) wanted.push_back(*tensors[i]);
  const variable_list grads =
      torch::autograd::grad({y}, wanted, {grad_out}, /*retain_graph=*/true,
                            /*create_graph=*/true, /*allow_unused=*/true);
  variable_list result(3);
  size_t next = 0;
  for (size_t i = 0; i < 3; ++i)
    if (needs[i] && tensors[i]->defined()) result[i] = grads[next++];
  return result;
}

class LayerNormFunction : public torch::autograd::Function<LayerNormFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            at::IntArrayRef normalized_shape,
                            const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& bias, double eps,
                            std::optional<at::ScalarType> out_dtype) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, mean, rstd] =
        call_forward(input, normalized_shape, weight, bias, eps, out_dtype);
    ctx->save_for_backward({input, weight.value_or(at::Tensor()),
                            bias.value_or(at::Tensor()), mean, rstd});
    ctx->saved_data["normalized_shape"] = normalized_shape.vec();
    ctx->saved_data["eps"] = eps;
    return out;
  }

  static variable_list backward(AutogradContext* ctx,
                                variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& input = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& bias = saved[2];
    const std::vector<int64_t> normalized_shape =
        ctx->saved_data["normalized_shape"].toIntVector();
    const double eps = ctx->saved_data["eps"].toDouble();
    // The output's dtype (out_dtype's), which autograd gives its gradient.
    const at::ScalarType out_dtype = grad_outputs[0].scalar_type();
    // needs_input_grad counts the tensor arguments present: input, then
    // weight and bias when given.
    size_t edge = 1;
    const bool need_dw = weight.defined() && ctx->needs_input_grad(edge++);
    const bool need_db = bias.defined() && ctx->needs_input_grad(edge);
    const std::array<bool, 3> needs = {ctx->needs_input_grad(0), need_dw,
                                       need_db};
    variable_list grads(3);
    if (at::GradMode::is_enabled()) {
      // backward(create_graph=True): the gradients must carry a graph.
      grads = composite_grads(grad_outputs[0], input, normalized_shape, weight,
                              bias, eps, out_dtype, needs);
    } else {
      auto [dx, dw, db] = call_backward(
          grad_outputs[0], input, normalized_shape, saved[3], saved[4],
          optional_of(weight), optional_of(bias), needs);
      grads = {dx, dw, db};
    }
    // One gradient per forward argument: input, normalized_shape, weight,
    // bias, eps, out_dtype.
    return {grads[0], at::Tensor(), grads[1],
            grads[2], at::Tensor(), at::Tensor()};
  }
};

at::Tensor layer_norm_autograd(const at::Tensor& input,
                               at::IntArrayRef normalized_shape,
                               const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& bias,
                               double eps,
                               std::optional<at::ScalarType> out_dtype) {
  const auto requires_grad = [](const std::optional<at::Tensor>& t) {
    return t.has_value() && t->defined() && t->requires_grad();
  };
  if (!at::GradMode::is_enabled() ||
      !(input.requires_grad() || requires_grad(weight) ||
        requires_grad(bias))) {
    // Nothing to differentiate (inference, torch.no_grad, or no input that
    // requires grad): the forward kernel without the autograd node, whose
    // setup (the node, its saved tensors and attributes) costs more than
    // the kernel on small rows.
    at::AutoDispatchBelowADInplaceOrView guard;
    return std::get<0>(
        call_forward(input, normalized_shape, weight, bias, eps, out_dtype));
  }
  return LayerNormFunction::apply(input, normalized_shape, weight, bias, eps,
                                  out_dtype);
}

at::Tensor layer_norm_no_grad(const at::Tensor& input,
                              at::IntArrayRef normalized_shape,
                              const std::optional<at::Tensor>& weight,
                              const std::optional<at::Tensor>& bias, double eps,
                              std::optional<at::ScalarType> out_dtype) {
  return std::get<0>(
      call_forward(input, normalized_shape, weight, bias, eps, out_dtype));
}

}  // namespace

TORCH_LIBRARY_IMPL(fastln, CompositeExplicitAutograd, m) {
  m.impl("layer_norm", &layer_norm_no_grad);
}

TORCH_LIBRARY_IMPL(fastln, Autograd, m) {
  m.impl("layer_norm", &layer_norm_autograd);
}

}  // namespace fastln
