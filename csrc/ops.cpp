// Declares the fastln ops once (backends register kernels from their own
// files; the schemas are in schemas.h) and defines the Python module
// fastln._C. The input checks shared by every backend are in checks.cpp.
#include <ATen/ATen.h>
#include <torch/extension.h>
#include <torch/library.h>

#include "layer_norm.h"
#include "schemas.h"

namespace fastln {

// The schemas are the one contract of every backend: the kernel ops take
// theirs from schemas.h, which the SIMT library shares.
TORCH_LIBRARY(fastln, m) {
  // The op fastln.layer_norm calls: the forward with its autograd
  // (csrc/autograd.cpp); the two below are its kernels, one per direction.
  m.def(
      "layer_norm(Tensor input, int[] normalized_shape, Tensor? weight=None, "
      "Tensor? bias=None, float eps=1e-05, ScalarType? out_dtype=None) -> "
      "Tensor");
  m.def(kLayerNormFwdSchema);
  m.def(kLayerNormBwdSchema);
  // fastln.rms_norm and fastln.add_layer_norm / add_rms_norm: the same
  // kernel family (RMSNorm and the fused add are policies of it), each op
  // with its autograd (autograd.cpp) over its kernel ops. eps=None: the
  // machine epsilon of the accumulation dtype, as torch's rms_norm takes it.
  m.def(
      "rms_norm(Tensor input, int[] normalized_shape, Tensor? weight=None, "
      "float? eps=None) -> Tensor");
  m.def(kRmsNormFwdSchema);
  m.def(kRmsNormBwdSchema);
  m.def(
      "add_norm(Tensor input, Tensor residual, int[] normalized_shape, "
      "Tensor? weight=None, Tensor? bias=None, float? eps=None, "
      "bool rms=False, ScalarType? residual_dtype=None) -> (Tensor, Tensor)");
  m.def(kAddNormFwdSchema);
  m.def(kAddNormBwdSchema);
}

const c10::TypedOperatorHandle<LayerNormSignature>& layer_norm_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastln::layer_norm", "")
                             .typed<LayerNormSignature>();
  return op;
}

const c10::TypedOperatorHandle<LayerNormFwdSignature>& layer_norm_fwd_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastln::layer_norm_fwd", "")
                             .typed<LayerNormFwdSignature>();
  return op;
}

const c10::TypedOperatorHandle<AddNormSignature>& add_norm_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastln::add_norm", "")
                             .typed<AddNormSignature>();
  return op;
}

}  // namespace fastln

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastln native kernels; the ops live in torch.ops.fastln";
  m.def(
      "cuda_built",
      [] {
#ifdef FASTLN_WITH_CUDA
        return true;
#else
        return false;
#endif
      },
      "Whether this build of fastln contains the CUDA kernels.");
  // fastln.layer_norm's eager path: the op called from C++, which skips the
  // schema-driven argument parsing of torch.ops (about 1 us of a 3 us call on
  // small inputs). Dispatch, autograd and Python modes are those of the op;
  // traced code (torch.compile) calls torch.ops.fastln.layer_norm instead.
  m.def(
      "layer_norm",
      [](const at::Tensor& input, std::vector<int64_t> normalized_shape,
         const std::optional<at::Tensor>& weight,
         const std::optional<at::Tensor>& bias, double eps) {
        return fastln::layer_norm_op().call(input, normalized_shape, weight,
                                            bias, eps, std::nullopt);
      },
      py::arg("input"), py::arg("normalized_shape"), py::arg("weight"),
      py::arg("bias"), py::arg("eps"));
  // fastln.add_layer_norm / add_rms_norm's eager path, for the same reason.
  m.def(
      "add_norm",
      [](const at::Tensor& input, const at::Tensor& residual,
         std::vector<int64_t> normalized_shape,
         const std::optional<at::Tensor>& weight,
         const std::optional<at::Tensor>& bias, std::optional<double> eps,
         bool rms, at::ScalarType residual_dtype) {
        return fastln::add_norm_op().call(input, residual, normalized_shape,
                                          weight, bias, eps, rms,
                                          residual_dtype);
      },
      py::arg("input"), py::arg("residual"), py::arg("normalized_shape"),
      py::arg("weight"), py::arg("bias"), py::arg("eps"), py::arg("rms"),
      py::arg("residual_dtype"));
  m.def("cpu_isa", &fastln::cpu_isa,
        "The CPU row kernels in use: 'avx512', 'avx2' or 'base'.");
  m.def("cpu_stream_bytes", &fastln::cpu_stream_bytes,
        "Output bytes from which the CPU kernels write with non-temporal "
        "stores at the current thread count (INT64_MAX: never).");
}
