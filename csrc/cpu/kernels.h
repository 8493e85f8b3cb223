// Row kernels of the CPU backend. This file is included once per copy by
// kernel_copies.h, each time inside a different namespace and compiler
// target (baseline, AVX2+FMA, ...), so it has no include guard and includes
// nothing: everything it uses is included by the including file first.
//
// Conventions: M rows of N elements, row-major and contiguous; acc_t is the
// accumulation type (float for float/half/bfloat16, double for double).
// Row loops are written with explicit SIMD vectors (row_map, row_sums):
// without -ffast-math the compiler may not reorder a floating-point sum (a
// naive loop runs at one add per FP-add latency), and it vectorizes neither
// the half/bfloat16 conversions nor loops through five possibly aliasing
// pointers reliably. The including file includes <immintrin.h> on x86-64
// and defines FASTLN_AVX2_INTRINSICS or FASTLN_AVX512_INTRINSICS for the
// AVX2 + F16C and the AVX-512 copies; the code is otherwise width-generic.
// Every reduction
// combines its partial sums in a fixed order, so results do not depend on
// the number of threads.

// Entry points (the functions host_loops.h calls, and long_row_sums)
// are flattened: every call inside them, the row bodies' lambdas included,
// is inlined. A lambda left out of line that returns a vector came back
// wrong in the AVX2 and AVX-512 copies (GCC 12 under the target pragma: the
// caller read only the low 16 bytes of the vector, so a quarter of each dx
// vector was written; earlier, row sums over half the row). Inside one
// function no vector crosses a call; tests/test_cpu_kernels_inlined.py checks
// the built library for out-of-line lambdas in these namespaces.
#ifndef FASTLN_FLATTEN
#define FASTLN_FLATTEN __attribute__((flatten))
#endif

// A SIMD vector through the GCC/Clang vector extension, of the target's
// register width: the including file defines FASTLN_VEC_BYTES (16 for the
// baseline's SSE2, 32 for AVX2) before each inclusion.
template <typename acc_t>
struct Simd {
  typedef acc_t vec __attribute__((vector_size(FASTLN_VEC_BYTES)));
  static constexpr int64_t kWidth = FASTLN_VEC_BYTES / sizeof(acc_t);
  static vec load(const acc_t* p) {
    vec v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static acc_t sum(vec v) {
    acc_t s = v[0];
    for (int64_t k = 1; k < kWidth; ++k) s += v[k];
    return s;
  }
};

// Independent vector accumulators per reduced quantity: an FP add has a
// latency of about 4 cycles and two units issue one each per cycle, so one
// accumulator would run the loop at a quarter of the adder's throughput.
constexpr int64_t kAccumulators = 4;

// Element conversions between the storage type and acc_t. bfloat16 and half
// go by bit manipulation on their uint16 storage (round to nearest even, NaN
// kept NaN, half subnormals exact): the same results as c10's conversions,
// but branch-free, so the loops around them vectorize. c10's half conversion
// is a scalar routine with branches; calling it made half rows ten times
// slower than float rows. Other types use their own conversions.
inline float float_from_bits(uint32_t bits) {
  float v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

inline uint32_t bits_from_float(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return bits;
}

// c ? a : b as mask arithmetic: GCC turns a chain of ?: into branches, which
// keep the loop around it from vectorizing.
inline uint32_t select_bits(bool c, uint32_t a, uint32_t b) {
  const uint32_t mask = 0u - static_cast<uint32_t>(c);
  return (a & mask) | (b & ~mask);
}

// IEEE half -> float. Exponent and mantissa move to float position and the
// exponent is rebiased (127 - 15); Inf/NaN get the maximal exponent, and
// subnormals/zero are renormalized exactly by a float subtraction of the
// implicit bit (2^-14), which involves no float subnormal (no FTZ/DAZ issue).
inline float half_bits_to_float(uint32_t h) {
  constexpr uint32_t kExp = 0x7C00u << 13;  // half exponent, float position
  const uint32_t shifted = (h & 0x7FFFu) << 13;
  const uint32_t exp = shifted & kExp;
  const uint32_t normal = shifted + ((127u - 15u) << 23);
  const uint32_t inf_nan = normal + ((128u - 16u) << 23);
  const float sub = float_from_bits(normal + (1u << 23)) -
                    float_from_bits(113u << 23);  // 113 << 23 is 2^-14
  const uint32_t magnitude =
      select_bits(exp == kExp, inf_nan,
                  select_bits(exp == 0, bits_from_float(sub), normal));
  return float_from_bits(magnitude | ((h & 0x8000u) << 16));
}

// float -> IEEE half, round to nearest even. Overflow gives Inf, NaN a quiet
// NaN; results below the half normal range are rounded by adding a magic
// number whose ulp is the half subnormal step (the FPU does the rounding).
inline uint16_t float_to_half_bits(float v) {
  const uint32_t bits = bits_from_float(v);
  const uint32_t sign = bits & 0x80000000u;
  const uint32_t a = bits ^ sign;                         // |v|
  constexpr uint32_t kHalfOverflow = (127u + 16u) << 23;  // 2^16
  constexpr uint32_t kInf = 255u << 23;
  constexpr uint32_t kDenormMagic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
  const uint32_t special = a > kInf ? 0x7E00u : 0x7C00u;
  const uint32_t sub =
      bits_from_float(float_from_bits(a) + float_from_bits(kDenormMagic)) -
      kDenormMagic;
  const uint32_t mant_odd = (a >> 13) & 1u;
  const uint32_t normal =
      (a + (static_cast<uint32_t>(15 - 127) << 23) + 0xFFFu + mant_odd) >> 13;
  const uint32_t magnitude = select_bits(
      a >= kHalfOverflow, special, select_bits(a < (113u << 23), sub, normal));
  return static_cast<uint16_t>(magnitude | (sign >> 16));
}

template <typename acc_t, typename scalar_t>
inline acc_t load_as_acc(const scalar_t* p, int64_t i) {
  const auto* raw = reinterpret_cast<const uint16_t*>(p);
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    return float_from_bits(uint32_t{raw[i]} << 16);
  } else if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    return half_bits_to_float(raw[i]);
  } else {
    return static_cast<acc_t>(p[i]);
  }
}

template <typename scalar_t, typename acc_t>
inline void store_from_acc(scalar_t* p, int64_t i, acc_t v) {
  auto* raw = reinterpret_cast<uint16_t*>(p);
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    const uint32_t bits = bits_from_float(v);
    const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    const bool is_nan = (bits & 0x7FFFFFFFu) > 0x7F800000u;
    raw[i] = static_cast<uint16_t>(is_nan ? 0x7FC0u : rounded);
  } else if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    raw[i] = float_to_half_bits(v);
  } else {
    p[i] = static_cast<scalar_t>(v);
  }
}

// A vector of W = Simd<acc_t>::kWidth row elements converted to or from
// acc_t. bfloat16 goes by the same bit operations as the scalar conversions,
// on integer vectors; half uses the F16C instructions (and their AVX-512
// forms) where the including file enables them (one vcvtph2ps / vcvtps2ph per
// 8 or 16 values, round to nearest even like float_to_half_bits), else the
// scalar conversion per lane (the portable path).
template <typename acc_t, typename scalar_t>
inline typename Simd<acc_t>::vec load_vec(const scalar_t* p) {
  using S = Simd<acc_t>;
  using vec = typename S::vec;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return S::load(p);
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    typedef uint32_t u32vec __attribute__((vector_size(FASTLN_VEC_BYTES)));
#if defined(FASTLN_AVX2_INTRINSICS)
    // One vpmovzxwd; the generic widening below compiles to two halves.
    const u32vec bits = (u32vec)_mm256_slli_epi32(
        _mm256_cvtepu16_epi32(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(p))),
        16);
#elif defined(FASTLN_AVX512_INTRINSICS)
    // Likewise one zmm vpmovzxwd (GCC 12 widened through two ymm halves
    // joined by vinserti64x4).
    const u32vec bits = (u32vec)_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))),
        16);
#else
    typedef uint16_t u16vec __attribute__((vector_size(FASTLN_VEC_BYTES / 2)));
    u16vec raw;
    std::memcpy(&raw, p, sizeof(raw));
    const u32vec bits = __builtin_convertvector(raw, u32vec) << 16;
#endif
    vec v;
    std::memcpy(&v, &bits, sizeof(v));
    return v;
#if defined(FASTLN_AVX2_INTRINSICS)
  } else if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    static_assert(S::kWidth == 8, "F16C converts 8 halves at a time");
    return _mm256_cvtph_ps(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#elif defined(FASTLN_AVX512_INTRINSICS)
  } else if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    static_assert(S::kWidth == 16, "AVX-512 converts 16 halves at a time");
    return _mm512_cvtph_ps(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#endif
  } else {
    vec v;
    for (int64_t k = 0; k < S::kWidth; ++k) v[k] = load_as_acc<acc_t>(p, k);
    return v;
  }
}

// bfloat16 bits (in the low half of each lane) of W floats: store_from_acc's
// rounding on every lane.
inline auto bfloat16_bits(typename Simd<float>::vec v) {
  typedef uint32_t u32vec __attribute__((vector_size(FASTLN_VEC_BYTES)));
  typedef int32_t i32vec __attribute__((vector_size(FASTLN_VEC_BYTES)));
  u32vec bits;
  std::memcpy(&bits, &v, sizeof(bits));
  const u32vec rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  // |v| > Inf as a signed comparison (|v| < 2^31): one instruction, and a
  // vector comparison gives the all-ones lanes that ?: selects by.
  const i32vec magnitude = (i32vec)(bits & 0x7FFFFFFFu);
  return magnitude > 0x7F800000 ? (u32vec){} + 0x7FC0u : rounded;
}

// How the vector stores of an output row write memory. PlainStore: normal
// stores. StreamStore: non-temporal stores, which skip the read of each
// line a normal store first makes (write-allocate): for an output too large
// to stay cached it moves a third less memory in the forward (read x, write
// y: 3 -> 2 tensor-sized transfers), which is what a copy (memcpy streams
// past a threshold) and torch's kernels are measured against. Only for whole
// vectors at addresses aligned to their size (rows_map checks), and followed
// by stream_fence() before another thread may read the output. x86-64 only
// (elsewhere StreamStore stores plainly).
struct PlainStore {
  template <typename V>
  static void put(void* p, const V& v) {
    std::memcpy(p, &v, sizeof(v));
  }
};
struct StreamStore {
  template <typename V>
  static void put(void* p, const V& v) {
#if defined(__x86_64__)
    if constexpr (sizeof(V) == 16) {
      __m128i t;
      std::memcpy(&t, &v, sizeof(t));
      _mm_stream_si128(static_cast<__m128i*>(p), t);
      return;
    }
#if FASTLN_VEC_BYTES >= 32
    if constexpr (sizeof(V) == 32) {
      __m256i t;
      std::memcpy(&t, &v, sizeof(t));
      _mm256_stream_si256(static_cast<__m256i*>(p), t);
      return;
    }
#endif
#if FASTLN_VEC_BYTES >= 64
    if constexpr (sizeof(V) == 64) {
      __m512i t;
      std::memcpy(&t, &v, sizeof(t));
      _mm512_stream_si512(static_cast<__m512i*>(p), t);
      return;
    }
#endif
#endif
    std::memcpy(p, &v, sizeof(v));  // other sizes (the baseline's 8 bytes)
  }
};

// Orders this thread's non-temporal stores before its later stores (the
// task's completion that at::parallel_for waits on).
inline void stream_fence() {
#if defined(__x86_64__)
  _mm_sfence();
#endif
}

#if defined(FASTLN_AVX2_INTRINSICS) || defined(FASTLN_AVX512_INTRINSICS)
// An empty asm that takes v in a vector register and may change it: the
// compiler must then compute v into a register rather than fold it into the
// store that follows. GCC folds vcvtps2ph into its store form, which ran at
// half the rate of the register form plus a store on AMD EPYC (Zen 4: 0.2
// vs 0.1 ns per element converted in L1, 512- and 256-bit alike).
template <typename V>
inline void keep_in_register(V& v) {
  __asm__("" : "+v"(v));
}
#endif

template <typename scalar_t, typename acc_t, typename Store = PlainStore>
inline void store_vec(scalar_t* p, typename Simd<acc_t>::vec v) {
  using S = Simd<acc_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    Store::put(p, v);
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    typedef uint16_t u16vec __attribute__((vector_size(FASTLN_VEC_BYTES / 2)));
    Store::put(p, __builtin_convertvector(bfloat16_bits(v), u16vec));
#if defined(FASTLN_AVX2_INTRINSICS)
  } else if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
    keep_in_register(h);
    Store::put(p, h);
#elif defined(FASTLN_AVX512_INTRINSICS)
  } else if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    __m256i h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
    keep_in_register(h);
    Store::put(p, h);
#endif
  } else {
    // The portable half conversion, lane by lane: plain stores even when
    // streaming was asked for (streaming only saves memory traffic).
    for (int64_t k = 0; k < S::kWidth; ++k) store_from_acc(p, k, v[k]);
  }
}

// Two vectors to 2 W consecutive elements. bfloat16 on AVX2 packs both into
// one 32-byte store (vpackusdw + vpermq) instead of two half-filled packs:
// measured 20% faster on bfloat16 forward rows.
template <typename scalar_t, typename acc_t, typename Store = PlainStore>
inline void store_vec2(scalar_t* p, typename Simd<acc_t>::vec v0,
                       typename Simd<acc_t>::vec v1) {
#if defined(FASTLN_AVX2_INTRINSICS)
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    const __m256i packed = _mm256_packus_epi32((__m256i)bfloat16_bits(v0),
                                               (__m256i)bfloat16_bits(v1));
    Store::put(p, _mm256_permute4x64_epi64(packed, 0xD8));
    return;
  }
#endif
  store_vec<scalar_t, acc_t, Store>(p, v0);
  store_vec<scalar_t, acc_t, Store>(p + Simd<acc_t>::kWidth, v1);
}

// A vector whose lanes T holds exactly (rounded_as<T>) to W elements of T:
// bfloat16 keeps the high half of each lane as it is, without store_vec's
// rounding (a third of the instructions of the fused add's loop); other
// types as store_vec, whose rounding of an exact value is one instruction.
template <typename T, typename acc_t, typename Store = PlainStore>
inline void store_exact_vec(T* p, typename Simd<acc_t>::vec v) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    typedef uint32_t u32vec __attribute__((vector_size(FASTLN_VEC_BYTES)));
    typedef uint16_t u16vec __attribute__((vector_size(FASTLN_VEC_BYTES / 2)));
    u32vec bits;
    std::memcpy(&bits, &v, sizeof(bits));
    Store::put(p, __builtin_convertvector(bits >> 16, u16vec));
  } else {
    store_vec<T, acc_t, Store>(p, v);
  }
}

// Element i of a row as a scalar, or elements [i, i + W) as a vector: a row
// loop hands one of the two to its body, which reads with at(p) and adds
// into an acc_t row with at.add(p, value), so one body serves the vector loop
// and the scalar tail.
template <typename acc_t>
struct ScalarAt {
  int64_t i;
  template <typename T>
  acc_t operator()(const T* p) const {
    return load_as_acc<acc_t>(p, i);
  }
  void add(acc_t* p, acc_t v) const { p[i] += v; }
};
template <typename acc_t>
struct VectorAt {
  using vec = typename Simd<acc_t>::vec;
  int64_t i;
  template <typename T>
  vec operator()(const T* p) const {
    return load_vec<acc_t>(p + i);
  }
  void add(acc_t* p, vec v) const {
    store_vec<acc_t, acc_t>(p + i, Simd<acc_t>::load(p + i) + v);
  }
};

// ((a0 + a1) + (a2 + a3)) ...: the terms of a row tile, added pairwise.
template <typename V, size_t R>
inline V pairwise_sum(const std::array<V, R>& a) {
  if constexpr (R == 1) {
    return a[0];
  } else {
    constexpr size_t H = R / 2;
    std::array<V, H> low;
    std::array<V, R - H> high;
    for (size_t r = 0; r < H; ++r) low[r] = a[r];
    for (size_t r = H; r < R; ++r) high[r - H] = a[r];
    return pairwise_sum(low) + pairwise_sum(high);
  }
}

// Streaming stores (StreamStore) take whole vectors at 64-byte aligned
// addresses. A row of T at p can stream from element stream_head(p) on, its
// first 64-byte boundary; -1 when p is not aligned to T, or when the row is
// shorter than kStreamPeelMinBytes and not aligned itself: such short rows
// would spend a scalar head of up to 64 bytes on each row, so they are written
// with plain stores. (Every misaligned row was, before: of 2048 x 1025 fp32,
// 1 row in 16 is aligned, so its "streamed" output went through the cache.)
constexpr int64_t kStreamPeelMinBytes = 1024;
template <typename T>
inline int64_t stream_head(const T* p, int64_t N) {
  const auto offset = reinterpret_cast<uintptr_t>(p) % 64;
  if (offset % sizeof(T) != 0) return -1;
  const auto head = static_cast<int64_t>((64 - offset) % 64 / sizeof(T));
  if (head > 0 && N * static_cast<int64_t>(sizeof(T)) < kStreamPeelMinBytes)
    return -1;
  return head < N ? head : -1;
}

// out[r][i] = body(at)[r] for R rows and every i in [begin, end), converted
// to out's type: two vectors per iteration (their conversions interleave and
// 16-bit results leave in one store), then one vector, then the scalar tail.
// The body is elementwise, so an element's value does not depend on where
// the range starts.
template <typename acc_t, size_t R, typename Store, typename T, typename Body>
inline void rows_map_range(int64_t begin, int64_t end,
                           const std::array<T*, R>& out, const Body& body) {
  constexpr int64_t W = Simd<acc_t>::kWidth;
  int64_t i = begin;
  for (; i + 2 * W <= end; i += 2 * W) {
    const auto v0 = body(VectorAt<acc_t>{i});
    const auto v1 = body(VectorAt<acc_t>{i + W});
    for (size_t r = 0; r < R; ++r)
      store_vec2<T, acc_t, Store>(out[r] + i, v0[r], v1[r]);
  }
  for (; i + W <= end; i += W) {
    const auto v = body(VectorAt<acc_t>{i});
    for (size_t r = 0; r < R; ++r) store_vec<T, acc_t, Store>(out[r] + i, v[r]);
  }
  for (; i < end; ++i) {
    const auto v = body(ScalarAt<acc_t>{i});
    for (size_t r = 0; r < R; ++r) store_from_acc(out[r], i, v[r]);
  }
}

// Writes a row of N elements with Store as range(store, begin, end) calls:
// with StreamStore, plainly up to `head` (the row's first 64-byte boundary,
// stream_head) and streamed from there, or plainly throughout when head < 0.
template <typename Store, typename Range>
inline void split_at_stream_head(int64_t head, int64_t N, const Range& range) {
  if constexpr (std::is_same_v<Store, StreamStore>) {
    if (head < 0) return range(PlainStore{}, int64_t{0}, N);
    range(PlainStore{}, int64_t{0}, head);
    range(StreamStore{}, head, N);
  } else {
    range(Store{}, int64_t{0}, N);
  }
}

// out[r][i] = body(at)[r] for R rows of N elements. With StreamStore, each
// row is written plainly up to its first 64-byte boundary and streamed from
// there (stream_head); rows whose boundaries differ (a tile of several rows)
// are written plainly.
template <typename acc_t, size_t R, typename Store = PlainStore, typename T,
          typename Body>
inline void rows_map(int64_t N, const std::array<T*, R>& out,
                     const Body& body) {
  int64_t head = -1;
  if constexpr (std::is_same_v<Store, StreamStore>) {
    head = stream_head(out[0], N);
    for (size_t r = 1; r < R; ++r)
      if (stream_head(out[r], N) != head) head = -1;
  }
  split_at_stream_head<Store>(
      head, N, [&](auto store, int64_t begin, int64_t end) {
        rows_map_range<acc_t, R, decltype(store)>(begin, end, out, body);
      });
}

// out[i] = body(at) for one row.
template <typename acc_t, typename Store = PlainStore, typename T,
          typename Body>
inline void row_map(int64_t N, T* out, const Body& body) {
  rows_map<acc_t, 1, Store>(N, std::array{out},
                            [&](auto at) { return std::array{body(at)}; });
}

// Whether rows of T are read in place (float, double) rather than converted
// into an acc_t scratch row first (bfloat16, half). The statistics and the
// backward read a row two or three times; converting it once is faster than
// widening it on every read, measured on AMD EPYC (AVX2) for N = 64..16384,
// forward and backward alike (e.g. 64 x 512 bfloat16 forward 12 us vs 19 us).
// Converting inside the forward's first statistics pass instead (one pass
// fewer) measured 8% slower on bfloat16 1024 x 1600 and 2048 x 2048.
template <typename T>
constexpr bool kReadInPlace =
    std::is_same_v<T, float> || std::is_same_v<T, double>;

// Sums kQ quantities over a row of N elements. term(at) loads its operands
// with at(pointer) and returns std::array<T, kQ> of the quantities, where T is
// a vector or a scalar as `at` gives (vector-scalar arithmetic broadcasts the
// scalar), so one term serves the vector body and the scalar tail.
//
// Rounding: a lane that adds n terms one after another has an error bound of
// n * eps (float eps = 6e-8), so one pass of the accumulators over a row of
// 2^24 elements would lose about 2^24 / 32 * eps = 3e-2 in the worst case and
// 1e-4 typically. The row is therefore summed in blocks of kSumBlock elements
// by the accumulators, and the block sums are added pairwise (see row_sums;
// the order depends on N only): the bound becomes (kSumBlock / (kAccumulators *
// W) + log2(N / kSumBlock)) * eps, growing like log N as torch's cascade sum
// does. A row of up to kSumBlock elements is one block, summed exactly as
// before. kSumBlock: 32 adds per lane for AVX2 float; combining two blocks is
// kQ vector adds against 1024 elements of work: no measurable cost.
constexpr int64_t kSumBlock = 1024;

// Vector sums of the terms at [begin, end), a multiple of the vector width.
template <size_t kQ, typename acc_t, typename Term>
__attribute__((always_inline)) inline std::array<typename Simd<acc_t>::vec, kQ>
block_sums(int64_t begin, int64_t end, const Term& term) {
  using vec = typename Simd<acc_t>::vec;
  constexpr int64_t W = Simd<acc_t>::kWidth;
  vec acc[kAccumulators][kQ] = {};
  int64_t i = begin;
  for (; i + kAccumulators * W <= end; i += kAccumulators * W)
    for (int64_t u = 0; u < kAccumulators; ++u) {
      const auto t = term(VectorAt<acc_t>{i + u * W});
      for (size_t q = 0; q < kQ; ++q) acc[u][q] += t[q];
    }
  for (; i < end; i += W) {
    const auto t = term(VectorAt<acc_t>{i});
    for (size_t q = 0; q < kQ; ++q) acc[0][q] += t[q];
  }
  std::array<vec, kQ> out;
  for (size_t q = 0; q < kQ; ++q)
    out[q] = (acc[0][q] + acc[1][q]) + (acc[2][q] + acc[3][q]);
  return out;
}

// Up to 2^kMaxLevels blocks per row: more than any int64_t row length.
constexpr int64_t kMaxLevels = 64;

// The block sums of a row longer than one block, combined pairwise the way a
// binary counter carries: level k holds the sum of 2^k consecutive blocks,
// and the levels left at the end are added earliest first. Out of line (it
// would crowd the short-row path that row_sums inlines), flattened, with its
// result in memory (see FASTLN_FLATTEN).
template <size_t kQ, typename acc_t, typename Term>
__attribute__((noinline)) FASTLN_FLATTEN void long_row_sums(
    int64_t vector_end, const Term& term,
    std::array<typename Simd<acc_t>::vec, kQ>& total) {
  typename Simd<acc_t>::vec level[kMaxLevels][kQ];
  int64_t count = 0;
  for (int64_t begin = 0; begin < vector_end; begin += kSumBlock) {
    auto carry = block_sums<kQ, acc_t>(
        begin, std::min(begin + kSumBlock, vector_end), term);
    int64_t k = 0;
    for (; (count >> k) & 1; ++k)
      for (size_t q = 0; q < kQ; ++q) carry[q] = level[k][q] + carry[q];
    for (size_t q = 0; q < kQ; ++q) level[k][q] = carry[q];
    ++count;
  }
  bool first = true;
  for (int64_t k = kMaxLevels - 1; k >= 0; --k) {
    if (((count >> k) & 1) == 0) continue;
    for (size_t q = 0; q < kQ; ++q)
      total[q] = first ? level[k][q] : total[q] + level[k][q];
    first = false;
  }
}

// Always inlined, with block_sums and the row_stats / backward_row_pass1
// around it: for short rows the sums and the statistics then stay in
// registers (out of line, the accumulators were zeroed in memory with rep
// stos and the backward of 64-element rows was 1.5x slower; the forward of
// 65536 x 64 fp32 20% slower with row_stats out of line).
template <size_t kQ, typename acc_t, typename Term>
__attribute__((always_inline)) inline std::array<acc_t, kQ> row_sums(
    int64_t N, const Term& term) {
  using S = Simd<acc_t>;
  const int64_t vector_end = N / S::kWidth * S::kWidth;
  std::array<typename S::vec, kQ> total;
  if (vector_end <= kSumBlock)  // most rows: one block
    total = block_sums<kQ, acc_t>(0, vector_end, term);
  else
    long_row_sums<kQ, acc_t>(vector_end, term, total);
  std::array<acc_t, kQ> out;
  for (size_t q = 0; q < kQ; ++q) out[q] = S::sum(total[q]);
  for (int64_t i = vector_end; i < N; ++i) {
    const auto t = term(ScalarAt<acc_t>{i});
    for (size_t q = 0; q < kQ; ++q) out[q] += t[q];
  }
  return out;
}

// Returns x converted to acc_t: the row itself when no conversion is needed,
// otherwise `buf` filled with the converted values.
template <typename scalar_t, typename acc_t>
FASTLN_FLATTEN inline const acc_t* row_as_acc(const scalar_t* x, int64_t N,
                                              acc_t* buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return x;
  } else {
    row_map<acc_t>(N, buf, [&](auto at) { return at(x); });
    return buf;
  }
}

// Writes an acc_t row converted to T (dweight/dbias from their sums).
template <typename acc_t, typename T>
FASTLN_FLATTEN inline void row_from_acc(const acc_t* src, int64_t N, T* out) {
  row_map<acc_t>(N, out, [&](auto at) { return at(src); });
}

// Row mean as shift + delta, and the biased variance.
//
// Corrected two-pass algorithm (Chan, Golub & LeVeque): pass one gives a
// rough mean `shift`; pass two sums d = x - shift and d^2, so delta = mean(d)
// corrects the rounding of pass one and var = mean(d^2) - delta^2. Keeping
// the mean as shift + delta matters when |mean| >> std: in float32 a row of
// 1e4 + 1e-3 * noise has a mean that float32 cannot hold to better than 5e-4
// (half a std), yet x - shift is exact and (x - shift) - delta is accurate,
// so the normalized output keeps full float32 accuracy. E[x^2] - E[x]^2 is
// never used: it cancels catastrophically on such rows.
template <typename acc_t>
struct RowStats {
  acc_t shift;
  acc_t delta;
  acc_t var;
};

template <typename acc_t, typename T>
__attribute__((always_inline)) inline RowStats<acc_t> row_stats(const T* x,
                                                                int64_t N) {
  // shift by a division rather than a product with 1/N: a constant row c
  // (N * c exact) then gets shift == c exactly, so d = 0 and var = 0 exactly,
  // and with eps = 0 the output is 0 * inf = NaN as torch's; with a rounded
  // 1/N the row's var came out tiny but positive and the output 0. The other
  // two stay products: a division adds its latency to every row (4% on fp32
  // 65536 x 64 for this one).
  const acc_t inv_n = acc_t(1) / static_cast<acc_t>(N);
  const acc_t shift =
      row_sums<1, acc_t>(N, [&](auto at) { return std::array{at(x)}; })[0] /
      static_cast<acc_t>(N);
  const auto [sum_d, sum_d2] = row_sums<2, acc_t>(N, [&](auto at) {
    const auto d = at(x) - shift;
    return std::array{d, d * d};
  });
  const acc_t delta = sum_d * inv_n;
  const acc_t var = sum_d2 * inv_n - delta * delta;
  return {shift, delta, std::max(var, acc_t(0))};
}

// RMSNorm's statistic (norm_stats<true>): the mean square, as `var` of a
// RowStats with shift = delta = 0, summed with the same blocked cascade as
// row_stats. rstd = 1 / sqrt(mean(x^2) + eps), torch's rms_norm.
template <bool kRms, typename acc_t, typename T>
__attribute__((always_inline)) inline RowStats<acc_t> norm_stats(const T* x,
                                                                 int64_t N) {
  if constexpr (kRms) {
    const acc_t sum_sq = row_sums<1, acc_t>(N, [&](auto at) {
      const auto v = at(x);
      return std::array{v * v};
    })[0];
    return {acc_t(0), acc_t(0), sum_sq / static_cast<acc_t>(N)};
  } else {
    return row_stats<acc_t>(x, N);
  }
}

// y = ((x - shift) - delta) * rstd * w + b with w, b optional (nullptr when
// absent); RMSNorm (kRms): y = x * rstd * w. The differences come first (see
// row_stats): the shorter x * rstd + (-mean * rstd) cancels catastrophically
// when |mean| >> std.
template <bool kRms, typename Store, typename scalar_t, typename acc_t,
          typename T>
inline void row_affine(const T* x, int64_t N, RowStats<acc_t> st, acc_t rstd,
                       const acc_t* w, const acc_t* b, scalar_t* y) {
  const acc_t shift = st.shift, delta = st.delta;
  auto xhat = [&](auto at) {
    if constexpr (kRms)
      return at(x) * rstd;
    else
      return ((at(x) - shift) - delta) * rstd;
  };
  if (w != nullptr && b != nullptr)
    row_map<acc_t, Store>(N, y,
                          [&](auto at) { return xhat(at) * at(w) + at(b); });
  else if (w != nullptr)
    row_map<acc_t, Store>(N, y, [&](auto at) { return xhat(at) * at(w); });
  else if (b != nullptr)
    row_map<acc_t, Store>(N, y, [&](auto at) { return xhat(at) + at(b); });
  else
    row_map<acc_t, Store>(N, y, [&](auto at) { return xhat(at); });
}

// The forward's load policies (policies.h): NoAdd reads the input row;
// AddResidual forms h = x + residual, added in acc_t and rounded to H,
// writes it to h, and the norm reads that rounded h (from the acc_t scratch
// row, so h is never read back from memory).

// v rounded to H and back (the value an H element holds), for a vector or a
// scalar of acc_t. Vectors of bfloat16 and (with F16C) half stay in
// registers, with the same conversions as store_vec then load_vec: the
// round trip through a stack buffer was a store and a dependent load per
// vector in the add pass, its hottest loop.
template <typename H, typename acc_t, typename V>
inline V rounded_as(V v) {
  if constexpr (std::is_same_v<H, acc_t>) {
    return v;
  } else if constexpr (std::is_same_v<V, acc_t>) {
    H tmp[1];
    store_from_acc(tmp, 0, v);
    return load_as_acc<acc_t>(tmp, 0);
  } else if constexpr (std::is_same_v<H, c10::BFloat16>) {
    const auto bits = bfloat16_bits(v) << 16;
    V out;
    std::memcpy(&out, &bits, sizeof(out));
    return out;
#if defined(FASTLN_AVX2_INTRINSICS)
  } else if constexpr (std::is_same_v<H, c10::Half>) {
    return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
#elif defined(FASTLN_AVX512_INTRINSICS)
  } else if constexpr (std::is_same_v<H, c10::Half>) {
    return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
#endif
  } else {
    H tmp[Simd<acc_t>::kWidth];
    store_vec<H, acc_t>(tmp, v);
    return load_vec<acc_t>(tmp);
  }
}

// Elements [begin, end) of h = x + residual: into `scratch` (acc_t, the
// values h holds) and, with Store, into h.
template <typename Store, typename R, typename H, typename scalar_t,
          typename acc_t>
inline void add_residual_range(const scalar_t* x, const R* res, H* h,
                               acc_t* scratch, int64_t begin, int64_t end) {
  constexpr int64_t W = Simd<acc_t>::kWidth;
  int64_t i = begin;
  for (; i + W <= end; i += W) {
    const auto v =
        rounded_as<H, acc_t>(load_vec<acc_t>(x + i) + load_vec<acc_t>(res + i));
    store_vec<acc_t, acc_t>(scratch + i, v);
    store_exact_vec<H, acc_t, Store>(h + i, v);
  }
  for (; i < end; ++i) {
    const acc_t v = rounded_as<H, acc_t>(load_as_acc<acc_t>(x, i) +
                                         load_as_acc<acc_t>(res, i));
    scratch[i] = v;
    store_from_acc(h, i, v);
  }
}

// Row r of h = x + residual: into `scratch` (N acc_t) and, with Store, into
// h, in one pass over the row (x and residual are read once, h written once;
// the norm then reads scratch). Returns scratch. Streams h as rows_map does.
template <typename Store, typename R, typename H, typename scalar_t,
          typename acc_t>
inline const acc_t* add_residual_row(const scalar_t* x,
                                     const AddResidual<R, H>& add, int64_t r,
                                     int64_t N, acc_t* scratch) {
  const R* res = add.residual + r * N;
  H* h = add.h + r * N;
  const int64_t head =
      std::is_same_v<Store, StreamStore> ? stream_head(h, N) : int64_t{-1};
  split_at_stream_head<Store>(
      head, N, [&](auto store, int64_t begin, int64_t end) {
        add_residual_range<decltype(store)>(x, res, h, scratch, begin, end);
      });
  return scratch;
}

// Forward over rows [row_begin, row_end). `scratch` holds N acc_t (used only
// when the row is not read in place: !kReadInPlace<scalar_t>, or a fused
// add); stream: write y (and h) with StreamStore. mean_out is unused for
// RMSNorm.
template <bool kRms, typename Store, typename Load, typename scalar_t,
          typename acc_t>
void forward_rows_impl(const scalar_t* x, const Load& load, const acc_t* w,
                       const acc_t* b, scalar_t* y, acc_t* mean_out,
                       acc_t* rstd_out, int64_t N, acc_t eps, int64_t row_begin,
                       int64_t row_end, acc_t* scratch) {
  auto row = [&](int64_t r, const auto* xr) {
    const RowStats<acc_t> st = norm_stats<kRms, acc_t>(xr, N);
    const acc_t rstd = acc_t(1) / std::sqrt(st.var + eps);
    row_affine<kRms, Store>(xr, N, st, rstd, w, b, y + r * N);
    if constexpr (!kRms) mean_out[r] = st.shift + st.delta;
    rstd_out[r] = rstd;
  };
  for (int64_t r = row_begin; r < row_end; ++r) {
    if constexpr (!std::is_same_v<Load, NoAdd>)
      row(r, add_residual_row<Store>(x + r * N, load, r, N, scratch));
    else if constexpr (kReadInPlace<scalar_t>)
      row(r, x + r * N);
    else
      row(r, row_as_acc(x + r * N, N, scratch));
  }
  if constexpr (std::is_same_v<Store, StreamStore>) stream_fence();
}

template <bool kRms, typename Load, typename scalar_t, typename acc_t>
FASTLN_FLATTEN void forward_rows(const scalar_t* x, const Load& load,
                                 const acc_t* w, const acc_t* b, scalar_t* y,
                                 acc_t* mean_out, acc_t* rstd_out, int64_t N,
                                 acc_t eps, int64_t row_begin, int64_t row_end,
                                 acc_t* scratch, bool stream) {
  if (stream)
    forward_rows_impl<kRms, StreamStore>(x, load, w, b, y, mean_out, rstd_out,
                                         N, eps, row_begin, row_end, scratch);
  else
    forward_rows_impl<kRms, PlainStore>(x, load, w, b, y, mean_out, rstd_out, N,
                                        eps, row_begin, row_end, scratch);
}

// Backward over rows [row_begin, row_end).
//
// With xhat = (x - mean) * rstd and g = dy * w (g = dy without weight), the
// gradient of y = xhat * w + b through the row statistics is
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
// and the parameter gradients are column sums over rows:
//   dweight = sum_rows(dy * xhat),  dbias = sum_rows(dy).
// The saved mean is rounded to acc_t, which for |mean| >> std is off by a
// good fraction of a std (see row_stats); the first pass therefore also sums
// d = x - mean, whose average `delta` corrects it: xhat = (d - delta) * rstd.
// RMSNorm (kRms): xhat = x * rstd and dx = rstd * (g - xhat * mean(g * xhat)),
// dweight alone (no bias). The fused add (add_norm_bwd) reads h as x and
// adds grad_h to dx (the GradH store policy): dx is then the gradient of
// both the input and the residual.
// Writes dx for every row and, when kParamGrads, adds the rows' dy * xhat
// and dy column sums into dw_acc and db_acc (N acc_t each; db_acc unused for
// RMSNorm). The variants are compile-time so that the per-element loop has
// no branch.

// Rows whose second pass runs together: w, dw_acc and db_acc are then loaded
// and dw_acc/db_acc stored once per kTileRows rows, the tile's terms summed
// pairwise first. That traffic was most of the second pass (5 loads and 3
// stores per element for one row; 4.25 / 1.5 for four), and the sums of
// short rows gained more than a third on AMD EPYC (fp32 65536 x 64). Four
// rows of two vectors each keep the results in 8 of the 16 AVX2 registers.
constexpr int64_t kTileRows = 4;
// Tiles only for rows of at most kTileMaxRowBytes, whose tile is one short
// contiguous stretch of memory, or for rows of 16-bit x and dy, which pass 2
// reads from their acc_t copies in scratch (cached) rather than from memory.
// Longer rows read in place are a stream each (x, dy and dx of four rows:
// twelve), which measured 1.3-1.6x slower at one thread on AMD EPYC (fp32
// 4096 x 768 and 8192 x 384) than one row at a time.
constexpr int64_t kTileMaxRowBytes = 1024;

// What pass 2 needs of a row: its pass-1 results.
template <typename acc_t>
struct RowGrad {
  acc_t mu, delta, rs, mean_g, c;
};

// Pass 1 of one row: sum(d), sum(g) and sum(g * d) (RMSNorm: sum(g * x)).
// xr and dyr hold the row of x and dy, in place (kReadInPlace) or as acc_t
// copies.
template <bool kRms, bool kHasWeight, typename acc_t, typename T, typename G>
__attribute__((always_inline)) inline RowGrad<acc_t> backward_row_pass1(
    const T* xr, const G* dyr, acc_t mu, acc_t rs, const acc_t* w, int64_t N) {
  const acc_t inv_n = acc_t(1) / static_cast<acc_t>(N);
  auto g_of = [&](auto at) {
    if constexpr (kHasWeight)
      return at(dyr) * at(w);
    else
      return at(dyr);
  };
  if constexpr (kRms) {
    const acc_t sum_gx = row_sums<1, acc_t>(
        N, [&](auto at) { return std::array{g_of(at) * at(xr)}; })[0];
    // mean(g * xhat) = rstd * sum(g * x) / N; c = rs * mean(g * xhat).
    return {acc_t(0), acc_t(0), rs, acc_t(0), rs * rs * sum_gx * inv_n};
  } else {
    const auto [sum_d, sum_g, sum_gd] = row_sums<3, acc_t>(N, [&](auto at) {
      const auto d = at(xr) - mu;
      const auto g = g_of(at);
      return std::array{d, g, g * d};
    });
    const acc_t delta = sum_d * inv_n;
    const acc_t mean_g = sum_g * inv_n;
    // mean(g * xhat) = rstd * (sum(g * d) - delta * sum(g)) / N; pass 2 takes
    // dx = (g - mean_g) * rs - xhat * c with c = rs * mean(g * xhat).
    const acc_t mean_gx = rs * (sum_gd - delta * sum_g) * inv_n;
    return {mu, delta, rs, mean_g, rs * mean_gx};
  }
}

// The backward's store policies for dx (policies.h): NoGradH writes the
// norm's input gradient; GradH (add_norm_bwd) adds grad_h, of dx's type.

// A row of x or dy as the kernels read it: in place (kReadInPlace) or as an
// acc_t copy in `buf` (N acc_t).
template <typename T, typename acc_t>
inline auto row_for_read(const T* p, int64_t N, acc_t* buf) {
  using R = std::conditional_t<kReadInPlace<T>, T, acc_t>;
  if constexpr (kReadInPlace<T>)
    return static_cast<const R*>(p);
  else
    return static_cast<const R*>(row_as_acc(p, N, buf));
}

// Pass 1 and 2 of R consecutive rows from `first`. dy has type G, x and dx
// type scalar_t (they differ for a fused add under a float32 h).
template <size_t R, bool kRms, bool kHasWeight, bool kParamGrads,
          typename Store, typename DH, typename scalar_t, typename G,
          typename acc_t>
inline void backward_tile(const G* dy, const scalar_t* x, const acc_t* mean,
                          const acc_t* rstd, const acc_t* w, const DH& dh,
                          scalar_t* dx, acc_t* dw_acc, acc_t* db_acc, int64_t N,
                          int64_t first, acc_t* scratch) {
  using TX = std::conditional_t<kReadInPlace<scalar_t>, scalar_t, acc_t>;
  using TG = std::conditional_t<kReadInPlace<G>, G, acc_t>;
  std::array<const TX*, R> xr;
  std::array<const TG*, R> dyr;
  std::array<scalar_t*, R> dxr;
  std::array<RowGrad<acc_t>, R> k;
  for (size_t r = 0; r < R; ++r) {
    const int64_t row = first + static_cast<int64_t>(r);
    xr[r] = row_for_read(x + row * N, N, scratch + 2 * r * N);
    dyr[r] = row_for_read(dy + row * N, N, scratch + (2 * r + 1) * N);
    dxr[r] = dx + row * N;
    const acc_t mu = kRms ? acc_t(0) : mean[row];
    k[r] = backward_row_pass1<kRms, kHasWeight>(xr[r], dyr[r], mu, rstd[row], w,
                                                N);
  }
  rows_map<acc_t, R, Store>(N, dxr, [&](auto at) {
    using V = decltype(at(w));
    std::array<V, R> out, dw_terms, db_terms;
    for (size_t r = 0; r < R; ++r) {
      const V dy_i = at(dyr[r]);
      V xhat;
      if constexpr (kRms)
        xhat = at(xr[r]) * k[r].rs;
      else
        xhat = ((at(xr[r]) - k[r].mu) - k[r].delta) * k[r].rs;
      V g = dy_i;
      if constexpr (kHasWeight) g = g * at(w);
      if constexpr (kRms)
        out[r] = g * k[r].rs - xhat * k[r].c;
      else
        out[r] = (g - k[r].mean_g) * k[r].rs - xhat * k[r].c;
      if constexpr (!std::is_same_v<DH, NoGradH>)
        out[r] = out[r] + at(dh.grad_h + (first + static_cast<int64_t>(r)) * N);
      dw_terms[r] = dy_i * xhat;
      db_terms[r] = dy_i;
    }
    if constexpr (kParamGrads) {
      at.add(dw_acc, pairwise_sum(dw_terms));
      if constexpr (!kRms) at.add(db_acc, pairwise_sum(db_terms));
    }
    return out;
  });
}

// `scratch` holds 2 * kTileRows * N acc_t (used only for rows not read in
// place).
template <bool kRms, bool kHasWeight, bool kParamGrads, typename Store,
          typename DH, typename scalar_t, typename G, typename acc_t>
void backward_rows_impl(const G* dy, const scalar_t* x, const acc_t* mean,
                        const acc_t* rstd, const acc_t* w, const DH& dh,
                        scalar_t* dx, acc_t* dw_acc, acc_t* db_acc, int64_t N,
                        int64_t row_begin, int64_t row_end, acc_t* scratch) {
  int64_t r = row_begin;
  // Tiles add their rows' terms to dw_acc/db_acc in another order than rows
  // one at a time, so the choice must not depend on Store: whether dx is
  // streamed depends on the thread count (stream_threshold), and dweight /
  // dbias must not. (Choosing single rows for streamed 16-bit rows whose
  // length is not a multiple of 64 bytes made a bfloat16 dweight of 3001 x
  // 257 differ between 1 and 3 threads on a 512 KiB-L2 host.) A streamed
  // tile of rows at different 64-byte phases writes dx plainly (rows_map).
  if (N * static_cast<int64_t>(sizeof(acc_t)) <= kTileMaxRowBytes ||
      (!kReadInPlace<scalar_t> && !kReadInPlace<G>)) {
    for (; r + kTileRows <= row_end; r += kTileRows)
      backward_tile<kTileRows, kRms, kHasWeight, kParamGrads, Store>(
          dy, x, mean, rstd, w, dh, dx, dw_acc, db_acc, N, r, scratch);
  }
  for (; r < row_end; ++r)
    backward_tile<1, kRms, kHasWeight, kParamGrads, Store>(
        dy, x, mean, rstd, w, dh, dx, dw_acc, db_acc, N, r, scratch);
  if constexpr (std::is_same_v<Store, StreamStore>) stream_fence();
}

// f(std::true_type) or f(std::false_type): a run-time flag as a compile-time
// variant.
template <typename F>
inline void with_flag(bool flag, const F& f) {
  if (flag)
    f(std::true_type{});
  else
    f(std::false_type{});
}

// dw_acc is given when dweight/dbias are wanted (db_acc too, unless kRms),
// else nullptr; stream: write dx with StreamStore.
template <bool kRms, typename DH, typename scalar_t, typename G, typename acc_t>
FASTLN_FLATTEN void backward_rows(const G* dy, const scalar_t* x,
                                  const acc_t* mean, const acc_t* rstd,
                                  const acc_t* w, const DH& dh, scalar_t* dx,
                                  acc_t* dw_acc, acc_t* db_acc, int64_t N,
                                  int64_t row_begin, int64_t row_end,
                                  acc_t* scratch, bool stream) {
  with_flag(stream, [&](auto streamed) {
    using Store =
        std::conditional_t<decltype(streamed)::value, StreamStore, PlainStore>;
    with_flag(w != nullptr, [&](auto has_weight) {
      with_flag(dw_acc != nullptr, [&](auto param_grads) {
        backward_rows_impl<kRms, decltype(has_weight)::value,
                           decltype(param_grads)::value, Store>(
            dy, x, mean, rstd, w, dh, dx, dw_acc, db_acc, N, row_begin, row_end,
            scratch);
      });
    });
  });
}
