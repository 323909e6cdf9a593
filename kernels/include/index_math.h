// Index math of convolution and pooling, written once for the C++ and the CUDA kernels.
//
// Along one spatial axis, output position `o` reads input positions
//     i = o * stride - pad + k * dilation,   k = 0 .. kernel - 1
// (d2l 7.3: padding and stride). Everything below is that formula solved for the range of
// o, k or i a loop needs. The output sizes themselves are not computed here: the caller
// (cnnops/shapes.py, the one size rule) passes them in Conv2dShape / Pool2dShape. Under nvcc
// the functions are __host__ __device__; under a plain C++ compiler they are ordinary inline
// functions. All sizes and indices are int64_t.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define CNNOPS_HD __host__ __device__ __forceinline__
#else
#define CNNOPS_HD inline
#endif

namespace cnnops {

CNNOPS_HD int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
CNNOPS_HD int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
CNNOPS_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }  // a >= 0, b > 0

// The outputs o in [*lo, *hi) whose tap at `offset` = k * dilation lands inside the input:
// 0 <= o * stride - pad + offset < size. Loops over o in that range need no bounds checks,
// so the compiler can vectorise them.
CNNOPS_HD void valid_outputs(int64_t size, int64_t out_size, int64_t stride, int64_t pad,
                             int64_t offset, int64_t* lo, int64_t* hi) {
  const int64_t shift = pad - offset;  // o * stride >= shift  and  o * stride < size + shift
  *lo = shift <= 0 ? 0 : ceil_div(shift, stride);
  *hi = size + shift <= 0 ? 0 : min64(out_size, ceil_div(size + shift, stride));
  if (*hi < *lo) *hi = *lo;
}

// The taps k in [*lo, *hi) of output `o`'s window that land inside the input.
CNNOPS_HD void valid_taps(int64_t o, int64_t size, int64_t kernel, int64_t stride, int64_t pad,
                          int64_t dilation, int64_t* lo, int64_t* hi) {
  const int64_t start = o * stride - pad;
  *lo = start >= 0 ? 0 : ceil_div(-start, dilation);
  *hi = start >= size ? 0 : min64(kernel, ceil_div(size - start, dilation));
  if (*hi < *lo) *hi = *lo;
}

// The outputs o in [*lo, *hi) whose window span [o*stride - pad, o*stride - pad + (kernel-1)
// dilation] contains input position i (with dilation > 1 a window may still skip i). Used by
// the gather-style backward kernels: one thread per input element, no atomics.
CNNOPS_HD void covering_outputs(int64_t i, int64_t out_size, int64_t kernel, int64_t stride,
                                int64_t pad, int64_t dilation, int64_t* lo, int64_t* hi) {
  const int64_t extent = dilation * (kernel - 1) + 1;
  *lo = i + pad < extent ? 0 : (i + pad - extent) / stride + 1;
  *hi = min64((i + pad) / stride + 1, out_size);
}

// avg_pool2d's window along one axis, exactly as ATen's AvgPool2d kernels clip it: the end is
// clipped to size + pad first and that length counts for count_include_pad; then both ends are
// clipped to the input. Returns the padded length; [*start, *end) is the input range summed.
CNNOPS_HD int64_t avg_window(int64_t o, int64_t size, int64_t kernel, int64_t stride,
                             int64_t pad, int64_t* start, int64_t* end) {
  int64_t s = o * stride - pad;
  int64_t e = min64(s + kernel, size + pad);
  const int64_t padded_len = e - s;
  *start = max64(s, 0);
  *end = min64(e, size);
  return padded_len;
}

// The divisor of one avg_pool2d output, from avg_window's lengths.
CNNOPS_HD int64_t avg_divisor(int64_t padded_h, int64_t padded_w, int64_t h, int64_t w,
                              bool count_include_pad, int64_t divisor_override) {
  if (divisor_override != 0) return divisor_override;
  return count_include_pad ? padded_h * padded_w : h * w;
}

// Geometry of one conv2d call. Tensors are NCHW contiguous; weight is
// (C_out, C_in / groups, KH, KW). OH, OW come from the caller (cnnops.shapes.conv2d_output_hw).
struct Conv2dShape {
  int64_t N, C_in, H, W;
  int64_t C_out, KH, KW;
  int64_t OH, OW;
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int64_t groups;
};

// Geometry of one pooling call over `planes` = N * C independent (H, W) planes, NCHW
// contiguous. avg_pool2d uses dilation 1. OH, OW come from the caller
// (cnnops.shapes.pool2d_output_hw); with ceil_mode the last window may overhang the input.
struct Pool2dShape {
  int64_t planes, H, W;
  int64_t OH, OW;
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
};

}  // namespace cnnops
