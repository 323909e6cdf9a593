// avg_pool2d on CUDA, NCHW contiguous; float, double, half, bfloat16 (summed in float).
//
// Forward: one thread per output element sums its clipped window and divides by the divisor
// of index_math.h (ATen's clipping rules). Backward gathers: one thread per input element
// adds grad / divisor of every output whose window covers it; no atomics.
#include "cuda_common.cuh"

namespace cnnops {
namespace {

template <typename T>
__global__ void avg_pool2d_forward_kernel(const T* __restrict__ input, T* __restrict__ output,
                                          Pool2dShape s, bool count_include_pad,
                                          int64_t divisor_override) {
  using A = acc_t<T>;
  const int64_t total = s.planes * s.OH * s.OW;
  for (int64_t idx = thread_index(); idx < total; idx += grid_stride()) {
    const int64_t ow = idx % s.OW, oh = (idx / s.OW) % s.OH, p = idx / (s.OW * s.OH);
    int64_t h0, h1, w0, w1;
    const int64_t padded_h = avg_window(oh, s.H, s.kernel_h, s.stride_h, s.pad_h, &h0, &h1);
    const int64_t padded_w = avg_window(ow, s.W, s.kernel_w, s.stride_w, s.pad_w, &w0, &w1);
    const T* in_plane = input + p * s.H * s.W;
    A sum = 0;
    for (int64_t ih = h0; ih < h1; ++ih)
      for (int64_t iw = w0; iw < w1; ++iw) sum += to_acc(in_plane[ih * s.W + iw]);
    const int64_t divisor =
        avg_divisor(padded_h, padded_w, h1 - h0, w1 - w0, count_include_pad, divisor_override);
    output[idx] = from_acc<T>(sum / static_cast<A>(divisor));
  }
}

template <typename T>
__global__ void avg_pool2d_grad_input_kernel(const T* __restrict__ grad_output,
                                           T* __restrict__ grad_input, Pool2dShape s,
                                           bool count_include_pad, int64_t divisor_override) {
  using A = acc_t<T>;
  const int64_t total = s.planes * s.H * s.W;
  for (int64_t idx = thread_index(); idx < total; idx += grid_stride()) {
    const int64_t iw = idx % s.W, ih = (idx / s.W) % s.H, p = idx / (s.W * s.H);
    int64_t oh_lo, oh_hi, ow_lo, ow_hi;
    covering_outputs(ih, s.OH, s.kernel_h, s.stride_h, s.pad_h, 1, &oh_lo, &oh_hi);
    covering_outputs(iw, s.OW, s.kernel_w, s.stride_w, s.pad_w, 1, &ow_lo, &ow_hi);
    const T* gout_plane = grad_output + p * s.OH * s.OW;
    A acc = 0;
    for (int64_t oh = oh_lo; oh < oh_hi; ++oh) {
      int64_t h0, h1;
      const int64_t padded_h = avg_window(oh, s.H, s.kernel_h, s.stride_h, s.pad_h, &h0, &h1);
      for (int64_t ow = ow_lo; ow < ow_hi; ++ow) {
        int64_t w0, w1;
        const int64_t padded_w = avg_window(ow, s.W, s.kernel_w, s.stride_w, s.pad_w, &w0, &w1);
        const int64_t divisor = avg_divisor(padded_h, padded_w, h1 - h0, w1 - w0,
                                            count_include_pad, divisor_override);
        acc += to_acc(gout_plane[oh * s.OW + ow]) / static_cast<A>(divisor);
      }
    }
    grad_input[idx] = from_acc<T>(acc);
  }
}

}  // namespace

cudaError_t avg_pool2d_forward_cuda(DType dtype, const void* input, void* output,
                                    const Pool2dShape& s, bool count_include_pad,
                                    int64_t divisor_override, cudaStream_t stream) {
  CNNOPS_CUDA_DISPATCH(dtype, {
    avg_pool2d_forward_kernel<T><<<blocks_for(s.planes * s.OH * s.OW), kThreads, 0, stream>>>(
        static_cast<const T*>(input), static_cast<T*>(output), s, count_include_pad,
        divisor_override);
  })
  return cudaGetLastError();
}

cudaError_t avg_pool2d_grad_input_cuda(DType dtype, const void* grad_output, void* grad_input,
                                     const Pool2dShape& s, bool count_include_pad,
                                     int64_t divisor_override, cudaStream_t stream) {
  CNNOPS_CUDA_DISPATCH(dtype, {
    avg_pool2d_grad_input_kernel<T><<<blocks_for(s.planes * s.H * s.W), kThreads, 0, stream>>>(
        static_cast<const T*>(grad_output), static_cast<T*>(grad_input), s, count_include_pad,
        divisor_override);
  })
  return cudaGetLastError();
}

}  // namespace cnnops
