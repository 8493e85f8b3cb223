// fastln._simt: the CUDA kernels of fastln run by the SIMT runtime on the
// CPU. Importing it registers torch.ops.fastln_simt.<op> for every CUDA
// kernel op of fastln, with the schemas of torch.ops.fastln (schemas.h),
// on CPU tensors; the kernels are registered by the SIMT builds of
// csrc/cuda/*.cu (csrc/simt/*_simt.cpp).
#include <torch/extension.h>
#include <torch/library.h>

#include <string>

#include "../schemas.h"
#include "simt.h"

TORCH_LIBRARY(fastln_simt, m) {
  m.def(fastln::kLayerNormFwdSchema);
  m.def(fastln::kLayerNormBwdSchema);
  m.def(fastln::kRmsNormFwdSchema);
  m.def(fastln::kRmsNormBwdSchema);
  m.def(fastln::kAddNormFwdSchema);
  m.def(fastln::kAddNormBwdSchema);
}

PYBIND11_MODULE(_simt, m) {
  namespace simt = fastln::simt;
  m.doc() =
      "fastln's CUDA kernels executed on the CPU by the SIMT runtime; the ops "
      "live in torch.ops.fastln_simt";
  m.def(
      "configure",
      [](const std::string& device, uint64_t schedule_seed) {
        simt::configure(device, schedule_seed);
      },
      py::arg("device") = "h100", py::arg("schedule_seed") = 0,
      "Selects the emulated device ('h100' or 'a100') and the schedule seed "
      "(0: threads in index order between synchronization points; other "
      "values: a pseudo-random order drawn from the seed).");
  m.def(
      "device",
      [] {
        const simt::DeviceDesc& d = simt::device();
        py::dict out;
        out["name"] = d.name;
        out["arch"] = d.arch;
        out["sm_count"] = d.sm_count;
        out["smem_per_block_optin"] = d.smem_per_block_optin;
        out["schedule_seed"] = simt::schedule_seed();
        return out;
      },
      "The emulated device and schedule seed in use.");
  m.def(
      "launches",
      [] {
        py::list out;
        for (const simt::LaunchRecord& r : simt::launches()) {
          py::dict d;
          d["kernel"] = r.kernel;
          d["grid"] = py::make_tuple(r.grid.x, r.grid.y, r.grid.z);
          d["block"] = py::make_tuple(r.block.x, r.block.y, r.block.z);
          d["dynamic_smem"] = r.dynamic_smem;
          out.append(d);
        }
        return out;
      },
      "The kernel launches since the last clear_launches(), in order.");
  m.def("clear_launches", &simt::clear_launches);
}
