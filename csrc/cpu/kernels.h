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

// Mean and biased variance of a row by two passes (the mean, then the
// centered sum of squares): unlike E[x^2] - E[x]^2 this keeps full accuracy
// for rows with a large offset, and the row is in cache for the second pass.
template <typename acc_t>
inline void row_moments(const acc_t* x, int64_t N, acc_t& mean, acc_t& var) {
  acc_t lanes[kLanes] = {};
  const int64_t body = N - N % kLanes;
  for (int64_t i = 0; i < body; i += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) lanes[j] += x[i + j];
  for (int64_t i = body; i < N; ++i) lanes[i - body] += x[i];
  mean = sum_lanes(lanes) / static_cast<acc_t>(N);

  for (int64_t j = 0; j < kLanes; ++j) lanes[j] = 0;
  for (int64_t i = 0; i < body; i += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) {
      const acc_t d = x[i + j] - mean;
      lanes[j] += d * d;
    }
  for (int64_t i = body; i < N; ++i) {
    const acc_t d = x[i] - mean;
    lanes[i - body] += d * d;
  }
  var = sum_lanes(lanes) / static_cast<acc_t>(N);
}

// y = (x - mean) * rstd * w + b with w, b optional (nullptr when absent).
// x - mean is formed first: the shorter x * rstd + (-mean * rstd) cancels
// catastrophically when |mean| >> std (a row of 1e4 + noise in float32).
template <typename scalar_t, typename acc_t>
inline void row_affine(const acc_t* x, int64_t N, acc_t mean, acc_t rstd,
                       const acc_t* w, const acc_t* b, scalar_t* y) {
  if (w != nullptr && b != nullptr) {
    for (int64_t i = 0; i < N; ++i)
      y[i] = static_cast<scalar_t>((x[i] - mean) * rstd * w[i] + b[i]);
  } else if (w != nullptr) {
    for (int64_t i = 0; i < N; ++i)
      y[i] = static_cast<scalar_t>((x[i] - mean) * rstd * w[i]);
  } else if (b != nullptr) {
    for (int64_t i = 0; i < N; ++i)
      y[i] = static_cast<scalar_t>((x[i] - mean) * rstd + b[i]);
  } else {
    for (int64_t i = 0; i < N; ++i)
      y[i] = static_cast<scalar_t>((x[i] - mean) * rstd);
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
    acc_t mean, var;
    row_moments(xr, N, mean, var);
    const acc_t rstd = acc_t(1) / std::sqrt(var + eps);
    row_affine(xr, N, mean, rstd, w, b, y + r * N);
    mean_out[r] = mean;
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

    if (dw_acc != nullptr)
      for (int64_t i = 0; i < N; ++i) dw_acc[i] += dyr[i] * ((xr[i] - mu) * rs);
    if (db_acc != nullptr)
      for (int64_t i = 0; i < N; ++i) db_acc[i] += dyr[i];
    if (dx == nullptr) continue;

    // sum(g) and sum(g * xhat), with g = dy * w.
    acc_t lanes_g[kLanes] = {};
    acc_t lanes_gx[kLanes] = {};
    if (w != nullptr) {
      for (int64_t i = 0; i < body; i += kLanes)
        for (int64_t j = 0; j < kLanes; ++j) {
          const acc_t g = dyr[i + j] * w[i + j];
          lanes_g[j] += g;
          lanes_gx[j] += g * ((xr[i + j] - mu) * rs);
        }
      for (int64_t i = body; i < N; ++i) {
        const acc_t g = dyr[i] * w[i];
        lanes_g[i - body] += g;
        lanes_gx[i - body] += g * ((xr[i] - mu) * rs);
      }
    } else {
      for (int64_t i = 0; i < body; i += kLanes)
        for (int64_t j = 0; j < kLanes; ++j) {
          lanes_g[j] += dyr[i + j];
          lanes_gx[j] += dyr[i + j] * ((xr[i + j] - mu) * rs);
        }
      for (int64_t i = body; i < N; ++i) {
        lanes_g[i - body] += dyr[i];
        lanes_gx[i - body] += dyr[i] * ((xr[i] - mu) * rs);
      }
    }
    const acc_t mean_g = sum_lanes(lanes_g) * inv_n;
    const acc_t mean_gx = sum_lanes(lanes_gx) * inv_n;

    // dx = rstd * (g - mean_g - xhat * mean_gx) = g * rs + (x - mu) * p + q
    // with p = -rs^2 * mean_gx and q = -rs * mean_g. x - mu is formed first
    // (not x * p + mu * ...) so that rows with a large offset do not cancel.
    const acc_t p = -rs * rs * mean_gx;
    const acc_t q = -rs * mean_g;
    scalar_t* dxr = dx + r * N;
    if (w != nullptr) {
      for (int64_t i = 0; i < N; ++i)
        dxr[i] =
            static_cast<scalar_t>(dyr[i] * w[i] * rs + (xr[i] - mu) * p + q);
    } else {
      for (int64_t i = 0; i < N; ++i)
        dxr[i] = static_cast<scalar_t>(dyr[i] * rs + (xr[i] - mu) * p + q);
    }
  }
}
