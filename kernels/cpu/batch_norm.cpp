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
#include <vector>

#include "batch_norm.h"
#include "cpu_common.h"

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
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t c = 0; c < s.C; ++c) {
    double sum = 0;
    for (int64_t n = 0; n < s.N; ++n) sum += row_sum(x + (n * s.C + c) * s.L, s.L);
    const T rounded = static_cast<T>(sum / M);
    double dev = 0, sq = 0;
    for (int64_t n = 0; n < s.N; ++n)
      row_deviation_sums(x + (n * s.C + c) * s.L, s.L, rounded, &dev, &sq);
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
    for (int64_t n = 0; n < s.N; ++n) {
      const int64_t offset = (n * s.C + c) * s.L;
      row_grad_sums(dy + offset, x + offset, s.L, mean[c], &g, &gd);
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
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t r = 0; r < s.N * s.C; ++r) {
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
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t r = 0; r < s.N * s.C; ++r) {
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
