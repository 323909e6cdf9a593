// avg_pool2d on the CPU, NCHW contiguous, float and double.
//
// Forward: the window sums of an output row are accumulated tap by tap along the row
// (vectorised, as in conv2d_cpu.cpp), then each is divided by its divisor (index_math.h:
// avg_window / avg_divisor, ATen's clipping). Backward scatters grad / divisor back over the
// same taps; a thread owns whole planes, so no atomics. The divisor factors into a row part
// and a column part; the column parts are computed once per call.
#include <type_traits>
#include <vector>

#include "cpu_common.h"
#include "kernels.h"

namespace cnnops {
namespace {

// Per output column: the padded and the clipped window width (avg_window).
struct ColumnWindows {
  std::vector<int64_t> padded, clipped;
  ColumnWindows(const Pool2dShape& s) : padded(s.OW), clipped(s.OW) {
    for (int64_t ow = 0; ow < s.OW; ++ow) {
      int64_t w0, w1;
      padded[ow] = avg_window(ow, s.W, s.kernel_w, s.stride_w, s.pad_w, &w0, &w1);
      clipped[ow] = w1 - w0;
    }
  }
};

// dst[ow * stride] (or dst[ow]) += src[ow] (or src[ow * stride]) over [lo, hi).
// kStride: the stride when known at compile time (1, 2), else 0 and `stride` is used.
template <typename T, int kStride, bool kScatter>
CNNOPS_INLINE void add_tap(T* __restrict__ dst, const T* __restrict__ src, int64_t lo,
                           int64_t hi, int64_t stride) {
  const int64_t st = kStride ? kStride : stride;
  for (int64_t ow = lo; ow < hi; ++ow) {
    if (kScatter) dst[ow * st] += src[ow];
    else dst[ow] += src[ow * st];
  }
}

// forward (kScatter false): row[ow] += the input under tap (kh, kw) of output ow, for every
// tap; backward (kScatter true): the input under the taps += row[ow].
template <typename T, bool kScatter>
CNNOPS_INLINE void add_taps(std::conditional_t<kScatter, const T*, T*> row,
                            std::conditional_t<kScatter, T*, const T*> plane,
                            const Pool2dShape& s, int64_t oh) {
  int64_t kh_lo, kh_hi;
  valid_taps(oh, s.H, s.kernel_h, s.stride_h, s.pad_h, 1, &kh_lo, &kh_hi);
  for (int64_t kh = kh_lo; kh < kh_hi; ++kh) {
    auto* in_row = plane + (oh * s.stride_h - s.pad_h + kh) * s.W;
    for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
      int64_t lo, hi;
      valid_outputs(s.W, s.OW, s.stride_w, s.pad_w, kw, &lo, &hi);
      auto* in = in_row - s.pad_w + kw;  // in[ow * stride] is tap (kh, kw) of output ow
      T* dst;
      const T* src;
      if constexpr (kScatter) dst = in, src = row;
      else dst = row, src = in;
      if (s.stride_w == 1) add_tap<T, 1, kScatter>(dst, src, lo, hi, 1);
      else if (s.stride_w == 2) add_tap<T, 2, kScatter>(dst, src, lo, hi, 2);
      else add_tap<T, 0, kScatter>(dst, src, lo, hi, s.stride_w);
    }
  }
}

// The divisor of each output of row oh.
template <typename T>
CNNOPS_INLINE void row_divisors(T* divisor, const ColumnWindows& cols, const Pool2dShape& s,
                                int64_t oh, bool count_include_pad, int64_t divisor_override) {
  int64_t h0, h1;
  const int64_t padded_h = avg_window(oh, s.H, s.kernel_h, s.stride_h, s.pad_h, &h0, &h1);
  for (int64_t ow = 0; ow < s.OW; ++ow)
    divisor[ow] = static_cast<T>(avg_divisor(padded_h, cols.padded[ow], h1 - h0,
                                             cols.clipped[ow], count_include_pad,
                                             divisor_override));
}

template <typename T>
CNNOPS_SIMD_CLONES void avg_pool_row(const T* in_plane, T* out_row, T* divisor,
                                     const ColumnWindows& cols, const Pool2dShape& s, int64_t oh,
                                     bool count_include_pad, int64_t divisor_override) {
  for (int64_t ow = 0; ow < s.OW; ++ow) out_row[ow] = T(0);
  add_taps<T, false>(out_row, in_plane, s, oh);
  row_divisors(divisor, cols, s, oh, count_include_pad, divisor_override);
  for (int64_t ow = 0; ow < s.OW; ++ow) out_row[ow] /= divisor[ow];
}

template <typename T>
CNNOPS_SIMD_CLONES void avg_pool_backward_plane(const T* gout_plane, T* gin_plane, T* scaled,
                                                const ColumnWindows& cols, const Pool2dShape& s,
                                                bool count_include_pad,
                                                int64_t divisor_override) {
  for (int64_t i = 0; i < s.H * s.W; ++i) gin_plane[i] = T(0);
  for (int64_t oh = 0; oh < s.OH; ++oh) {
    row_divisors(scaled, cols, s, oh, count_include_pad, divisor_override);
    for (int64_t ow = 0; ow < s.OW; ++ow) scaled[ow] = gout_plane[oh * s.OW + ow] / scaled[ow];
    add_taps<T, true>(scaled, gin_plane, s, oh);
  }
}

}  // namespace

template <typename T>
void avg_pool2d_forward_cpu(const T* input, T* output, const Pool2dShape& s,
                            bool count_include_pad, int64_t divisor_override) {
  const ColumnWindows cols(s);
  const int64_t work = s.planes * s.OH * s.OW * s.kernel_h * s.kernel_w;
#pragma omp parallel if (work > kParallelWork)
  {
    std::vector<T> divisor(s.OW);
#pragma omp for collapse(2) schedule(static)
    for (int64_t p = 0; p < s.planes; ++p)
      for (int64_t oh = 0; oh < s.OH; ++oh)
        avg_pool_row(input + p * s.H * s.W, output + (p * s.OH + oh) * s.OW, divisor.data(),
                     cols, s, oh, count_include_pad, divisor_override);
  }
}

template <typename T>
void avg_pool2d_backward_cpu(const T* grad_output, T* grad_input, const Pool2dShape& s,
                             bool count_include_pad, int64_t divisor_override) {
  const ColumnWindows cols(s);
  const int64_t work = s.planes * s.OH * s.OW * s.kernel_h * s.kernel_w;
#pragma omp parallel if (work > kParallelWork)
  {
    std::vector<T> scaled(s.OW);  // one row of grad_output / divisor
#pragma omp for schedule(static)
    for (int64_t p = 0; p < s.planes; ++p)
      avg_pool_backward_plane(grad_output + p * s.OH * s.OW, grad_input + p * s.H * s.W,
                              scaled.data(), cols, s, count_include_pad, divisor_override);
  }
}

#define CNNOPS_INSTANTIATE(T)                                                             \
  template void avg_pool2d_forward_cpu<T>(const T*, T*, const Pool2dShape&, bool, int64_t); \
  template void avg_pool2d_backward_cpu<T>(const T*, T*, const Pool2dShape&, bool, int64_t);
CNNOPS_INSTANTIATE(float)
CNNOPS_INSTANTIATE(double)
#undef CNNOPS_INSTANTIATE

}  // namespace cnnops
