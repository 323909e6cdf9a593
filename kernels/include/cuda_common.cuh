// Helpers shared by the CUDA kernels: accumulation types, conversions, launch sizes, dtype
// dispatch and a block-wide sum. Plain CUDA, no ATen. The extension is compiled with
// __CUDA_NO_HALF_CONVERSIONS__ (as every torch extension), so half types are converted with
// the explicit intrinsics below, never implicitly.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "kernels.h"

namespace cnnops {

// float16 / bfloat16 / float accumulate in float, double in double.
template <typename T>
using acc_t = typename std::conditional<std::is_same<T, double>::value, double, float>::type;

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_acc(acc_t<T> v) {
  if constexpr (std::is_same<T, __half>::value) {
    return __float2half(v);
  } else if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    return __float2bfloat16(v);
  } else {
    return v;
  }
}

// ReLU that keeps NaN, as torch.relu.
template <typename A>
__device__ __forceinline__ A relu_keep_nan(A v) { return v < A(0) ? A(0) : v; }

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over `total` items (capped: the loop covers the rest).
inline unsigned int blocks_for(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(blocks < (int64_t(1) << 30) ? blocks : (int64_t(1) << 30));
}

// The global thread index and stride of a grid-stride loop, in int64 so that tensors with
// more than 2^31 elements are indexed correctly.
__device__ __forceinline__ int64_t thread_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// Sum of `v` over the block (blockDim.x a multiple of 32, at most 1024); valid in thread 0.
template <typename A>
__device__ A block_sum(A v) {
  __shared__ A warp_sums[32];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x / 32) ? warp_sums[lane] : A(0);
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  return v;
}

// Runs the statements with `T` bound to the element type of `dtype`.
#define CNNOPS_CUDA_DISPATCH(dtype, ...)                      \
  switch (dtype) {                                            \
    case DType::f32: { using T = float; __VA_ARGS__; break; }  \
    case DType::f64: { using T = double; __VA_ARGS__; break; } \
    case DType::f16: { using T = __half; __VA_ARGS__; break; } \
    case DType::bf16: {                                       \
      using T = __nv_bfloat16;                                \
      __VA_ARGS__;                                            \
      break;                                                  \
    }                                                         \
  }

}  // namespace cnnops
