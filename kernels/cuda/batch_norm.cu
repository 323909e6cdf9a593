// batch_norm on CUDA, (N, C, L) planar (NCHW contiguous); float, double, half, bfloat16. The
// formulas are in batch_norm.h; everything accumulates in acc_t<T> (float, or double for
// double).
//
// Reductions (statistics; backward sums): one block per channel, the threads striding over
// the channel's M = N * L values (consecutive threads read consecutive l, so rows of L >= 32
// are read coalesced), then a block-wide sum. The variance is the corrected two-pass one of
// batch_norm_cpu.cpp. Elementwise passes (y, dx): one thread per element, grid-stride.
#include "batch_norm.h"
#include "cuda_common.cuh"

namespace cnnops {
namespace {

// The offset of the i-th value of channel c, i in [0, N * L).
__device__ __forceinline__ int64_t channel_offset(int64_t i, int64_t c, const BatchNormShape& s) {
  const int64_t n = i / s.L;
  return (n * s.C + c) * s.L + (i - n * s.L);
}

// block_sum, then the total in every thread. Starts and ends with a barrier, so it may be
// called repeatedly (block_sum's shared slots are reused).
template <typename A>
__device__ A block_all_sum(A v) {
  __shared__ A total;
  __syncthreads();
  v = block_sum(v);
  if (threadIdx.x == 0) total = v;
  __syncthreads();
  return total;
}

template <typename T>
__global__ void batch_norm_stats_kernel(const T* __restrict__ input,
                                        acc_t<T>* __restrict__ save_mean,
                                        acc_t<T>* __restrict__ save_invstd,
                                        const acc_t<T>* __restrict__ running_mean,
                                        const acc_t<T>* __restrict__ running_var,
                                        acc_t<T>* __restrict__ new_running_mean,
                                        acc_t<T>* __restrict__ new_running_var,
                                        BatchNormShape s, double momentum, double eps) {
  using A = acc_t<T>;
  const int64_t M = s.N * s.L;
  for (int64_t c = blockIdx.x; c < s.C; c += gridDim.x) {
    A sum = 0;
    for (int64_t i = threadIdx.x; i < M; i += blockDim.x)
      sum += to_acc(input[channel_offset(i, c, s)]);
    const A rounded_mean = block_all_sum(sum) / static_cast<A>(M);
    A dev = 0, sq = 0;
    for (int64_t i = threadIdx.x; i < M; i += blockDim.x) {
      const A d = to_acc(input[channel_offset(i, c, s)]) - rounded_mean;
      dev += d;
      sq += d * d;
    }
    dev = block_all_sum(dev);
    sq = block_all_sum(sq);
    if (threadIdx.x == 0) {
      const A mean = rounded_mean + dev / static_cast<A>(M);
      A var = (sq - dev * dev / static_cast<A>(M)) / static_cast<A>(M);
      var = var > A(0) ? var : A(0);
      save_mean[c] = mean;
      save_invstd[c] = A(1) / sqrt(var + static_cast<A>(eps));
      if (new_running_mean != nullptr) {
        const A m = static_cast<A>(momentum);
        new_running_mean[c] = (A(1) - m) * running_mean[c] + m * mean;
        new_running_var[c] = (A(1) - m) * running_var[c] +
                             m * var * static_cast<A>(M) / static_cast<A>(M - 1);
      }
    }
  }
}

template <typename A>
__global__ void batch_norm_eval_stats_kernel(const A* __restrict__ running_mean,
                                             const A* __restrict__ running_var,
                                             A* __restrict__ save_mean,
                                             A* __restrict__ save_invstd, int64_t C,
                                             double eps) {
  for (int64_t c = thread_index(); c < C; c += grid_stride()) {
    save_mean[c] = running_mean[c];
    save_invstd[c] = A(1) / sqrt(running_var[c] + static_cast<A>(eps));
  }
}

template <typename T>
__global__ void batch_norm_apply_kernel(const T* __restrict__ input, T* __restrict__ output,
                                        const acc_t<T>* __restrict__ mean,
                                        const acc_t<T>* __restrict__ invstd,
                                        const acc_t<T>* __restrict__ weight,
                                        const acc_t<T>* __restrict__ bias, BatchNormShape s) {
  using A = acc_t<T>;
  const int64_t total = s.N * s.C * s.L;
  for (int64_t idx = thread_index(); idx < total; idx += grid_stride()) {
    const int64_t c = (idx / s.L) % s.C;
    const A scale = invstd[c] * (weight != nullptr ? weight[c] : A(1));
    const A shift = bias != nullptr ? bias[c] : A(0);
    output[idx] = from_acc<T>((to_acc(input[idx]) - mean[c]) * scale + shift);
  }
}

// sum(dy) and sum(dy * (x - mean)) per channel into `sums` (2, C); grad_bias and grad_weight
// from them where asked for.
template <typename T>
__global__ void batch_norm_backward_reduce_kernel(const T* __restrict__ grad_output,
                                                  const T* __restrict__ input,
                                                  const acc_t<T>* __restrict__ mean,
                                                  const acc_t<T>* __restrict__ invstd,
                                                  acc_t<T>* __restrict__ sums,
                                                  acc_t<T>* __restrict__ grad_weight,
                                                  acc_t<T>* __restrict__ grad_bias,
                                                  BatchNormShape s) {
  using A = acc_t<T>;
  const int64_t M = s.N * s.L;
  for (int64_t c = blockIdx.x; c < s.C; c += gridDim.x) {
    A sum_dy = 0, sum_dy_dev = 0;
    for (int64_t i = threadIdx.x; i < M; i += blockDim.x) {
      const int64_t offset = channel_offset(i, c, s);
      const A dy = to_acc(grad_output[offset]);
      sum_dy += dy;
      sum_dy_dev += dy * (to_acc(input[offset]) - mean[c]);
    }
    sum_dy = block_all_sum(sum_dy);
    sum_dy_dev = block_all_sum(sum_dy_dev);
    if (threadIdx.x == 0) {
      sums[c] = sum_dy;
      sums[s.C + c] = sum_dy_dev;
      if (grad_bias != nullptr) grad_bias[c] = sum_dy;
      if (grad_weight != nullptr) grad_weight[c] = sum_dy_dev * invstd[c];
    }
  }
}

// dx; `sums` from batch_norm_backward_reduce_kernel (training only).
template <typename T>
__global__ void batch_norm_backward_input_kernel(const T* __restrict__ grad_output,
                                                 const T* __restrict__ input,
                                                 const acc_t<T>* __restrict__ mean,
                                                 const acc_t<T>* __restrict__ invstd,
                                                 const acc_t<T>* __restrict__ weight,
                                                 const acc_t<T>* __restrict__ sums,
                                                 T* __restrict__ grad_input, BatchNormShape s,
                                                 bool training) {
  using A = acc_t<T>;
  const int64_t total = s.N * s.C * s.L;
  const A inv_m = A(1) / static_cast<A>(s.N * s.L);
  for (int64_t idx = thread_index(); idx < total; idx += grid_stride()) {
    const int64_t c = (idx / s.L) % s.C;
    const A a = invstd[c] * (weight != nullptr ? weight[c] : A(1));
    A dy = to_acc(grad_output[idx]);
    if (training) {
      const A k = invstd[c] * invstd[c] * sums[s.C + c] * inv_m;
      dy = dy - sums[c] * inv_m - (to_acc(input[idx]) - mean[c]) * k;
    }
    grad_input[idx] = from_acc<T>(dy * a);
  }
}

// One block per channel, at most 2^16 blocks (the kernels loop over the rest).
inline unsigned int channel_blocks(int64_t C) {
  return static_cast<unsigned int>(C < 65536 ? C : 65536);
}

}  // namespace

cudaError_t batch_norm_forward_cuda(DType dtype, const void* input, const void* weight,
                                    const void* bias, const void* running_mean,
                                    const void* running_var, void* output, void* save_mean,
                                    void* save_invstd, void* new_running_mean,
                                    void* new_running_var, const BatchNormShape& s,
                                    bool training, double momentum, double eps,
                                    cudaStream_t stream) {
  if (s.channels_last) return cudaErrorInvalidValue;
  CNNOPS_CUDA_DISPATCH(dtype, {
    using A = acc_t<T>;
    if (training) {
      batch_norm_stats_kernel<T><<<channel_blocks(s.C), kThreads, 0, stream>>>(
          static_cast<const T*>(input), static_cast<A*>(save_mean),
          static_cast<A*>(save_invstd), static_cast<const A*>(running_mean),
          static_cast<const A*>(running_var), static_cast<A*>(new_running_mean),
          static_cast<A*>(new_running_var), s, momentum, eps);
    } else {
      batch_norm_eval_stats_kernel<A><<<blocks_for(s.C), kThreads, 0, stream>>>(
          static_cast<const A*>(running_mean), static_cast<const A*>(running_var),
          static_cast<A*>(save_mean), static_cast<A*>(save_invstd), s.C, eps);
    }
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    batch_norm_apply_kernel<T><<<blocks_for(s.N * s.C * s.L), kThreads, 0, stream>>>(
        static_cast<const T*>(input), static_cast<T*>(output),
        static_cast<const A*>(save_mean), static_cast<const A*>(save_invstd),
        static_cast<const A*>(weight), static_cast<const A*>(bias), s);
  })
  return cudaGetLastError();
}

cudaError_t batch_norm_backward_cuda(DType dtype, const void* grad_output, const void* input,
                                     const void* weight, const void* save_mean,
                                     const void* save_invstd, void* grad_input,
                                     void* grad_weight, void* grad_bias, void* reduce_scratch,
                                     const BatchNormShape& s, bool training,
                                     cudaStream_t stream) {
  if (s.channels_last) return cudaErrorInvalidValue;
  CNNOPS_CUDA_DISPATCH(dtype, {
    using A = acc_t<T>;
    const bool reduce =
        grad_weight != nullptr || grad_bias != nullptr || (grad_input != nullptr && training);
    if (reduce) {
      batch_norm_backward_reduce_kernel<T><<<channel_blocks(s.C), kThreads, 0, stream>>>(
          static_cast<const T*>(grad_output), static_cast<const T*>(input),
          static_cast<const A*>(save_mean), static_cast<const A*>(save_invstd),
          static_cast<A*>(reduce_scratch), static_cast<A*>(grad_weight),
          static_cast<A*>(grad_bias), s);
      const cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
    if (grad_input != nullptr) {
      batch_norm_backward_input_kernel<T><<<blocks_for(s.N * s.C * s.L), kThreads, 0, stream>>>(
          static_cast<const T*>(grad_output), static_cast<const T*>(input),
          static_cast<const A*>(save_mean), static_cast<const A*>(save_invstd),
          static_cast<const A*>(weight), static_cast<const A*>(reduce_scratch),
          static_cast<T*>(grad_input), s, training);
    }
  })
  return cudaGetLastError();
}

}  // namespace cnnops
