// The input checks and output allocation shared by every backend of the
// fastln ops (declared in layer_norm.h). Compiled into fastln._C and into
// the SIMT module fastln._simt.
#include <ATen/ATen.h>

#include <limits>
#include <sstream>
#include <string_view>

#include "layer_norm.h"

namespace fastln {
namespace {

bool is_low_precision(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16;
}

bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf ||
         t == at::kBFloat16;
}

// A weight or bias of an op whose values have dtype `value_dtype` (the
// input's; for add_norm_bwd, the output's) on `device`.
void check_param(at::Device device, at::ScalarType value_dtype,
                 at::IntArrayRef normalized_shape, const at::Tensor& param,
                 const char* name, at::ScalarType expected_dtype) {
  TORCH_CHECK(param.sizes() == normalized_shape, "Expected ", name,
              " to be of same shape as normalized_shape, but got ", name,
              " of shape ", param.sizes(),
              " and normalized_shape = ", normalized_shape);
  TORCH_CHECK(param.device() == device, "Expected ", name,
              " to be on the same device as input (", device, "), but got ",
              name, " on ", param.device());
  const bool low_precision = is_low_precision(value_dtype);
  TORCH_CHECK(param.scalar_type() == value_dtype ||
                  (low_precision && param.scalar_type() == at::kFloat),
              "Expected ", name, " to have the input's dtype (", value_dtype,
              low_precision ? ") or Float" : ")", ", but got ", name,
              " of dtype ", param.scalar_type());
  TORCH_CHECK(param.scalar_type() == expected_dtype,
              "Expected weight and bias to have the same dtype, but got "
              "weight of dtype ",
              expected_dtype, " and bias of dtype ", param.scalar_type());
}

void check_params(at::Device device, at::ScalarType value_dtype,
                  at::IntArrayRef normalized_shape,
                  const std::optional<at::Tensor>& weight,
                  const std::optional<at::Tensor>& bias) {
  const bool has_weight = weight.has_value() && weight->defined();
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_weight)
    check_param(device, value_dtype, normalized_shape, *weight, "weight",
                weight->scalar_type());
  if (has_bias)
    check_param(device, value_dtype, normalized_shape, *bias, "bias",
                has_weight ? weight->scalar_type() : bias->scalar_type());
}

// normalized_shape against the input's trailing dims, and the input's dtype;
// the row view. torch's messages and exception types.
RowShape check_rows(const at::Tensor& input, at::IntArrayRef normalized_shape,
                    const char* op_name,
                    const std::optional<at::Tensor>& weight = std::nullopt) {
  const int64_t ndim = static_cast<int64_t>(normalized_shape.size());
  TORCH_CHECK(ndim >= 1,
              "Expected normalized_shape to be at least 1-dimensional, i.e., "
              "containing at least one element, but got normalized_shape = ",
              normalized_shape);
  const int64_t input_ndim = input.dim();
  // torch's rms_norm checks the weight's shape first, raises ValueError for
  // too few input dims and spells the expected shape [*4, 2]; layer_norm
  // spells it [*, 4, 2].
  const bool rms_style =
      std::string_view(op_name).find("rms") != std::string_view::npos;
  if (rms_style) {
    if (weight.has_value() && weight->defined())
      TORCH_CHECK(weight->sizes() == normalized_shape,
                  "Expected weight to be of same shape as normalized_shape, "
                  "but got weight of shape ",
                  weight->sizes(),
                  " and normalized_shape = ", normalized_shape);
    TORCH_CHECK_VALUE(input_ndim >= ndim, "Input tensor must have at least ",
                      ndim, " dimensions, but got ", input_ndim);
  }
  if (input_ndim < ndim ||
      input.sizes().slice(input_ndim - ndim) != normalized_shape) {
    std::stringstream ss;
    ss << "Given normalized_shape=" << normalized_shape
       << ", expected input with shape [*";
    for (size_t i = 0; i < normalized_shape.size(); ++i)
      ss << (rms_style ? (i == 0 ? "" : ", ") : ", ") << normalized_shape[i];
    ss << "], but got input of size" << input.sizes();
    TORCH_CHECK(false, ss.str());
  }
  TORCH_CHECK_NOT_IMPLEMENTED(is_supported_dtype(input.scalar_type()),
                              "fastln ", op_name, ": not implemented for '",
                              input.scalar_type(),
                              "'; supported dtypes are Float, Double, Half "
                              "and BFloat16");
  int64_t N = 1;
  for (const int64_t size : normalized_shape) N *= size;
  int64_t M = 1;
  for (int64_t d = 0; d < input_ndim - ndim; ++d) M *= input.size(d);
  return {M, N};
}

// A tensor that must have `like`'s shape, `dtype` and device.
void check_like(const at::Tensor& t, const char* name, const at::Tensor& like,
                const char* like_name, at::ScalarType dtype) {
  TORCH_CHECK(t.sizes() == like.sizes(), "Expected ", name, " to have the ",
              like_name, "'s shape ", like.sizes(), ", but got ", t.sizes());
  TORCH_CHECK(t.device() == like.device(), "Expected ", name, " to be on the ",
              like_name, "'s device ", like.device(), ", but got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, "Expected ", name, " to have dtype ",
              dtype, ", but got ", t.scalar_type());
}

// mean/rstd: one value per row (numel 0 allowed for an absent mean), in the
// accumulation dtype, on the device.
void check_stat(const at::Tensor& stat, const char* name, int64_t M,
                at::ScalarType acc, at::Device device, bool may_be_empty) {
  TORCH_CHECK(stat.numel() == M || (may_be_empty && stat.numel() == 0),
              "Expected ", name, " to have ", M,
              " elements (one per row), but got ", stat.numel());
  TORCH_CHECK(stat.scalar_type() == acc, "Expected ", name, " to have dtype ",
              acc, ", but got ", stat.scalar_type());
  TORCH_CHECK(stat.device() == device, "Expected ", name,
              " to be on the input's device ", device, ", but got ",
              stat.device());
}

// grad_out of an output whose dtype is the input's (or float32 for
// half/bfloat16 input, the float-output forward).
void check_grad_out(const at::Tensor& grad_out, const at::Tensor& input) {
  const at::ScalarType in = input.scalar_type();
  const bool float_grad =
      is_low_precision(in) && grad_out.scalar_type() == at::kFloat;
  TORCH_CHECK(grad_out.sizes() == input.sizes(),
              "Expected grad_out to have the input's shape ", input.sizes(),
              ", but got ", grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == in || float_grad,
              "Expected grad_out to have the input's dtype ", in,
              is_low_precision(in) ? " or Float" : "", ", but got ",
              grad_out.scalar_type());
  TORCH_CHECK(grad_out.device() == input.device(),
              "Expected grad_out to be on the input's device ", input.device(),
              ", but got ", grad_out.device());
}

}  // namespace

at::ScalarType stats_dtype(at::ScalarType input_dtype) {
  return input_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

std::vector<int64_t> stats_shape(const at::Tensor& input,
                                 at::IntArrayRef normalized_shape) {
  const int64_t axis =
      input.dim() - static_cast<int64_t>(normalized_shape.size());
  std::vector<int64_t> shape(input.sizes().begin(),
                             input.sizes().begin() + axis);
  shape.resize(input.dim(), 1);
  return shape;
}

ForwardOutputs allocate_forward(const at::Tensor& input,
                                at::IntArrayRef normalized_shape, RowShape rows,
                                at::ScalarType out_dtype) {
  const at::ScalarType acc = stats_dtype(input.scalar_type());
  const auto stat_sizes = stats_shape(input, normalized_shape);
  const auto options = input.options();
  ForwardOutputs o{at::empty(input.sizes(), options.dtype(out_dtype)),
                   at::empty(stat_sizes, options.dtype(acc)),
                   at::empty(stat_sizes, options.dtype(acc)),
                   rows.M == 0 || rows.N == 0};
  if (rows.M != 0 && rows.N == 0) {
    // torch's convention for empty rows: mean 0, rstd 1/sqrt(0/0) = NaN.
    o.mean.zero_();
    o.rstd.fill_(std::numeric_limits<double>::quiet_NaN());
  }
  return o;
}

at::ScalarType output_dtype(const at::Tensor& input,
                            std::optional<at::ScalarType> out_dtype) {
  const at::ScalarType in = input.scalar_type();
  if (!out_dtype.has_value() || *out_dtype == in) return in;
  TORCH_CHECK(is_low_precision(in) && *out_dtype == at::kFloat,
              "fastln layer_norm: out_dtype must be the input's dtype (", in,
              ")", is_low_precision(in) ? " or Float" : "", ", but got ",
              *out_dtype);
  return *out_dtype;
}

std::optional<at::Tensor> as_float(const std::optional<at::Tensor>& t) {
  if (!t.has_value() || !t->defined()) return std::nullopt;
  return t->to(at::kFloat);
}

at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->contiguous() : at::Tensor();
}

RowShape check_forward_inputs(const at::Tensor& input,
                              at::IntArrayRef normalized_shape,
                              const std::optional<at::Tensor>& weight,
                              const std::optional<at::Tensor>& bias,
                              const char* op_name) {
  const RowShape rows = check_rows(input, normalized_shape, op_name, weight);
  check_params(input.device(), input.scalar_type(), normalized_shape, weight,
               bias);
  return rows;
}

RowShape check_backward_inputs(const at::Tensor& grad_out,
                               const at::Tensor& input,
                               at::IntArrayRef normalized_shape,
                               const at::Tensor& mean, const at::Tensor& rstd,
                               const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& bias) {
  const RowShape rows =
      check_forward_inputs(input, normalized_shape, weight, bias);
  check_grad_out(grad_out, input);
  const at::ScalarType acc = stats_dtype(input.scalar_type());
  check_stat(mean, "mean", rows.M, acc, input.device(), false);
  check_stat(rstd, "rstd", rows.M, acc, input.device(), false);
  return rows;
}

RowShape check_rms_backward_inputs(const at::Tensor& grad_out,
                                   const at::Tensor& input,
                                   at::IntArrayRef normalized_shape,
                                   const at::Tensor& rstd,
                                   const std::optional<at::Tensor>& weight) {
  const RowShape rows = check_forward_inputs(input, normalized_shape, weight,
                                             std::nullopt, "rms_norm");
  check_grad_out(grad_out, input);
  TORCH_CHECK(grad_out.scalar_type() == input.scalar_type(),
              "Expected grad_out to have the input's dtype ",
              input.scalar_type(), ", but got ", grad_out.scalar_type());
  check_stat(rstd, "rstd", rows.M, stats_dtype(input.scalar_type()),
             input.device(), false);
  return rows;
}

RowShape check_add_norm_inputs(const at::Tensor& input,
                               const at::Tensor& residual,
                               at::IntArrayRef normalized_shape,
                               const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& bias, bool rms,
                               at::ScalarType residual_dtype) {
  const char* op = rms ? "add_rms_norm" : "add_layer_norm";
  TORCH_CHECK(!rms || !(bias.has_value() && bias->defined()), "fastln ", op,
              ": RMSNorm has no bias");
  const RowShape rows =
      check_forward_inputs(input, normalized_shape, weight, bias, op);
  const at::ScalarType in = input.scalar_type();
  TORCH_CHECK(residual_dtype == in ||
                  (is_low_precision(in) && residual_dtype == at::kFloat),
              "fastln ", op, ": residual_dtype must be the input's dtype (", in,
              ")", is_low_precision(in) ? " or Float" : "", ", but got ",
              residual_dtype);
  TORCH_CHECK(
      residual.scalar_type() == in || residual.scalar_type() == residual_dtype,
      "fastln ", op, ": expected residual to have the input's dtype (", in,
      ") or residual_dtype (", residual_dtype, "), but got ",
      residual.scalar_type());
  check_like(residual, "residual", input, "input", residual.scalar_type());
  return rows;
}

RowShape check_add_norm_backward_inputs(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_h,
    const at::Tensor& h, at::IntArrayRef normalized_shape,
    const at::Tensor& mean, const at::Tensor& rstd,
    const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, bool rms) {
  const char* op = rms ? "add_rms_norm" : "add_layer_norm";
  TORCH_CHECK(!rms || !(bias.has_value() && bias->defined()), "fastln ", op,
              ": RMSNorm has no bias");
  const RowShape rows = check_rows(h, normalized_shape, op);
  // grad_out has the output's dtype, the forward input's: h's, or
  // half/bfloat16 under a float32 h.
  const at::ScalarType out = grad_out.scalar_type();
  const at::ScalarType h_type = h.scalar_type();
  TORCH_CHECK(out == h_type || (h_type == at::kFloat && is_low_precision(out)),
              "Expected grad_out to have h's dtype (", h_type, ")",
              h_type == at::kFloat ? " or Half/BFloat16" : "", ", but got ",
              out);
  check_like(grad_out, "grad_out", h, "h", out);
  if (grad_h.has_value() && grad_h->defined())
    check_like(*grad_h, "grad_h", h, "h", h_type);
  check_params(h.device(), out, normalized_shape, weight, bias);
  const at::ScalarType acc = stats_dtype(h_type);
  check_stat(mean, "mean", rows.M, acc, h.device(), rms);
  check_stat(rstd, "rstd", rows.M, acc, h.device(), false);
  return rows;
}

}  // namespace fastln
