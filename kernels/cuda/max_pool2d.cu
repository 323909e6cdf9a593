// max_pool2d on CUDA, NCHW contiguous; float, double, half, bfloat16 (compared in float).
//
// Forward: one thread per output element scans its window in PyTorch's order (kh, then kw);
// a value wins when it is greater or NaN, and an all -inf window reports its first in-bounds
// element. Backward gathers: one thread per input element sums the gradients of the outputs
// whose window covers it and whose index names it, so no atomics and a deterministic result.
#include "cuda_common.cuh"

namespace cnnops {
namespace {

template <typename T>
__global__ void max_pool2d_forward_kernel(const T* __restrict__ input, T* __restrict__ output,
                                          int64_t* __restrict__ indices, Pool2dShape s) {
  using A = acc_t<T>;
  const int64_t total = s.planes * s.OH * s.OW;
  for (int64_t idx = thread_index(); idx < total; idx += grid_stride()) {
    const int64_t ow = idx % s.OW, oh = (idx / s.OW) % s.OH, p = idx / (s.OW * s.OH);
    int64_t kh_lo, kh_hi, kw_lo, kw_hi;
    valid_taps(oh, s.H, s.kernel_h, s.stride_h, s.pad_h, s.dil_h, &kh_lo, &kh_hi);
    valid_taps(ow, s.W, s.kernel_w, s.stride_w, s.pad_w, s.dil_w, &kw_lo, &kw_hi);
    const T* in_plane = input + p * s.H * s.W;
    const int64_t ih0 = oh * s.stride_h - s.pad_h, iw0 = ow * s.stride_w - s.pad_w;
    A best = -INFINITY;
    int64_t best_index = (ih0 + kh_lo * s.dil_h) * s.W + iw0 + kw_lo * s.dil_w;
    for (int64_t kh = kh_lo; kh < kh_hi; ++kh) {
      const int64_t ih = ih0 + kh * s.dil_h;
      for (int64_t kw = kw_lo; kw < kw_hi; ++kw) {
        const int64_t iw = iw0 + kw * s.dil_w;
        const A v = to_acc(in_plane[ih * s.W + iw]);
        if (v > best || isnan(v)) {
          best = v;
          best_index = ih * s.W + iw;
        }
      }
    }
    output[idx] = from_acc<T>(best);
    indices[idx] = best_index;
  }
}

template <typename T>
__global__ void max_pool2d_grad_input_kernel(const T* __restrict__ grad_output,
                                           const int64_t* __restrict__ indices,
                                           T* __restrict__ grad_input, Pool2dShape s) {
  using A = acc_t<T>;
  const int64_t total = s.planes * s.H * s.W;
  for (int64_t idx = thread_index(); idx < total; idx += grid_stride()) {
    const int64_t iw = idx % s.W, ih = (idx / s.W) % s.H, p = idx / (s.W * s.H);
    int64_t oh_lo, oh_hi, ow_lo, ow_hi;
    covering_outputs(ih, s.OH, s.kernel_h, s.stride_h, s.pad_h, s.dil_h, &oh_lo, &oh_hi);
    covering_outputs(iw, s.OW, s.kernel_w, s.stride_w, s.pad_w, s.dil_w, &ow_lo, &ow_hi);
    const int64_t target = ih * s.W + iw, out_plane = p * s.OH * s.OW;
    A acc = 0;
    for (int64_t oh = oh_lo; oh < oh_hi; ++oh)
      for (int64_t ow = ow_lo; ow < ow_hi; ++ow) {
        const int64_t o = out_plane + oh * s.OW + ow;
        if (indices[o] == target) acc += to_acc(grad_output[o]);
      }
    grad_input[idx] = from_acc<T>(acc);
  }
}

}  // namespace

cudaError_t max_pool2d_forward_cuda(DType dtype, const void* input, void* output,
                                    int64_t* indices, const Pool2dShape& s,
                                    cudaStream_t stream) {
  CNNOPS_CUDA_DISPATCH(dtype, {
    max_pool2d_forward_kernel<T><<<blocks_for(s.planes * s.OH * s.OW), kThreads, 0, stream>>>(
        static_cast<const T*>(input), static_cast<T*>(output), indices, s);
  })
  return cudaGetLastError();
}

cudaError_t max_pool2d_grad_input_cuda(DType dtype, const void* grad_output,
                                     const int64_t* indices, void* grad_input,
                                     const Pool2dShape& s, cudaStream_t stream) {
  CNNOPS_CUDA_DISPATCH(dtype, {
    max_pool2d_grad_input_kernel<T><<<blocks_for(s.planes * s.H * s.W), kThreads, 0, stream>>>(
        static_cast<const T*>(grad_output), indices, static_cast<T*>(grad_input), s);
  })
  return cudaGetLastError();
}

}  // namespace cnnops
