// batch_norm on the CPU, float and double, in both layouts of batch_norm.h. The formulas are
// in batch_norm.h.
//
// Each call is a per-channel reduction (statistics; backward sums) then an elementwise pass
// (y = (x - mean) * scale + bias; dx), each with its own OpenMP loop:
//   planar (NCHW): a row is L values of one channel. Reductions run in parallel over channels,
//     the elementwise pass over the N * C rows (so a few channels still use every thread).
//   channels-last: a row is the C channels of one position. Both passes run in parallel over
//     blocks of rows, vectorised along the channels; each block sums into its own per-channel
//     accumulators, which are then added in block order.
// Sums are kept in double. Planar statistics take two passes over a channel: the mean, then
// the deviations d = x - m from the rounded mean m, summed in T in chunks (vectorised) whose
// partial sums join a double; var = (sum d^2 - (sum d)^2 / M) / M is exact whatever the
// rounding of m (the corrected two-pass algorithm). Channels-last statistics take one pass:
// d = x - K with K the first row, formed and summed in double, and the same formula; with
// double sums the shift K needs only be near the data, not at its mean.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "batch_norm.h"
#include "cpu_common.h"
#include "cpu_simd.h"

namespace cnnops {
namespace {

constexpr int64_t kChunk = 1024;  // planar: elements summed in T before joining a double

// ---- planar rows (one channel, scalar coefficients) -----------------------------------------

template <typename T>
CNNOPS_SIMD_CLONES double row_sum(const T* x, int64_t n) {
  double total = 0;
  for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
    const int64_t i1 = std::min(n, i0 + kChunk);
    T part = 0;
#pragma omp simd reduction(+ : part)
    for (int64_t i = i0; i < i1; ++i) part += x[i];
    total += part;
  }
  return total;
}

// Adds sum(x - m) and sum((x - m)^2) of the row.
template <typename T>
CNNOPS_SIMD_CLONES void row_deviation_sums(const T* x, int64_t n, T m, double* sum_dev,
                                           double* sum_sq) {
  for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
    const int64_t i1 = std::min(n, i0 + kChunk);
    T dev = 0, sq = 0;
#pragma omp simd reduction(+ : dev, sq)
    for (int64_t i = i0; i < i1; ++i) {
      const T d = x[i] - m;
      dev += d;
      sq += d * d;
    }
    *sum_dev += dev;
    *sum_sq += sq;
  }
}

// Adds sum(dy) and sum(dy * (x - m)) of the row.
template <typename T>
CNNOPS_SIMD_CLONES void row_grad_sums(const T* dy, const T* x, int64_t n, T m, double* sum_dy,
                                      double* sum_dy_dev) {
  for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
    const int64_t i1 = std::min(n, i0 + kChunk);
    T g = 0, gd = 0;
#pragma omp simd reduction(+ : g, gd)
    for (int64_t i = i0; i < i1; ++i) {
      g += dy[i];
      gd += dy[i] * (x[i] - m);
    }
    *sum_dy += g;
    *sum_dy_dev += gd;
  }
}

// y = (x - m) * scale + shift. Subtracting first keeps float data far from zero accurate: x - m
// is exact when x and m are close, where x * scale + (shift - m * scale) would round a large
// product.
template <typename T>
CNNOPS_SIMD_CLONES void row_affine(const T* __restrict__ x, int64_t n, T m, T scale, T shift,
                                   T* __restrict__ y) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - m) * scale + shift;
}

// Training dx = (dy - (x - m) * k - mean_dy) * a, with k = invstd^2 * sum(dy (x - m)) / M,
// mean_dy = sum(dy) / M and a = invstd * weight.
template <typename T>
CNNOPS_SIMD_CLONES void row_grad_input(const T* __restrict__ dy, const T* __restrict__ x,
                                       int64_t n, T m, T k, T mean_dy, T a,
                                       T* __restrict__ dx) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dx[i] = (dy[i] - (x[i] - m) * k - mean_dy) * a;
}

// ---- planar channels of short rows (L <= kChunk) ---------------------------------------------
// A call per row costs about as much as the row's work when rows are short (LeNet-BN's second
// batch norm: 16 x 8 x 8, 4096 rows of 64 values; each call also reduced its vector partial
// sums to a scalar). These walk all N rows of one channel (reductions) or a block of rows
// (elementwise) in one call. The reductions keep two vectors of partial sums in T across rows
// worth at most about kChunk values, which then join a double, as the row functions do (a row
// of kChunk values or more is its own group: the row functions' chunks, one call per row).
constexpr int64_t kShortRow = kChunk + 1;

template <typename T>
using Vec = Vec32<T>;  // cpu_simd.h

// (vectors by reference and out-parameters: a vector return value would change the baseline
// build's ABI, -Wpsabi)
template <typename T>
CNNOPS_INLINE const Vec<T>& load_vec(Vec<T>& v, const T* p) {
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
CNNOPS_INLINE double lanes_sum(const Vec<T>& a, const Vec<T>& b, T tail) {
  const Vec<T> v = a + b;
  T sum = tail;
  for (size_t l = 0; l < sizeof(Vec<T>) / sizeof(T); ++l) sum += v[l];
  return sum;
}

// The reductions below take the rows x + n * stride, n < N, of one channel, in groups of this
// many rows (about kChunk values) whose sums in T join the double.
template <typename T>
CNNOPS_INLINE int64_t rows_per_chunk(int64_t L) { return std::max<int64_t>(1, kChunk / L); }

// sum(x) of one channel.
template <typename T>
CNNOPS_SIMD_CLONES double channel_sum(const T* x, int64_t N, int64_t stride, int64_t L) {
  constexpr int64_t W = sizeof(Vec<T>) / sizeof(T);
  const int64_t full = L / W * W, rows = rows_per_chunk<T>(L);
  double total = 0;
  for (int64_t n0 = 0; n0 < N; n0 += rows) {
    Vec<T> a0 = {}, a1 = {};
    T tail = 0;
    for (int64_t n = n0; n < std::min(N, n0 + rows); ++n) {
      const T* r = x + n * stride;
      int64_t i = 0;
      Vec<T> t, u;
      for (; i + 2 * W <= full; i += 2 * W) a0 += load_vec(t, r + i), a1 += load_vec(u, r + i + W);
      if (i < full) a0 += load_vec(t, r + i);
      for (i = full; i < L; ++i) tail += r[i];
    }
    total += lanes_sum(a0, a1, tail);
  }
  return total;
}

// Adds sum(x - m) and sum((x - m)^2) of one channel.
template <typename T>
CNNOPS_SIMD_CLONES void channel_deviation_sums(const T* x, int64_t N, int64_t stride, int64_t L,
                                               T m, double* sum_dev, double* sum_sq) {
  constexpr int64_t W = sizeof(Vec<T>) / sizeof(T);
  const int64_t full = L / W * W, rows = rows_per_chunk<T>(L);
  for (int64_t n0 = 0; n0 < N; n0 += rows) {
    Vec<T> d0 = {}, d1 = {}, q0 = {}, q1 = {};
    T dev = 0, sq = 0;
    for (int64_t n = n0; n < std::min(N, n0 + rows); ++n) {
      const T* r = x + n * stride;
      int64_t i = 0;
      Vec<T> u, v;
      for (; i + 2 * W <= full; i += 2 * W) {
        load_vec(u, r + i), load_vec(v, r + i + W);
        u -= m, v -= m;
        d0 += u, d1 += v, q0 += u * u, q1 += v * v;
      }
      if (i < full) {
        load_vec(u, r + i);
        u -= m;
        d0 += u, q0 += u * u;
      }
      for (i = full; i < L; ++i) {
        const T d = r[i] - m;
        dev += d;
        sq += d * d;
      }
    }
    *sum_dev += lanes_sum(d0, d1, dev);
    *sum_sq += lanes_sum(q0, q1, sq);
  }
}

// Adds sum(dy) and sum(dy * (x - m)) of one channel.
template <typename T>
CNNOPS_SIMD_CLONES void channel_grad_sums(const T* dy, const T* x, int64_t N, int64_t stride,
                                          int64_t L, T m, double* sum_dy, double* sum_dy_dev) {
  constexpr int64_t W = sizeof(Vec<T>) / sizeof(T);
  const int64_t full = L / W * W, rows = rows_per_chunk<T>(L);
  for (int64_t n0 = 0; n0 < N; n0 += rows) {
    Vec<T> g0 = {}, g1 = {}, p0 = {}, p1 = {};
    T g = 0, gd = 0;
    for (int64_t n = n0; n < std::min(N, n0 + rows); ++n) {
      const T* d = dy + n * stride;
      const T* r = x + n * stride;
      int64_t i = 0;
      Vec<T> u, v, xu, xv;
      for (; i + 2 * W <= full; i += 2 * W) {
        load_vec(u, d + i), load_vec(v, d + i + W);
        load_vec(xu, r + i), load_vec(xv, r + i + W);
        g0 += u, g1 += v;
        p0 += u * (xu - m), p1 += v * (xv - m);
      }
      if (i < full) {
        load_vec(u, d + i), load_vec(xu, r + i);
        g0 += u, p0 += u * (xu - m);
      }
      for (i = full; i < L; ++i) {
        g += d[i];
        gd += d[i] * (r[i] - m);
      }
    }
    *sum_dy += lanes_sum(g0, g1, g);
    *sum_dy_dev += lanes_sum(p0, p1, gd);
  }
}

// Rows [r0, r1) of the elementwise passes (row r is channel r % C): y = (x - m) * scale + shift,
// or dx = (dy - (x - m) * k - mean_dy) * a (training backward, when dy is not null).
template <typename T>
CNNOPS_SIMD_CLONES void rows_affine(const T* __restrict__ x, int64_t r0, int64_t r1, int64_t C,
                                    int64_t L, const T* m, const T* scale, const T* shift,
                                    T* __restrict__ y) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t c = r % C;
    const T mc = m ? m[c] : T(0), sc = scale[c], bc = shift ? shift[c] : T(0);
    const T* __restrict__ in = x + r * L;
    T* __restrict__ out = y + r * L;
#pragma omp simd
    for (int64_t i = 0; i < L; ++i) out[i] = (in[i] - mc) * sc + bc;
  }
}

template <typename T>
CNNOPS_SIMD_CLONES void rows_grad_input(const T* __restrict__ dy, const T* __restrict__ x,
                                        int64_t r0, int64_t r1, int64_t C, int64_t L,
                                        const T* m, const T* k, const T* mean_dy, const T* a,
                                        T* __restrict__ dx) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t c = r % C;
    const T mc = m[c], kc = k[c], gc = mean_dy[c], ac = a[c];
    const T* __restrict__ d = dy + r * L;
    const T* __restrict__ in = x + r * L;
    T* __restrict__ out = dx + r * L;
#pragma omp simd
    for (int64_t i = 0; i < L; ++i) out[i] = (d[i] - (in[i] - mc) * kc - gc) * ac;
  }
}

// The elementwise passes over N * C short rows: blocks of about kChunk * 4 values a call.
CNNOPS_INLINE int64_t rows_per_block(int64_t L) { return std::max<int64_t>(1, 4 * kChunk / L); }

// ---- channels-last rows (all channels, per-channel coefficients) ----------------------------

// Adds d = x - shift and d^2 per channel, in double.
template <typename T>
CNNOPS_SIMD_CLONES void add_deviations(const T* __restrict__ x, const T* __restrict__ shift,
                                       int64_t C, double* __restrict__ dev,
                                       double* __restrict__ sq) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    const double d = static_cast<double>(x[c]) - shift[c];
    dev[c] += d;
    sq[c] += d * d;
  }
}

template <typename T>
CNNOPS_SIMD_CLONES void add_grad_sums(const T* __restrict__ dy, const T* __restrict__ x,
                                      const T* __restrict__ m, int64_t C,
                                      double* __restrict__ sum_dy,
                                      double* __restrict__ sum_dy_dev) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    const double g = dy[c];
    sum_dy[c] += g;
    sum_dy_dev[c] += g * (x[c] - m[c]);
  }
}

template <typename T>
CNNOPS_SIMD_CLONES void affine_channels(const T* __restrict__ x, const T* __restrict__ m,
                                        const T* __restrict__ scale,
                                        const T* __restrict__ shift, int64_t C,
                                        T* __restrict__ y) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) y[c] = (x[c] - m[c]) * scale[c] + shift[c];
}

template <typename T>
CNNOPS_SIMD_CLONES void grad_input_channels(const T* __restrict__ dy, const T* __restrict__ x,
                                            const T* __restrict__ m, const T* __restrict__ k,
                                            const T* __restrict__ mean_dy,
                                            const T* __restrict__ a, int64_t C,
                                            T* __restrict__ dx) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) dx[c] = (dy[c] - (x[c] - m[c]) * k[c] - mean_dy[c]) * a[c];
}

template <typename T>
CNNOPS_SIMD_CLONES void scale_channels(const T* __restrict__ dy, const T* __restrict__ a,
                                       int64_t C, T* __restrict__ dx) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) dx[c] = dy[c] * a[c];
}

// Per-channel sums over the M rows of a channels-last tensor: `width` accumulators of C
// doubles, out[j * C + c], to which add_row(m, acc) adds row m. Rows are cut into one block
// per thread; each block sums into its own accumulators, added in block order afterwards.
template <typename AddRow>
void reduce_rows(int64_t M, int64_t C, int64_t width, bool parallel, double* out,
                 AddRow add_row) {
  const int64_t blocks = parallel ? std::min<int64_t>(omp_get_max_threads(), M) : 1;
  const int64_t size = width * C;
  std::vector<double> partial(blocks * size, 0.0);
#pragma omp parallel for schedule(static) if (blocks > 1)
  for (int64_t b = 0; b < blocks; ++b) {
    for (int64_t m = M * b / blocks; m < M * (b + 1) / blocks; ++m)
      add_row(m, partial.data() + b * size);
  }
  for (int64_t i = 0; i < size; ++i) {
    double total = 0;
    for (int64_t b = 0; b < blocks; ++b) total += partial[b * size + i];
    out[i] = total;
  }
}

// Batch mean and biased variance per channel.
template <typename T>
void batch_stats(const T* x, const BatchNormShape& s, bool parallel, double* mean,
                 double* var) {
  const int64_t M = s.N * s.L;
  if (s.channels_last) {
    std::vector<double> sums(2 * s.C);
    const T* shift = x;  // the first row
    reduce_rows(M, s.C, 2, parallel, sums.data(), [&](int64_t m, double* acc) {
      add_deviations(x + m * s.C, shift, s.C, acc, acc + s.C);
    });
    for (int64_t c = 0; c < s.C; ++c) {
      const double dev = sums[c], sq = sums[s.C + c];
      mean[c] = shift[c] + dev / M;
      var[c] = std::max(0.0, (sq - dev * dev / M) / M);
    }
    return;
  }
  const bool short_rows = s.L < kShortRow;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t c = 0; c < s.C; ++c) {
    double sum = 0, dev = 0, sq = 0;
    if (short_rows) {
      sum = channel_sum(x + c * s.L, s.N, s.C * s.L, s.L);
    } else {
      for (int64_t n = 0; n < s.N; ++n) sum += row_sum(x + (n * s.C + c) * s.L, s.L);
    }
    const T rounded = static_cast<T>(sum / M);
    if (short_rows) {
      channel_deviation_sums(x + c * s.L, s.N, s.C * s.L, s.L, rounded, &dev, &sq);
    } else {
      for (int64_t n = 0; n < s.N; ++n)
        row_deviation_sums(x + (n * s.C + c) * s.L, s.L, rounded, &dev, &sq);
    }
    mean[c] = rounded + dev / M;
    var[c] = std::max(0.0, (sq - dev * dev / M) / M);
  }
}

// sum(dy) and sum(dy * (x - mean)) per channel.
template <typename T>
void grad_sums(const T* dy, const T* x, const T* mean, const BatchNormShape& s, bool parallel,
               double* sum_dy, double* sum_dy_dev) {
  if (s.channels_last) {
    std::vector<double> sums(2 * s.C);
    reduce_rows(s.N * s.L, s.C, 2, parallel, sums.data(), [&](int64_t m, double* acc) {
      add_grad_sums(dy + m * s.C, x + m * s.C, mean, s.C, acc, acc + s.C);
    });
    std::copy(sums.begin(), sums.begin() + s.C, sum_dy);
    std::copy(sums.begin() + s.C, sums.end(), sum_dy_dev);
    return;
  }
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t c = 0; c < s.C; ++c) {
    double g = 0, gd = 0;
    if (s.L < kShortRow) {
      channel_grad_sums(dy + c * s.L, x + c * s.L, s.N, s.C * s.L, s.L, mean[c], &g, &gd);
    } else {
      for (int64_t n = 0; n < s.N; ++n) {
        const int64_t offset = (n * s.C + c) * s.L;
        row_grad_sums(dy + offset, x + offset, s.L, mean[c], &g, &gd);
      }
    }
    sum_dy[c] = g;
    sum_dy_dev[c] = gd;
  }
}

}  // namespace

template <typename T>
void batch_norm_forward_cpu(const T* input, const T* weight, const T* bias,
                            const T* running_mean, const T* running_var, T* output,
                            T* save_mean, T* save_invstd, T* new_running_mean,
                            T* new_running_var, const BatchNormShape& s, bool training,
                            double momentum, double eps) {
  const int64_t M = s.N * s.L;
  const bool parallel = M * s.C > kParallelWork;
  if (training) {
    std::vector<double> mean(s.C), var(s.C);
    batch_stats(input, s, parallel, mean.data(), var.data());
    for (int64_t c = 0; c < s.C; ++c) {
      save_mean[c] = static_cast<T>(mean[c]);
      save_invstd[c] = static_cast<T>(1.0 / std::sqrt(var[c] + eps));
      if (new_running_mean != nullptr) {
        new_running_mean[c] =
            static_cast<T>((1 - momentum) * running_mean[c] + momentum * mean[c]);
        new_running_var[c] = static_cast<T>((1 - momentum) * running_var[c] +
                                            momentum * var[c] * M / (M - 1));
      }
    }
  } else {
    for (int64_t c = 0; c < s.C; ++c) {
      save_mean[c] = running_mean[c];
      save_invstd[c] = static_cast<T>(1.0 / std::sqrt(static_cast<double>(running_var[c]) + eps));
    }
  }
  std::vector<T> scale(s.C), shift(s.C);
  for (int64_t c = 0; c < s.C; ++c) {
    scale[c] = save_invstd[c] * (weight ? weight[c] : T(1));
    shift[c] = bias ? bias[c] : T(0);
  }
  if (s.channels_last) {
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t m = 0; m < M; ++m)
      affine_channels(input + m * s.C, save_mean, scale.data(), shift.data(), s.C,
                      output + m * s.C);
    return;
  }
  const int64_t rows = s.N * s.C;
  if (s.L < kShortRow) {
    const int64_t block = rows_per_block(s.L);
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t r0 = 0; r0 < rows; r0 += block)
      rows_affine(input, r0, std::min(rows, r0 + block), s.C, s.L, save_mean, scale.data(),
                  shift.data(), output);
    return;
  }
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t c = r % s.C;
    row_affine(input + r * s.L, s.L, save_mean[c], scale[c], shift[c], output + r * s.L);
  }
}

template <typename T>
void batch_norm_backward_cpu(const T* grad_output, const T* input, const T* weight,
                             const T* save_mean, const T* save_invstd, T* grad_input,
                             T* grad_weight, T* grad_bias, const BatchNormShape& s,
                             bool training) {
  const int64_t M = s.N * s.L;
  const bool parallel = M * s.C > kParallelWork;
  const bool input_terms = grad_input != nullptr && training;  // dx needs the two sums
  std::vector<T> k(s.C, T(0)), mean_dy(s.C, T(0)), a(s.C);
  if (grad_weight != nullptr || grad_bias != nullptr || input_terms) {
    std::vector<double> sum_dy(s.C), sum_dy_dev(s.C);
    grad_sums(grad_output, input, save_mean, s, parallel, sum_dy.data(), sum_dy_dev.data());
    for (int64_t c = 0; c < s.C; ++c) {
      const double invstd = save_invstd[c];
      if (grad_bias != nullptr) grad_bias[c] = static_cast<T>(sum_dy[c]);
      if (grad_weight != nullptr) grad_weight[c] = static_cast<T>(sum_dy_dev[c] * invstd);
      if (input_terms) {
        k[c] = static_cast<T>(sum_dy_dev[c] * invstd * invstd / M);
        mean_dy[c] = static_cast<T>(sum_dy[c] / M);
      }
    }
  }
  if (grad_input == nullptr) return;
  for (int64_t c = 0; c < s.C; ++c) a[c] = save_invstd[c] * (weight ? weight[c] : T(1));
  if (s.channels_last) {
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t m = 0; m < M; ++m) {
      const int64_t offset = m * s.C;
      if (training) {
        grad_input_channels(grad_output + offset, input + offset, save_mean, k.data(),
                            mean_dy.data(), a.data(), s.C, grad_input + offset);
      } else {
        scale_channels(grad_output + offset, a.data(), s.C, grad_input + offset);
      }
    }
    return;
  }
  const int64_t rows = s.N * s.C;
  if (s.L < kShortRow) {
    const int64_t block = rows_per_block(s.L);
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t r0 = 0; r0 < rows; r0 += block) {
      const int64_t r1 = std::min(rows, r0 + block);
      if (training) {
        rows_grad_input(grad_output, input, r0, r1, s.C, s.L, save_mean, k.data(),
                        mean_dy.data(), a.data(), grad_input);
      } else {
        rows_affine(grad_output, r0, r1, s.C, s.L, static_cast<const T*>(nullptr), a.data(),
                    static_cast<const T*>(nullptr), grad_input);
      }
    }
    return;
  }
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t c = r % s.C, offset = r * s.L;
    if (training) {
      row_grad_input(grad_output + offset, input + offset, s.L, save_mean[c], k[c], mean_dy[c],
                     a[c], grad_input + offset);
    } else {
      row_affine(grad_output + offset, s.L, T(0), a[c], T(0), grad_input + offset);
    }
  }
}

template void batch_norm_forward_cpu<float>(const float*, const float*, const float*,
                                            const float*, const float*, float*, float*, float*,
                                            float*, float*, const BatchNormShape&, bool, double,
                                            double);
template void batch_norm_forward_cpu<double>(const double*, const double*, const double*,
                                             const double*, const double*, double*, double*,
                                             double*, double*, double*, const BatchNormShape&,
                                             bool, double, double);
template void batch_norm_backward_cpu<float>(const float*, const float*, const float*,
                                             const float*, const float*, float*, float*, float*,
                                             const BatchNormShape&, bool);
template void batch_norm_backward_cpu<double>(const double*, const double*, const double*,
                                              const double*, const double*, double*, double*,
                                              double*, const BatchNormShape&, bool);

}  // namespace cnnops
