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
//
// Each node calls its forward and backward ops below the autograd keys
// (AutoDispatchBelowADInplaceOrView). The backward ops have no autograd
// kernel of their own: called from above, they would go through torch's
// boxed autograd fallback, which boxes every argument only to redispatch,
// although grad mode is off there anyway (callgrind, 1x128 float32: the
// layer_norm node's backward 27.7k -> 24.4k instructions, of about 248k for
// a forward + backward through autograd.grad).
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <limits>

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

// The norm of x (already in the accumulation dtype) from differentiable ATen
// ops: layer norm with two-pass statistics, or RMSNorm; then the affine.
at::Tensor composite_norm(const at::Tensor& x, at::IntArrayRef normalized_shape,
                          const at::Tensor& weight, const at::Tensor& bias,
                          double eps, bool rms) {
  std::vector<int64_t> dims;
  for (int64_t d = -static_cast<int64_t>(normalized_shape.size()); d < 0; ++d)
    dims.push_back(d);
  at::Tensor y;
  if (rms) {
    y = x * at::rsqrt(x.square().mean(dims, /*keepdim=*/true) + eps);
  } else {
    const at::Tensor centered = x - x.mean(dims, /*keepdim=*/true);
    y = centered * at::rsqrt(centered.square().mean(dims, true) + eps);
  }
  if (weight.defined()) y = y * weight.to(x.scalar_type());
  if (bias.defined()) y = y + bias.to(x.scalar_type());
  return y;
}

// d(outputs)/d(tensors) . grads with create_graph=True, for the tensors whose
// gradient is wanted (others, and absent tensors, get undefined gradients);
// outputs without a gradient are left out.
variable_list differentiable_grads(
    const variable_list& outputs, const variable_list& grads,
    const std::vector<const at::Tensor*>& tensors,
    const std::vector<bool>& needs) {
  variable_list outs, gouts, wanted;
  for (size_t i = 0; i < outputs.size(); ++i)
    if (grads[i].defined()) {
      outs.push_back(outputs[i]);
      gouts.push_back(grads[i]);
    }
  for (size_t i = 0; i < tensors.size(); ++i)
    if (needs[i] && tensors[i]->defined()) wanted.push_back(*tensors[i]);
  variable_list result(tensors.size());
  if (wanted.empty() || outs.empty()) return result;
  const variable_list got =
      torch::autograd::grad(outs, wanted, gouts, /*retain_graph=*/true,
                            /*create_graph=*/true, /*allow_unused=*/true);
  size_t next = 0;
  for (size_t i = 0; i < tensors.size(); ++i)
    if (needs[i] && tensors[i]->defined()) result[i] = got[next++];
  return result;
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
                              std::array<bool, 3> needs, bool rms = false) {
  const at::ScalarType acc = stats_dtype(input.scalar_type());
  const at::Tensor y =
      composite_norm(input.to(acc), normalized_shape, weight, bias, eps, rms)
          .to(out_dtype);
  return differentiable_grads({y}, {grad_out}, {&input, &weight, &bias},
                              {needs[0], needs[1], needs[2]});
}

// eps=None of rms_norm: the machine epsilon of the accumulation dtype (what
// torch's rms_norm takes: float's for half/bfloat16 input, not the input
// dtype's own).
double default_rms_eps(at::ScalarType dtype) {
  return dtype == at::kDouble ? std::numeric_limits<double>::epsilon()
                              : std::numeric_limits<float>::epsilon();
}

bool requires_grad(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() && t->requires_grad();
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
      at::AutoDispatchBelowADInplaceOrView guard;
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

// fastln::rms_norm: rms_norm_fwd with its autograd, as layer_norm's.
std::tuple<at::Tensor, at::Tensor> call_rms_forward(
    const at::Tensor& input, at::IntArrayRef normalized_shape,
    const std::optional<at::Tensor>& weight, double eps) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastln::rms_norm_fwd", "")
                             .typed<std::tuple<at::Tensor, at::Tensor>(
                                 const at::Tensor&, at::IntArrayRef,
                                 const std::optional<at::Tensor>&, double)>();
  return op.call(input, normalized_shape, weight, eps);
}

class RmsNormFunction : public torch::autograd::Function<RmsNormFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            at::IntArrayRef normalized_shape,
                            const std::optional<at::Tensor>& weight,
                            double eps) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, rstd] = call_rms_forward(input, normalized_shape, weight, eps);
    ctx->save_for_backward({input, weight.value_or(at::Tensor()), rstd});
    ctx->saved_data["normalized_shape"] = normalized_shape.vec();
    ctx->saved_data["eps"] = eps;
    return out;
  }

  static variable_list backward(AutogradContext* ctx,
                                variable_list grad_outputs) {
    static const auto bwd_op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("fastln::rms_norm_bwd", "")
            .typed<std::tuple<at::Tensor, at::Tensor>(
                const at::Tensor&, const at::Tensor&, at::IntArrayRef,
                const at::Tensor&, const std::optional<at::Tensor>&,
                std::array<bool, 2>)>();
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& input = saved[0];
    const at::Tensor& weight = saved[1];
    const std::vector<int64_t> normalized_shape =
        ctx->saved_data["normalized_shape"].toIntVector();
    const double eps = ctx->saved_data["eps"].toDouble();
    const bool need_dx = ctx->needs_input_grad(0);
    const bool need_dw = weight.defined() && ctx->needs_input_grad(1);
    at::Tensor dx, dw;
    if (at::GradMode::is_enabled()) {
      const variable_list g = composite_grads(
          grad_outputs[0], input, normalized_shape, weight, at::Tensor(), eps,
          input.scalar_type(), {need_dx, need_dw, false}, /*rms=*/true);
      dx = g[0];
      dw = g[1];
    } else {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(dx, dw) =
          bwd_op.call(grad_outputs[0], input, normalized_shape, saved[2],
                      optional_of(weight), {need_dx, need_dw});
    }
    // input, normalized_shape, weight, eps.
    return {dx, at::Tensor(), dw, at::Tensor()};
  }
};

at::Tensor rms_norm_autograd(const at::Tensor& input,
                             at::IntArrayRef normalized_shape,
                             const std::optional<at::Tensor>& weight,
                             std::optional<double> eps) {
  const double e = eps.value_or(default_rms_eps(input.scalar_type()));
  if (!at::GradMode::is_enabled() ||
      !(input.requires_grad() || requires_grad(weight))) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return std::get<0>(call_rms_forward(input, normalized_shape, weight, e));
  }
  return RmsNormFunction::apply(input, normalized_shape, weight, e);
}

at::Tensor rms_norm_no_grad(const at::Tensor& input,
                            at::IntArrayRef normalized_shape,
                            const std::optional<at::Tensor>& weight,
                            std::optional<double> eps) {
  return std::get<0>(
      call_rms_forward(input, normalized_shape, weight,
                       eps.value_or(default_rms_eps(input.scalar_type()))));
}

// fastln::add_norm: add_norm_fwd with its autograd. Its two outputs y and h
// both carry gradients; the backward kernel turns them into the one
// gradient of input and residual (dh), cast to each one's dtype.
using AddNormFwdResult =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

AddNormFwdResult call_add_forward(const at::Tensor& input,
                                  const at::Tensor& residual,
                                  at::IntArrayRef normalized_shape,
                                  const std::optional<at::Tensor>& weight,
                                  const std::optional<at::Tensor>& bias,
                                  double eps, bool rms,
                                  at::ScalarType residual_dtype) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastln::add_norm_fwd", "")
          .typed<AddNormFwdResult(const at::Tensor&, const at::Tensor&,
                                  at::IntArrayRef,
                                  const std::optional<at::Tensor>&,
                                  const std::optional<at::Tensor>&, double,
                                  bool, at::ScalarType)>();
  return op.call(input, residual, normalized_shape, weight, bias, eps, rms,
                 residual_dtype);
}

double add_norm_eps(const at::Tensor& input, std::optional<double> eps,
                    bool rms) {
  return eps.value_or(rms ? default_rms_eps(input.scalar_type()) : 1e-5);
}

class AddNormFunction : public torch::autograd::Function<AddNormFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& residual,
                               at::IntArrayRef normalized_shape,
                               const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& bias,
                               double eps, bool rms,
                               at::ScalarType residual_dtype) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, h, mean, rstd] =
        call_add_forward(input, residual, normalized_shape, weight, bias, eps,
                         rms, residual_dtype);
    // y's and h's gradients stay undefined when unused (no zeros to add).
    ctx->set_materialize_grads(false);
    // h = input + residual does not depend on weight/bias: like torch's sum,
    // it requires no grad unless input or residual does.
    if (!input.requires_grad() && !residual.requires_grad())
      ctx->mark_non_differentiable({h});
    ctx->save_for_backward({h, weight.value_or(at::Tensor()),
                            bias.value_or(at::Tensor()), mean, rstd});
    ctx->saved_data["normalized_shape"] = normalized_shape.vec();
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["rms"] = rms;
    ctx->saved_data["input_dtype"] = input.scalar_type();
    ctx->saved_data["residual_dtype"] = residual.scalar_type();
    return {out, h};
  }

  static variable_list backward(AutogradContext* ctx,
                                variable_list grad_outputs) {
    static const auto bwd_op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("fastln::add_norm_bwd", "")
            .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                const at::Tensor&, const std::optional<at::Tensor>&,
                const at::Tensor&, at::IntArrayRef, const at::Tensor&,
                const at::Tensor&, const std::optional<at::Tensor>&,
                const std::optional<at::Tensor>&, bool, std::array<bool, 3>)>();
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& h = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& bias = saved[2];
    const std::vector<int64_t> normalized_shape =
        ctx->saved_data["normalized_shape"].toIntVector();
    const double eps = ctx->saved_data["eps"].toDouble();
    const bool rms = ctx->saved_data["rms"].toBool();
    const auto input_dtype = ctx->saved_data["input_dtype"].toScalarType();
    const auto res_dtype = ctx->saved_data["residual_dtype"].toScalarType();
    const at::Tensor& gy = grad_outputs[0];
    const at::Tensor& gh = grad_outputs[1];
    // needs_input_grad counts the tensor arguments present: input, residual,
    // then weight and bias when given.
    size_t edge = 2;
    const bool need_x = ctx->needs_input_grad(0);
    const bool need_res = ctx->needs_input_grad(1);
    const bool need_dw = weight.defined() && ctx->needs_input_grad(edge++);
    const bool need_db = bias.defined() && ctx->needs_input_grad(edge);
    at::Tensor dh, dw, db;
    if (!gy.defined()) {
      dh = gh;  // y unused: h's gradient alone, nothing for weight/bias
    } else if (at::GradMode::is_enabled()) {
      // Differentiable gradients: the norm recomputed from h with ATen ops.
      // h is this node's own output, saved with its history, so the graph of
      // dh reaches input and residual (through this node) as well as
      // weight, bias and the incoming gradients. The inner grad must not run
      // this node (it is running; re-entering it deadlocks on its lock): h
      // is asked for as an input, where the engine stops, and weight/bias
      // through aliases, which no path through this node reaches.
      const auto alias = [](const at::Tensor& t) {
        return t.defined() ? t.view_as(t) : t;
      };
      const at::Tensor w = alias(weight);
      const at::Tensor b = alias(bias);
      const at::Tensor y = composite_norm(h.to(stats_dtype(h.scalar_type())),
                                          normalized_shape, w, b, eps, rms)
                               .to(input_dtype);
      const variable_list g = differentiable_grads(
          {y}, {gy}, {&h, &w, &b}, {need_x || need_res, need_dw, need_db});
      dh = g[0].defined() && gh.defined() ? g[0] + gh : g[0];
      dw = g[1];
      db = g[2];
    } else {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(dh, dw, db) =
          bwd_op.call(gy, optional_of(gh), h, normalized_shape, saved[3],
                      saved[4], optional_of(weight), optional_of(bias), rms,
                      {need_x || need_res, need_dw, need_db});
    }
    const auto as = [&](bool need, at::ScalarType dtype) {
      return need && dh.defined() ? dh.to(dtype) : at::Tensor();
    };
    // input, residual, normalized_shape, weight, bias, eps, rms,
    // residual_dtype.
    return {as(need_x, input_dtype),
            as(need_res, res_dtype),
            at::Tensor(),
            dw,
            db,
            at::Tensor(),
            at::Tensor(),
            at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> add_norm_autograd(
    const at::Tensor& input, const at::Tensor& residual,
    at::IntArrayRef normalized_shape, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, std::optional<double> eps, bool rms,
    std::optional<at::ScalarType> residual_dtype) {
  const double e = add_norm_eps(input, eps, rms);
  const at::ScalarType rd = residual_dtype.value_or(input.scalar_type());
  if (!at::GradMode::is_enabled() ||
      !(input.requires_grad() || residual.requires_grad() ||
        requires_grad(weight) || requires_grad(bias))) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, h, mean, rstd] = call_add_forward(
        input, residual, normalized_shape, weight, bias, e, rms, rd);
    return {out, h};
  }
  const variable_list out = AddNormFunction::apply(
      input, residual, normalized_shape, weight, bias, e, rms, rd);
  return {out[0], out[1]};
}

std::tuple<at::Tensor, at::Tensor> add_norm_no_grad(
    const at::Tensor& input, const at::Tensor& residual,
    at::IntArrayRef normalized_shape, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, std::optional<double> eps, bool rms,
    std::optional<at::ScalarType> residual_dtype) {
  auto [out, h, mean, rstd] =
      call_add_forward(input, residual, normalized_shape, weight, bias,
                       add_norm_eps(input, eps, rms), rms,
                       residual_dtype.value_or(input.scalar_type()));
  return {out, h};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastln, CompositeExplicitAutograd, m) {
  m.impl("layer_norm", &layer_norm_no_grad);
  m.impl("rms_norm", &rms_norm_no_grad);
  m.impl("add_norm", &add_norm_no_grad);
}

TORCH_LIBRARY_IMPL(fastln, Autograd, m) {
  m.impl("layer_norm", &layer_norm_autograd);
  m.impl("rms_norm", &rms_norm_autograd);
  m.impl("add_norm", &add_norm_autograd);
}

}  // namespace fastln
