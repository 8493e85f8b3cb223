// Checks the branch-free half and bfloat16 conversions of csrc/cpu/kernels.h
// against slow reference conversions written from the IEEE definitions:
// every half and bfloat16 value, and float -> half/bfloat16 rounding on
// every halfway point, its neighbours and a stride through all float bit
// patterns. Then the vector conversions (load_vec, store_vec, store_vec2,
// and the fused add's rounded_as and store_exact_vec) of the baseline copy and,
// when the processor has them, of the AVX2 + F16C copy (F16C instructions for
// half) and of the AVX-512 copy against those scalar ones on the same values.
// Plain C++ (the storage types are stand-ins), run by
// tests/test_cpu_convert.py. Prints "ok" on success, after "f16c: checked" or
// "f16c: not supported" and the same for "avx512".
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <type_traits>
#include <vector>
#if defined(__x86_64__)
#include <immintrin.h>  // kernels.h needs it on x86-64 (streaming stores)
#endif

namespace c10 {
struct Half {
  uint16_t x;
};
struct BFloat16 {
  uint16_t x;
};
}  // namespace c10

#include "cpu/policies.h"  // kernels.h's policy types (as kernel_copies.h)

#define FASTLN_VEC_BYTES 16
#include "cpu/kernels.h"
#undef FASTLN_VEC_BYTES

// The copies of the vector code, exactly as csrc/cpu/copy_unit.h
// builds them.
#include "cpu/kernel_copies.h"

namespace {

int failures = 0;

void fail(const char* what, uint32_t input, uint32_t got, uint32_t want) {
  if (++failures <= 10)
    std::printf("%s(0x%08x): got 0x%08x, want 0x%08x\n", what, input, got,
                want);
}

// Half value by its definition.
double half_value(uint16_t h) {
  const int sign = h >> 15, exp = (h >> 10) & 31, mant = h & 1023;
  double v;
  if (exp == 0)
    v = std::ldexp(mant, -24);
  else if (exp == 31)
    v = mant ? NAN : INFINITY;
  else
    v = std::ldexp(1024 + mant, exp - 25);
  return sign ? -v : v;
}

// Nearest half to a finite float, ties to the even mantissa; values at or
// beyond 65520 (halfway from the largest half, 65504, to 2^16) overflow.
uint16_t half_reference(float f) {
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  if (std::isnan(f)) return 0x7E00;
  const double a = std::fabs(static_cast<double>(f));
  if (a >= 65520.0) return sign | 0x7C00;
  // Finite non-negative halves are ordered like their bit patterns.
  uint16_t lo = 0, hi = 0x7BFF;
  while (lo < hi) {  // largest h with value(h) <= a
    const uint16_t mid = static_cast<uint16_t>((lo + hi + 1) / 2);
    if (half_value(mid) <= a)
      lo = mid;
    else
      hi = static_cast<uint16_t>(mid - 1);
  }
  uint16_t best = lo;
  if (lo < 0x7BFF || a > half_value(lo)) {
    const double below = a - half_value(lo);
    const double above = half_value(static_cast<uint16_t>(lo + 1)) - a;
    if (above < below || (above == below && (lo & 1)))
      best = static_cast<uint16_t>(lo + 1);
  }
  return sign | best;
}

// bfloat16 is the top half of a float: round to nearest even on the low 16
// bits, done here on the value rather than the bits.
uint16_t bfloat16_reference(float f) {
  if (std::isnan(f)) return 0x7FC0;
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint32_t low = bits & 0xFFFF;
  uint32_t top = bits >> 16;
  if (low > 0x8000 || (low == 0x8000 && (top & 1))) ++top;
  return static_cast<uint16_t>(top);
}

void check_float_to_16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  c10::Half h;
  store_from_acc(&h, 0, f);
  const uint16_t want_h = half_reference(f);
  // Any NaN is fine for NaN input; the reference's quiet NaN is one choice.
  const bool h_ok = std::isnan(f) ? ((h.x & 0x7C00) == 0x7C00 && (h.x & 1023))
                                  : h.x == want_h;
  if (!h_ok) fail("float_to_half", bits, h.x, want_h);
  c10::BFloat16 b;
  store_from_acc(&b, 0, f);
  const uint16_t want_b = bfloat16_reference(f);
  const bool b_ok = std::isnan(f) ? ((b.x & 0x7F80) == 0x7F80 && (b.x & 0x7F))
                                  : b.x == want_b;
  if (!b_ok) fail("float_to_bfloat16", bits, b.x, want_b);
}

// Equal bit patterns (so -0.0 differs from 0.0).
bool same_bits(float a, float b) { return std::memcmp(&a, &b, 4) == 0; }

// Loads `values` (16-bit storage) and stores `floats` through one copy's
// vector conversions, W at a time, and compares each element with the scalar
// conversion (any NaN for a NaN).
#define DEFINE_VECTOR_CHECK(NS, TARGET)                                    \
  TARGET void check_vectors_##NS(const std::vector<uint16_t>& values,      \
                                 const std::vector<float>& floats) {       \
    constexpr int64_t W = NS::Simd<float>::kWidth;                         \
    using vec = NS::Simd<float>::vec;                                      \
    for (size_t i = 0; i + W <= values.size(); i += W) {                   \
      const vec h = NS::load_vec<float>(                                   \
          reinterpret_cast<const c10::Half*>(values.data() + i));          \
      const vec b = NS::load_vec<float>(                                   \
          reinterpret_cast<const c10::BFloat16*>(values.data() + i));      \
      for (int64_t k = 0; k < W; ++k) {                                    \
        const c10::Half hs{values[i + k]};                                 \
        const c10::BFloat16 bs{values[i + k]};                             \
        const float want_h = load_as_acc<float>(&hs, 0);                   \
        const float want_b = load_as_acc<float>(&bs, 0);                   \
        if (!(h[k] == want_h || (std::isnan(h[k]) && std::isnan(want_h)))) \
          fail(#NS " load_vec half", values[i + k], 0, 0);                 \
        if (!(b[k] == want_b || (std::isnan(b[k]) && std::isnan(want_b)))) \
          fail(#NS " load_vec bfloat16", values[i + k], 0, 0);             \
      }                                                                    \
    }                                                                      \
    for (size_t i = 0; i + 2 * W <= floats.size(); i += 2 * W) {           \
      vec v0, v1;                                                          \
      std::memcpy(&v0, floats.data() + i, sizeof(v0));                     \
      std::memcpy(&v1, floats.data() + i + W, sizeof(v1));                 \
      c10::Half h1[2 * W], h2[2 * W];                                      \
      c10::BFloat16 b1[2 * W], b2[2 * W];                                  \
      NS::store_vec<c10::Half, float>(h1, v0);                             \
      NS::store_vec<c10::Half, float>(h1 + W, v1);                         \
      NS::store_vec2<c10::Half, float>(h2, v0, v1);                        \
      NS::store_vec<c10::BFloat16, float>(b1, v0);                         \
      NS::store_vec<c10::BFloat16, float>(b1 + W, v1);                     \
      NS::store_vec2<c10::BFloat16, float>(b2, v0, v1);                    \
      /* The fused add's rounding in registers (rounded_as) and its */     \
      /* store of the rounded values (store_exact_vec). */                 \
      const vec rh[2] = {NS::rounded_as<c10::Half, float>(v0),             \
                         NS::rounded_as<c10::Half, float>(v1)};            \
      const vec rb[2] = {NS::rounded_as<c10::BFloat16, float>(v0),         \
                         NS::rounded_as<c10::BFloat16, float>(v1)};        \
      c10::Half he[2 * W];                                                 \
      c10::BFloat16 be[2 * W];                                             \
      for (int j = 0; j < 2; ++j) {                                        \
        NS::store_exact_vec<c10::Half, float>(he + j * W, rh[j]);          \
        NS::store_exact_vec<c10::BFloat16, float>(be + j * W, rb[j]);      \
      }                                                                    \
      for (int64_t k = 0; k < 2 * W; ++k) {                                \
        const float f = floats[i + k];                                     \
        uint32_t bits;                                                     \
        std::memcpy(&bits, &f, 4);                                         \
        c10::Half hs;                                                      \
        c10::BFloat16 bs;                                                  \
        store_from_acc(&hs, 0, f);                                         \
        store_from_acc(&bs, 0, f);                                         \
        const bool nan = std::isnan(f);                                    \
        const auto half_ok = [&](uint16_t got) {                           \
          return nan ? ((got & 0x7C00) == 0x7C00 && (got & 1023))          \
                     : got == hs.x;                                        \
        };                                                                 \
        const auto bf16_ok = [&](uint16_t got) {                           \
          return nan ? ((got & 0x7F80) == 0x7F80 && (got & 0x7F))          \
                     : got == bs.x;                                        \
        };                                                                 \
        if (!half_ok(h1[k].x))                                             \
          fail(#NS " store_vec half", bits, h1[k].x, hs.x);                \
        if (!half_ok(h2[k].x))                                             \
          fail(#NS " store_vec2 half", bits, h2[k].x, hs.x);               \
        if (!bf16_ok(b1[k].x))                                             \
          fail(#NS " store_vec bfloat16", bits, b1[k].x, bs.x);            \
        if (!bf16_ok(b2[k].x))                                             \
          fail(#NS " store_vec2 bfloat16", bits, b2[k].x, bs.x);           \
        /* rounded_as: the scalar round trip's value, bit for bit. */      \
        const float rh_k = rh[k / W][k % W], rb_k = rb[k / W][k % W];      \
        if (nan ? !std::isnan(rh_k)                                        \
                : !same_bits(rh_k, load_as_acc<float>(&hs, 0)))            \
          fail(#NS " rounded_as half", bits, 0, 0);                        \
        if (nan ? !std::isnan(rb_k)                                        \
                : !same_bits(rb_k, load_as_acc<float>(&bs, 0)))            \
          fail(#NS " rounded_as bfloat16", bits, 0, 0);                    \
        if (!half_ok(he[k].x))                                             \
          fail(#NS " store_exact_vec half", bits, he[k].x, hs.x);          \
        if (!bf16_ok(be[k].x))                                             \
          fail(#NS " store_exact_vec bfloat16", bits, be[k].x, bs.x);      \
      }                                                                    \
    }                                                                      \
  }

DEFINE_VECTOR_CHECK(isa_base, )
#ifdef FASTLN_HAVE_X86_KERNELS
DEFINE_VECTOR_CHECK(isa_avx2, __attribute__((target("avx2,fma,f16c"))))
DEFINE_VECTOR_CHECK(
    isa_avx512,
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))))
#endif

}  // namespace

int main() {
  // Every half and bfloat16 to float.
  for (uint32_t v = 0; v < 65536; ++v) {
    const c10::Half h{static_cast<uint16_t>(v)};
    const float got = load_as_acc<float>(&h, 0);
    const double want = half_value(static_cast<uint16_t>(v));
    uint32_t got_bits;
    std::memcpy(&got_bits, &got, 4);
    const bool ok = std::isnan(want) ? std::isnan(got)
                                     : (static_cast<double>(got) == want &&
                                        std::signbit(got) == (v >> 15 != 0));
    if (!ok) fail("half_to_float", v, got_bits, 0);
    const c10::BFloat16 b{static_cast<uint16_t>(v)};
    const float bf = load_as_acc<float>(&b, 0);
    uint32_t bf_bits;
    std::memcpy(&bf_bits, &bf, 4);
    if (bf_bits != v << 16) fail("bfloat16_to_float", v, bf_bits, v << 16);
  }
  // Halfway points between neighbouring halves and their float neighbours:
  // where round-to-nearest-even is decided.
  for (uint32_t v = 0; v < 0x7C00; ++v) {
    for (const uint16_t sign : {uint16_t{0}, uint16_t{0x8000}}) {
      const double lo = half_value(static_cast<uint16_t>(v));
      const double hi =
          v + 1 < 0x7C00 ? half_value(static_cast<uint16_t>(v + 1)) : 65536.0;
      const float mid = static_cast<float>((lo + hi) / 2);  // exact in float
      for (const float f :
           {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, INFINITY),
            static_cast<float>(lo)})
        check_float_to_16(sign ? -f : f);
    }
  }
  // A stride through all float bit patterns (Inf, NaN, subnormals included).
  for (uint64_t bits = 0; bits <= 0xFFFFFFFFull; bits += 4093) {
    float f;
    const uint32_t b32 = static_cast<uint32_t>(bits);
    std::memcpy(&f, &b32, 4);
    check_float_to_16(f);
  }
  for (const float f : {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 65504.0f,
                        65519.99f, 65520.0f, 1e-8f, 2.98e-8f, 5.96e-8f})
    check_float_to_16(f);
  // The vector conversions on every 16-bit pattern and on the same floats
  // as above (halfway points, their neighbours, a stride through all bits).
  std::vector<uint16_t> all16(65536);
  for (uint32_t v = 0; v < 65536; ++v) all16[v] = static_cast<uint16_t>(v);
  std::vector<float> floats;
  for (uint32_t v = 0; v < 0x7C00; ++v) {
    const double lo = half_value(static_cast<uint16_t>(v));
    const double hi =
        v + 1 < 0x7C00 ? half_value(static_cast<uint16_t>(v + 1)) : 65536.0;
    const float mid = static_cast<float>((lo + hi) / 2);
    for (const float f :
         {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, INFINITY)})
      for (const float s : {f, -f}) floats.push_back(s);
  }
  for (uint64_t bits = 0; bits <= 0xFFFFFFFFull; bits += 4093) {
    float f;
    const uint32_t b32 = static_cast<uint32_t>(bits);
    std::memcpy(&f, &b32, 4);
    floats.push_back(f);
  }
  while (floats.size() % 16) floats.push_back(0.0f);
  check_vectors_isa_base(all16, floats);
#ifdef FASTLN_HAVE_X86_KERNELS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c")) {
    check_vectors_isa_avx2(all16, floats);
    std::printf("f16c: checked\n");
  } else {
    std::printf("f16c: not supported\n");
  }
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq")) {
    check_vectors_isa_avx512(all16, floats);
    std::printf("avx512: checked\n");
  } else {
    std::printf("avx512: not supported\n");
  }
#else
  std::printf("f16c: not supported\n");
#endif
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("ok\n");
  return 0;
}
