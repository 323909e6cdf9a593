// max_pool2d on the CPU, NCHW contiguous, float and double.
//
// One output row at a time, updated tap by tap (kh, kw) along the row, so the inner loop has
// no bounds checks and vectorises (as in conv2d_cpu.cpp). The scan order per output element
// is PyTorch's (kh, then kw), and so are the rules: a value replaces the running maximum when
// it is greater or NaN (so a NaN in the window wins and the last NaN's index is kept), and
// an all -inf window reports its first in-bounds element. The loop records the winning tap
// kh * KW + kw as an int32 (the same lane width as float, so the select vectorises) and turns
// it into PyTorch's flat index h * W + w per plane after the row is done.
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu_common.h"
#include "kernels.h"

namespace cnnops {
namespace {

// out[ow] = max(out[ow], in[ow * stride]) with PyTorch's NaN rule, tap[ow] = the winner's tap.
// kStride: the stride when known at compile time (1, 2), else 0 and `stride` is used.
template <typename T, int kStride>
CNNOPS_INLINE void max_tap(const T* __restrict__ in, T* __restrict__ out,
                           int32_t* __restrict__ tap, int32_t this_tap, int64_t lo, int64_t hi,
                           int64_t stride) {
  const int64_t st = kStride ? kStride : stride;
  for (int64_t ow = lo; ow < hi; ++ow) {
    const T v = in[ow * st];
    const bool take = v > out[ow] || v != v;  // v != v: NaN
    out[ow] = take ? v : out[ow];
    tap[ow] = take ? this_tap : tap[ow];
  }
}

template <typename T>
CNNOPS_SIMD_CLONES void max_pool_row(const T* in_plane, T* out_row, int64_t* idx_row,
                                     int32_t* tap, const Pool2dShape& s, int64_t oh) {
  int64_t kh_lo, kh_hi;
  valid_taps(oh, s.H, s.kernel_h, s.stride_h, s.pad_h, s.dil_h, &kh_lo, &kh_hi);
  for (int64_t ow = 0; ow < s.OW; ++ow) {
    int64_t kw_lo, kw_hi;
    valid_taps(ow, s.W, s.kernel_w, s.stride_w, s.pad_w, s.dil_w, &kw_lo, &kw_hi);
    out_row[ow] = -std::numeric_limits<T>::infinity();
    tap[ow] = static_cast<int32_t>(kh_lo * s.kernel_w + kw_lo);
  }
  for (int64_t kh = kh_lo; kh < kh_hi; ++kh) {
    const T* in_row = in_plane + (oh * s.stride_h - s.pad_h + kh * s.dil_h) * s.W;
    for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
      int64_t lo, hi;
      valid_outputs(s.W, s.OW, s.stride_w, s.pad_w, kw * s.dil_w, &lo, &hi);
      const T* in = in_row - s.pad_w + kw * s.dil_w;  // in[ow * stride] is tap (kh, kw) of ow
      const int32_t t = static_cast<int32_t>(kh * s.kernel_w + kw);
      if (s.stride_w == 1) max_tap<T, 1>(in, out_row, tap, t, lo, hi, 1);
      else if (s.stride_w == 2) max_tap<T, 2>(in, out_row, tap, t, lo, hi, 2);
      else max_tap<T, 0>(in, out_row, tap, t, lo, hi, s.stride_w);
    }
  }
  for (int64_t ow = 0; ow < s.OW; ++ow) {
    const int64_t kh = tap[ow] / s.kernel_w, kw = tap[ow] % s.kernel_w;
    idx_row[ow] = (oh * s.stride_h - s.pad_h + kh * s.dil_h) * s.W + ow * s.stride_w -
                  s.pad_w + kw * s.dil_w;
  }
}

}  // namespace

template <typename T>
void max_pool2d_forward_cpu(const T* input, T* output, int64_t* indices, const Pool2dShape& s) {
  const int64_t work = s.planes * s.OH * s.OW * s.kernel_h * s.kernel_w;
#pragma omp parallel if (work > kParallelWork)
  {
    std::vector<int32_t> tap(s.OW);  // the winning tap of each output of a row
#pragma omp for collapse(2) schedule(static)
    for (int64_t p = 0; p < s.planes; ++p)
      for (int64_t oh = 0; oh < s.OH; ++oh)
        max_pool_row(input + p * s.H * s.W, output + (p * s.OH + oh) * s.OW,
                     indices + (p * s.OH + oh) * s.OW, tap.data(), s, oh);
  }
}

// grad_input[p, indices[p, o]] += grad_output[p, o]. A thread owns whole planes (no atomics);
// windows overlap when stride < kernel, so one input element may collect several outputs.
template <typename T>
void max_pool2d_backward_cpu(const T* grad_output, const int64_t* indices, T* grad_input,
                             const Pool2dShape& s) {
  const int64_t out_plane = s.OH * s.OW, in_plane = s.H * s.W;
#pragma omp parallel for schedule(static) if (s.planes * (out_plane + in_plane) > kParallelWork)
  for (int64_t p = 0; p < s.planes; ++p) {
    T* gin = grad_input + p * in_plane;
    const T* gout = grad_output + p * out_plane;
    const int64_t* idx = indices + p * out_plane;
    for (int64_t i = 0; i < in_plane; ++i) gin[i] = T(0);
    for (int64_t o = 0; o < out_plane; ++o) gin[idx[o]] += gout[o];
  }
}

template void max_pool2d_forward_cpu<float>(const float*, float*, int64_t*, const Pool2dShape&);
template void max_pool2d_forward_cpu<double>(const double*, double*, int64_t*,
                                             const Pool2dShape&);
template void max_pool2d_backward_cpu<float>(const float*, const int64_t*, float*,
                                             const Pool2dShape&);
template void max_pool2d_backward_cpu<double>(const double*, const int64_t*, double*,
                                              const Pool2dShape&);

}  // namespace cnnops
