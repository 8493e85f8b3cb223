// The copies of the CPU row kernels as the rest of the CPU backend sees them.
// Each copy (kernels.h compiled for one instruction set, with its host loops,
// host_loops.h) is a translation unit of its own, copy_<isa>.cpp, so that the
// copies compile in parallel: in one file they were by far the longest compile
// of the build (still running after 17 minutes beside another compile on the
// 2-core CI machine, with -g), as three about 11 minutes each, two at a time.
// layer_norm_cpu.cpp picks the widest copy the processor runs and calls it
// through a CpuCopy.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__)
// The AVX2 and AVX-512 copies exist (copy_avx2.cpp, copy_avx512.cpp).
#define FASTLN_HAVE_X86_KERNELS 1
#endif

namespace fastln {
namespace cpu {

// Whether outputs of `bytes` are written with non-temporal stores
// (layer_norm_cpu.cpp).
bool stream_output(int64_t bytes);

// The forward over M > 0 rows of N > 0 elements (host_loops.h run_forward).
using ForwardFn = void (*)(const at::Tensor& x, const at::Tensor& residual,
                           const at::Tensor& h, const at::Tensor& w,
                           const at::Tensor& b, double eps, int64_t M,
                           int64_t N, const at::Tensor& out,
                           const at::Tensor& mean, const at::Tensor& rstd);
// The backward over M > 0 rows of N > 0 elements (host_loops.h run_backward).
using BackwardFn = void (*)(const at::Tensor& dy, const at::Tensor& x,
                            const at::Tensor& grad_h, const at::Tensor& mean,
                            const at::Tensor& rstd, const at::Tensor& w,
                            int64_t M, int64_t N, const at::Tensor& dx,
                            const at::Tensor& dw, const at::Tensor& db);

// One copy's entry points, each indexed by kRms (0: layer norm, 1: RMSNorm).
struct CpuCopy {
  const char* name;  // "base", "avx2", "avx512"
  ForwardFn forward[2];
  BackwardFn backward[2];
};

extern const CpuCopy kCopyBase;
#ifdef FASTLN_HAVE_X86_KERNELS
extern const CpuCopy kCopyAvx2;
extern const CpuCopy kCopyAvx512;
#endif

}  // namespace cpu
}  // namespace fastln
