// The device-side seam of the fastln kernels: what differs between nvcc and
// the SIMT runtime (csrc/simt/simt.h), which runs the same kernel source on
// the CPU. Torch-free. Kernels use
//   FASTLN_SHARED_ARRAY(T, name, count)  for  __shared__ T name[count];
//   dynamic_shared<T>()                  for  the extern __shared__ array;
//   smem_ptr<T>                          for  a pointer into shared memory.
// Under nvcc these are exactly the plain CUDA forms (so the generated code is
// unchanged); under SIMT they are checked accessors. Everything else
// (threadIdx, __syncthreads, the shuffles, rsqrtf, ...) keeps its CUDA
// spelling and comes from simt.h there.
#pragma once

#ifdef FASTLN_SIMT
#include "../simt/simt.h"
#else
#include <cuda_runtime.h>
#endif

namespace fastln {
namespace cuda {

#ifdef FASTLN_SIMT

template <typename T>
using smem_ptr = simt::SharedPtr<T>;

#define FASTLN_SHARED_ARRAY(T, name, count) \
  const ::fastln::simt::SharedPtr<T> name = \
      ::fastln::simt::static_shared<T>((count), #name)

template <typename T>
inline smem_ptr<T> dynamic_shared() {
  return simt::dynamic_shared<T>();
}

using simt::rsqrt;
using simt::rsqrtf;

#else

template <typename T>
using smem_ptr = T*;

#define FASTLN_SHARED_ARRAY(T, name, count) __shared__ T name[count]

// The block's dynamic shared memory (the size given at launch), 16-byte
// aligned for vector packs.
template <typename T>
__device__ __forceinline__ T* dynamic_shared() {
  extern __shared__ __align__(16) unsigned char fastln_smem[];
  return reinterpret_cast<T*>(fastln_smem);
}

#endif

}  // namespace cuda
}  // namespace fastln
