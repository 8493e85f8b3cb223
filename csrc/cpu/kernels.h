// Row kernels of the CPU backend. This file is included more than once by
// layer_norm_cpu.cpp, each time inside a different namespace and compiler
// target (baseline, AVX2+FMA, ...), so it has no include guard and includes
// nothing: everything it uses is included by the including file first.
//
// Conventions: M rows of N elements, row-major and contiguous; acc_t is the
// accumulation type (float for float/half/bfloat16, double for double).
// Loops are written so that the compiler vectorizes them without
// -ffast-math: element-wise loops are plain, and every reduction keeps
// kLanes independent partial sums that are combined in a fixed order at the
// end, which is also what makes the results independent of the thread count.

// 16 partial sums fill two AVX2 registers (or one AVX-512 register) of
// float, enough independent adds to hide the latency of the FP adder.
constexpr int64_t kLanes = 16;

template <typename acc_t>
inline acc_t sum_lanes(const acc_t* lanes) {
  // Pairwise, in a fixed order.
  acc_t tmp[kLanes];
  for (int64_t j = 0; j < kLanes; ++j) tmp[j] = lanes[j];
  for (int64_t width = kLanes / 2; width >= 1; width /= 2)
    for (int64_t j = 0; j < width; ++j) tmp[j] += tmp[j + width];
  return tmp[0];
}

// Returns x converted to acc_t: the row itself when no conversion is needed,
// otherwise `buf` filled with the converted values.
template <typename scalar_t, typename acc_t>
inline const acc_t* row_as_acc(const scalar_t* x, int64_t N, acc_t* buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return x;
  } else {
    for (int64_t i = 0; i < N; ++i) buf[i] = static_cast<acc_t>(x[i]);
    return buf;
  }
}

// Sum of x[i] - shift over a row, in kLanes partial sums.
template <typename acc_t>
inline acc_t row_sum_shifted(const acc_t* x, int64_t N, acc_t shift) {
  acc_t lanes[kLanes] = {};
  const int64_t body = N - N % kLanes;
  for (int64_t i = 0; i < body; i += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) lanes[j] += x[i + j] - shift;
  for (int64_t i = body; i < N; ++i) lanes[i - body] += x[i] - shift;
  return sum_lanes(lanes);
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

template <typename acc_t>
inline RowStats<acc_t> row_stats(const acc_t* x, int64_t N) {
  const acc_t inv_n = acc_t(1) / static_cast<acc_t>(N);
  const acc_t shift = row_sum_shifted(x, N, acc_t(0)) * inv_n;
  acc_t lanes_d[kLanes] = {};
  acc_t lanes_d2[kLanes] = {};
  const int64_t body = N - N % kLanes;
  for (int64_t i = 0; i < body; i += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) {
      const acc_t d = x[i + j] - shift;
      lanes_d[j] += d;
      lanes_d2[j] += d * d;
    }
  for (int64_t i = body; i < N; ++i) {
    const acc_t d = x[i] - shift;
    lanes_d[i - body] += d;
    lanes_d2[i - body] += d * d;
  }
  const acc_t delta = sum_lanes(lanes_d) * inv_n;
  const acc_t var = sum_lanes(lanes_d2) * inv_n - delta * delta;
  return {shift, delta, std::max(var, acc_t(0))};
}

// y = ((x - shift) - delta) * rstd * w + b with w, b optional (nullptr when
// absent). The differences come first (see row_stats): the shorter
// x * rstd + (-mean * rstd) cancels catastrophically when |mean| >> std.
template <typename scalar_t, typename acc_t>
inline void row_affine(const acc_t* x, int64_t N, RowStats<acc_t> st,
                       acc_t rstd, const acc_t* w, const acc_t* b,
                       scalar_t* y) {
  const acc_t shift = st.shift, delta = st.delta;
  if (w != nullptr && b != nullptr) {
    for (int64_t i = 0; i < N; ++i)
      y[i] =
          static_cast<scalar_t>(((x[i] - shift) - delta) * rstd * w[i] + b[i]);
  } else if (w != nullptr) {
    for (int64_t i = 0; i < N; ++i)
      y[i] = static_cast<scalar_t>(((x[i] - shift) - delta) * rstd * w[i]);
  } else if (b != nullptr) {
    for (int64_t i = 0; i < N; ++i)
      y[i] = static_cast<scalar_t>(((x[i] - shift) - delta) * rstd + b[i]);
  } else {
    for (int64_t i = 0; i < N; ++i)
      y[i] = static_cast<scalar_t>(((x[i] - shift) - delta) * rstd);
  }
}

// Forward over rows [row_begin, row_end). `scratch` holds N acc_t (used only
// when scalar_t != acc_t).
template <typename scalar_t, typename acc_t>
void forward_rows(const scalar_t* x, const acc_t* w, const acc_t* b,
                  scalar_t* y, acc_t* mean_out, acc_t* rstd_out, int64_t N,
                  acc_t eps, int64_t row_begin, int64_t row_end,
                  acc_t* scratch) {
  for (int64_t r = row_begin; r < row_end; ++r) {
    const acc_t* xr = row_as_acc(x + r * N, N, scratch);
    const RowStats<acc_t> st = row_stats(xr, N);
    const acc_t rstd = acc_t(1) / std::sqrt(st.var + eps);
    row_affine(xr, N, st, rstd, w, b, y + r * N);
    mean_out[r] = st.shift + st.delta;
    rstd_out[r] = rstd;
  }
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
// This function adds its rows' column sums into dw_acc / db_acc (N acc_t
// each, nullptr when not wanted) and writes dx (nullptr when not wanted).
// `scratch` holds 2 * N acc_t.
template <typename scalar_t, typename acc_t>
void backward_rows(const scalar_t* dy, const scalar_t* x, const acc_t* mean,
                   const acc_t* rstd, const acc_t* w, scalar_t* dx,
                   acc_t* dw_acc, acc_t* db_acc, int64_t N, int64_t row_begin,
                   int64_t row_end, acc_t* scratch) {
  const int64_t body = N - N % kLanes;
  const acc_t inv_n = acc_t(1) / static_cast<acc_t>(N);
  for (int64_t r = row_begin; r < row_end; ++r) {
    const acc_t* xr = row_as_acc(x + r * N, N, scratch);
    const acc_t* dyr = row_as_acc(dy + r * N, N, scratch + N);
    const acc_t mu = mean[r];
    const acc_t rs = rstd[r];

    // Pass 1: sum(d), sum(g) and sum(g * d).
    acc_t lanes_d[kLanes] = {};
    acc_t lanes_g[kLanes] = {};
    acc_t lanes_gd[kLanes] = {};
    for (int64_t i = 0; i < body; i += kLanes)
      for (int64_t j = 0; j < kLanes; ++j) {
        const acc_t d = xr[i + j] - mu;
        const acc_t g = w != nullptr ? dyr[i + j] * w[i + j] : dyr[i + j];
        lanes_d[j] += d;
        lanes_g[j] += g;
        lanes_gd[j] += g * d;
      }
    for (int64_t i = body; i < N; ++i) {
      const acc_t d = xr[i] - mu;
      const acc_t g = w != nullptr ? dyr[i] * w[i] : dyr[i];
      lanes_d[i - body] += d;
      lanes_g[i - body] += g;
      lanes_gd[i - body] += g * d;
    }
    const acc_t delta = sum_lanes(lanes_d) * inv_n;
    const acc_t sum_g = sum_lanes(lanes_g);
    const acc_t mean_g = sum_g * inv_n;
    // mean(g * xhat) = rstd * (sum(g * d) - delta * sum(g)) / N.
    const acc_t mean_gx = rs * (sum_lanes(lanes_gd) - delta * sum_g) * inv_n;

    // Pass 2: dx = (g - mean_g) * rs - xhat * (rs * mean_gx), and the
    // parameter-gradient column sums.
    const acc_t c = rs * mean_gx;
    scalar_t* dxr = dx != nullptr ? dx + r * N : nullptr;
    for (int64_t i = 0; i < N; ++i) {
      const acc_t xhat = ((xr[i] - mu) - delta) * rs;
      if (dw_acc != nullptr) dw_acc[i] += dyr[i] * xhat;
      if (db_acc != nullptr) db_acc[i] += dyr[i];
      if (dxr != nullptr) {
        const acc_t g = w != nullptr ? dyr[i] * w[i] : dyr[i];
        dxr[i] = static_cast<scalar_t>((g - mean_g) * rs - xhat * c);
      }
    }
  }
}
