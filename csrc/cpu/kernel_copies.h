// The copies of the row kernels (kernels.h), one per instruction set, each in
// its own namespace: isa_base always, and on x86-64 with GCC or Clang
// isa_avx2 and isa_avx512 (FASTLN_HAVE_X86_KERNELS, from copies.h, is then
// defined). An includer that defines FASTLN_CPU_COPY (copy_unit.h: 0 for the
// baseline, 1 for AVX2, 2 for AVX-512) gets that copy alone; otherwise
// (tests/cpu_convert_check.cpp) all of them. Included inside namespace
// fastln::cpu, after the standard headers kernels.h uses and, on x86-64,
// <immintrin.h> (outside any namespace). No include guard: each includer
// gets its own copies.
//
// The row kernels, compiled once per instruction set. The baseline copy runs
// anywhere; on x86-64 with GCC or Clang two more are compiled, for AVX2 +
// FMA + F16C and for AVX-512 (F, BW, VL, DQ), and the widest the processor
// has is chosen at run time, the way ATen compiles its own CPU kernels per
// capability. torch's own kernels use AVX-512 where it exists, so an AVX2
// copy alone left bfloat16/half rows behind them (bfloat16 forward geomean
// 1.06x of torch on an AVX-512 AMD EPYC).
#include "policies.h"

#if !defined(FASTLN_CPU_COPY) || FASTLN_CPU_COPY == 0
namespace isa_base {
#define FASTLN_VEC_BYTES 16
#include "kernels.h"
#undef FASTLN_VEC_BYTES
}  // namespace isa_base
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#ifndef FASTLN_HAVE_X86_KERNELS
#define FASTLN_HAVE_X86_KERNELS 1
#endif
#if !defined(FASTLN_CPU_COPY) || FASTLN_CPU_COPY == 1
// The target strings are spelled out in each pragma: GCC does not expand
// macros in #pragma GCC target.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif
namespace isa_avx2 {
#define FASTLN_VEC_BYTES 32
#define FASTLN_AVX2_INTRINSICS 1
#include "kernels.h"
#undef FASTLN_AVX2_INTRINSICS
#undef FASTLN_VEC_BYTES
}  // namespace isa_avx2
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif  // FASTLN_CPU_COPY == 1

#if !defined(FASTLN_CPU_COPY) || FASTLN_CPU_COPY == 2
#if defined(__clang__)
#pragma clang attribute push(                                         \
    __attribute__((                                                   \
        target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))), \
    apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
// GCC 12's own _mm512_cvtph_ps passes _mm512_undefined_ps() as the unused
// merge source and then warns that it may be used uninitialized.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
namespace isa_avx512 {
#define FASTLN_VEC_BYTES 64
#define FASTLN_AVX512_INTRINSICS 1
#include "kernels.h"
#undef FASTLN_AVX512_INTRINSICS
#undef FASTLN_VEC_BYTES
}  // namespace isa_avx512
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
#endif  // FASTLN_CPU_COPY == 2
#endif  // x86-64
