// The host-side seam of the fastln CUDA backend: what the launchers and the
// op entry points ask of the device, for nvcc builds (the CUDA runtime and
// torch's CUDA context) and for FASTLN_SIMT builds (the SIMT runtime's
// emulated device, csrc/simt/simt.h). The launchers themselves — the plan,
// grid sizing, the column-partials workspace, occupancy, the shared-memory
// opt-in, the alignment decisions — are the same source in both.
//
// Kernels are named by template argument (launch_kernel<K>(...)) so that the
// SIMT build can key its resource table (registers and static shared memory
// from cuobjdump of the nvcc build) by the kernel's name.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>

#ifdef FASTLN_SIMT
#include <limits>

#include "../simt/simt.h"
#else
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace fastln {
namespace cuda {

#ifdef FASTLN_SIMT

// The op library the backend registers into, and its dispatch key:
// torch.ops.fastln_simt.<op> on CPU tensors.
#define FASTLN_CUDA_OPS fastln_simt
#define FASTLN_CUDA_DISPATCH_KEY CPU

using Stream = int;  // SIMT launches are synchronous
inline Stream current_stream() { return 0; }
inline int64_t sm_count() { return simt::device().sm_count; }
inline int64_t smem_per_block_optin() {
  return simt::device().smem_per_block_optin;
}

template <auto K>
const std::string& kernel_name() {
  static const std::string name =
      simt::kernel_name_from_signature(__PRETTY_FUNCTION__);
  return name;
}

template <auto K>
int64_t static_smem() {
  return simt::kernel_resources(kernel_name<K>()).static_smem;
}
template <auto K>
int64_t max_dynamic_smem() {
  return simt::max_dynamic_smem(kernel_name<K>());
}
template <auto K>
void set_max_dynamic_smem(int64_t bytes) {
  simt::set_max_dynamic_smem(kernel_name<K>(), bytes);
}
template <auto K>
int64_t max_active_blocks_per_sm(int block_threads, size_t dynamic_smem) {
  return simt::max_active_blocks_per_sm(kernel_name<K>(), block_threads,
                                        static_cast<int64_t>(dynamic_smem));
}

// Every thread calls the kernel with its own copy of the arguments, as a
// GPU passes them.
template <auto K, typename... Args>
void launch_kernel(dim3 grid, dim3 block, size_t dynamic_smem, Stream,
                   const Args&... args) {
  simt::launch(kernel_name<K>(), grid, block,
               static_cast<int64_t>(dynamic_smem), [&] { K(args...); });
}

// Op entry points: CPU tensors, no device to select.
struct DeviceGuard {
  explicit DeviceGuard(const at::Device&) {}
};
inline bool on_backend_device(const at::Tensor& t) { return t.is_cpu(); }
constexpr const char* kBackendDevice = "CPU (fastln_simt)";

// Outputs and workspaces start as NaN, so that an element no kernel wrote
// shows in the results (a GPU's fresh memory holds whatever was there).
inline void poison(const at::Tensor& t) {
  if (t.defined() && t.numel() > 0)
    t.fill_(std::numeric_limits<double>::quiet_NaN());
}

#else

#define FASTLN_CUDA_OPS fastln
#define FASTLN_CUDA_DISPATCH_KEY CUDA

using Stream = cudaStream_t;
inline Stream current_stream() { return at::cuda::getCurrentCUDAStream(); }
inline int64_t sm_count() {
  return at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
}
inline int64_t smem_per_block_optin() {
  return static_cast<int64_t>(
      at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin);
}

template <auto K>
cudaFuncAttributes func_attributes() {
  cudaFuncAttributes attr;
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, K));
  return attr;
}
template <auto K>
int64_t static_smem() {
  return static_cast<int64_t>(func_attributes<K>().sharedSizeBytes);
}
template <auto K>
int64_t max_dynamic_smem() {
  return func_attributes<K>().maxDynamicSharedSizeBytes;
}
template <auto K>
void set_max_dynamic_smem(int64_t bytes) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(
      K, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}
template <auto K>
int64_t max_active_blocks_per_sm(int block_threads, size_t dynamic_smem) {
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &per_sm, K, block_threads, dynamic_smem));
  return per_sm;
}

template <auto K, typename... Args>
void launch_kernel(dim3 grid, dim3 block, size_t dynamic_smem, Stream stream,
                   const Args&... args) {
  // A .h file is formatted as C++, which would split the >>>.
  // clang-format off
  K<<<grid, block, dynamic_smem, stream>>>(args...);
  // clang-format on
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

using DeviceGuard = c10::cuda::CUDAGuard;
inline bool on_backend_device(const at::Tensor& t) { return t.is_cuda(); }
constexpr const char* kBackendDevice = "a CUDA device";
inline void poison(const at::Tensor&) {}

#endif

}  // namespace cuda
}  // namespace fastln
