// The body of copy_base.cpp, copy_avx2.cpp and copy_avx512.cpp: one copy of
// the row kernels (kernel_copies.h, the one FASTLN_CPU_COPY selects: 0
// baseline, 1 AVX2 + FMA + F16C, 2 AVX-512), its host loops (host_loops.h) and
// its CpuCopy (copies.h). On a target without the x86 copies, copy_avx2.cpp
// and copy_avx512.cpp compile to nothing.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "../layer_norm.h"
#include "copies.h"

#if defined(__x86_64__)
// The SSE2 (baseline) intrinsics, and the F16C, AVX2 and AVX-512 ones,
// usable inside functions compiled for them (kernel_copies.h's target
// pragmas) while the rest of the file stays baseline.
#include <immintrin.h>
#endif

#if FASTLN_CPU_COPY == 0 || defined(FASTLN_HAVE_X86_KERNELS)
namespace fastln {
namespace cpu {

#include "kernel_copies.h"

#if FASTLN_CPU_COPY == 0
#define FASTLN_HOST_NS host_base
#define FASTLN_KERNELS_NS isa_base
#define FASTLN_COPY_NAME "base"
#define FASTLN_COPY_VAR kCopyBase
#elif FASTLN_CPU_COPY == 1
#define FASTLN_HOST_NS host_avx2
#define FASTLN_KERNELS_NS isa_avx2
#define FASTLN_COPY_NAME "avx2"
#define FASTLN_COPY_VAR kCopyAvx2
#else
#define FASTLN_HOST_NS host_avx512
#define FASTLN_KERNELS_NS isa_avx512
#define FASTLN_COPY_NAME "avx512"
#define FASTLN_COPY_VAR kCopyAvx512
#endif

namespace FASTLN_HOST_NS {
namespace kernels = FASTLN_KERNELS_NS;
#include "host_loops.h"
}  // namespace FASTLN_HOST_NS

extern const CpuCopy FASTLN_COPY_VAR = {
    FASTLN_COPY_NAME,
    {&FASTLN_HOST_NS::run_forward<false>, &FASTLN_HOST_NS::run_forward<true>},
    {&FASTLN_HOST_NS::run_backward<false>,
     &FASTLN_HOST_NS::run_backward<true>}};

}  // namespace cpu
}  // namespace fastln
#endif
