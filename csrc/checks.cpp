// The input checks and output allocation shared by every backend of the
// fastln ops (declared in layer_norm.h). Compiled into fastln._C and into
// the SIMT module fastln._simt.
#include <ATen/ATen.h>

#include <limits>
#include <sstream>

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

void check_param(const at::Tensor& input, at::IntArrayRef normalized_shape,
                 const at::Tensor& param, const char* name,
                 at::ScalarType expected_dtype) {
  TORCH_CHECK(param.sizes() == normalized_shape, "Expected ", name,
              " to be of same shape as normalized_shape, but got ", name,
              " of shape ", param.sizes(),
              " and normalized_shape = ", normalized_shape);
  TORCH_CHECK(param.device() == input.device(), "Expected ", name,
              " to be on the same device as input (", input.device(),
              "), but got ", name, " on ", param.device());
  const at::ScalarType input_dtype = input.scalar_type();
  const bool low_precision = is_low_precision(input_dtype);
  TORCH_CHECK(param.scalar_type() == input_dtype ||
                  (low_precision && param.scalar_type() == at::kFloat),
              "Expected ", name, " to have the input's dtype (", input_dtype,
              low_precision ? ") or Float" : ")", ", but got ", name,
              " of dtype ", param.scalar_type());
  TORCH_CHECK(param.scalar_type() == expected_dtype,
              "Expected weight and bias to have the same dtype, but got "
              "weight of dtype ",
              expected_dtype, " and bias of dtype ", param.scalar_type());
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
                              const std::optional<at::Tensor>& bias) {
  const int64_t ndim = static_cast<int64_t>(normalized_shape.size());
  TORCH_CHECK(ndim >= 1,
              "Expected normalized_shape to be at least 1-dimensional, i.e., "
              "containing at least one element, but got normalized_shape = ",
              normalized_shape);
  const int64_t input_ndim = input.dim();
  if (input_ndim < ndim ||
      input.sizes().slice(input_ndim - ndim) != normalized_shape) {
    std::stringstream ss;
    ss << "Given normalized_shape=" << normalized_shape
       << ", expected input with shape [*";
    for (const int64_t size : normalized_shape) ss << ", " << size;
    ss << "], but got input of size" << input.sizes();
    TORCH_CHECK(false, ss.str());
  }
  TORCH_CHECK_NOT_IMPLEMENTED(is_supported_dtype(input.scalar_type()),
                              "fastln layer_norm: not implemented for '",
                              input.scalar_type(),
                              "'; supported dtypes are Float, Double, Half "
                              "and BFloat16");
  const bool has_weight = weight.has_value() && weight->defined();
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_weight)
    check_param(input, normalized_shape, *weight, "weight",
                weight->scalar_type());
  if (has_bias)
    check_param(input, normalized_shape, *bias, "bias",
                has_weight ? weight->scalar_type() : bias->scalar_type());

  int64_t N = 1;
  for (const int64_t size : normalized_shape) N *= size;
  int64_t M = 1;
  for (int64_t d = 0; d < input_ndim - ndim; ++d) M *= input.size(d);
  return {M, N};
}

RowShape check_backward_inputs(const at::Tensor& grad_out,
                               const at::Tensor& input,
                               at::IntArrayRef normalized_shape,
                               const at::Tensor& mean, const at::Tensor& rstd,
                               const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& bias) {
  const RowShape rows =
      check_forward_inputs(input, normalized_shape, weight, bias);
  TORCH_CHECK(grad_out.sizes() == input.sizes(),
              "Expected grad_out to have the input's shape ", input.sizes(),
              ", but got ", grad_out.sizes());
  const bool float_grad = is_low_precision(input.scalar_type()) &&
                          grad_out.scalar_type() == at::kFloat;
  TORCH_CHECK(grad_out.scalar_type() == input.scalar_type() || float_grad,
              "Expected grad_out to have the input's dtype ",
              input.scalar_type(),
              is_low_precision(input.scalar_type()) ? " or Float" : "",
              ", but got ", grad_out.scalar_type());
  TORCH_CHECK(grad_out.device() == input.device(),
              "Expected grad_out to be on the input's device ", input.device(),
              ", but got ", grad_out.device());
  const at::ScalarType acc = stats_dtype(input.scalar_type());
  for (const at::Tensor* stat : {&mean, &rstd}) {
    const char* name = stat == &mean ? "mean" : "rstd";
    TORCH_CHECK(stat->numel() == rows.M, "Expected ", name, " to have ", rows.M,
                " elements (one per row), but got ", stat->numel());
    TORCH_CHECK(stat->scalar_type() == acc, "Expected ", name,
                " to have dtype ", acc, ", but got ", stat->scalar_type());
    TORCH_CHECK(stat->device() == input.device(), "Expected ", name,
                " to be on the input's device ", input.device(), ", but got ",
                stat->device());
  }
  return rows;
}

}  // namespace fastln
