// Checks the branch-free half and bfloat16 conversions of csrc/cpu/kernels.h
// against slow reference conversions written from the IEEE definitions:
// every half and bfloat16 value, and float -> half/bfloat16 rounding on
// every halfway point, its neighbours and a stride through all float bit
// patterns. Plain C++ (the storage types are stand-ins), run by
// tests/test_cpu_convert.py. Prints "ok" on success.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <type_traits>
#include <vector>

namespace c10 {
struct Half {
  uint16_t x;
};
struct BFloat16 {
  uint16_t x;
};
}  // namespace c10

#define FASTLN_VEC_BYTES 16
#include "cpu/kernels.h"

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
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("ok\n");
  return 0;
}
