// conv2d on CUDA by direct convolution, NCHW contiguous; float, double, half, bfloat16
// (half types accumulate in float).
//
// Forward, a teaching ladder of two kernels (the op's `algo`, CNNOPS_CONV_ALGO in Python):
//   1. naive: one thread per output element computes its whole dot product over
//      (C_in / groups, KH, KW), every operand read from global memory. Neighbouring threads
//      (neighbouring ow) read neighbouring inputs, so loads coalesce, but each input value is
//      fetched again by every output whose window covers it (KH * KW times, times C_out).
//   2. tiled: a block computes a kTile x kTile output tile for kOcPerBlock output channels.
//      For one input channel at a time it stages the input patch under the tile (padding
//      already zero-filled) and the kOcPerBlock filters in shared memory: each input value
//      now comes from global memory once per block and channel, and bounds checks leave
//      the inner loop. Each thread keeps kOcPerBlock accumulators in registers, so one
//      shared-memory read of the input feeds kOcPerBlock multiply-adds.
//   auto picks tiled whenever its shared memory fits (large strides or dilations blow up
//   the patch), else naive.
// Backward: grad_input gathers (one thread per input element, no atomics); grad_weight and
// grad_bias are one block-wide reduction per weight element / output channel.
#include "cuda_common.cuh"

namespace cnnops {
namespace {

constexpr int kTile = 16;        // the tiled kernel's output tile is kTile x kTile threads
constexpr int kOcPerBlock = 4;   // output channels each thread of the tiled kernel computes
constexpr size_t kMaxSharedBytes = 48 * 1024;  // usable without opting in to more

template <typename T>
__global__ void conv2d_naive_kernel(const T* __restrict__ input, const T* __restrict__ weight,
                                    const T* __restrict__ bias, T* __restrict__ output,
                                    Conv2dShape s, bool relu) {
  using A = acc_t<T>;
  const int64_t total = s.N * s.C_out * s.OH * s.OW;
  const int64_t cin_g = s.C_in / s.groups, cout_g = s.C_out / s.groups;
  for (int64_t idx = thread_index(); idx < total; idx += grid_stride()) {
    const int64_t ow = idx % s.OW, oh = (idx / s.OW) % s.OH;
    const int64_t oc = (idx / (s.OW * s.OH)) % s.C_out, n = idx / (s.OW * s.OH * s.C_out);
    int64_t kh_lo, kh_hi, kw_lo, kw_hi;
    valid_taps(oh, s.H, s.KH, s.stride_h, s.pad_h, s.dil_h, &kh_lo, &kh_hi);
    valid_taps(ow, s.W, s.KW, s.stride_w, s.pad_w, s.dil_w, &kw_lo, &kw_hi);
    A acc = bias ? to_acc(bias[oc]) : A(0);
    const int64_t ic0 = (oc / cout_g) * cin_g;
    for (int64_t icg = 0; icg < cin_g; ++icg) {
      const T* in_plane = input + (n * s.C_in + ic0 + icg) * s.H * s.W;
      const T* taps = weight + (oc * cin_g + icg) * s.KH * s.KW;
      for (int64_t kh = kh_lo; kh < kh_hi; ++kh) {
        const T* in_row = in_plane + (oh * s.stride_h - s.pad_h + kh * s.dil_h) * s.W;
        for (int64_t kw = kw_lo; kw < kw_hi; ++kw)
          acc += to_acc(in_row[ow * s.stride_w - s.pad_w + kw * s.dil_w]) *
                 to_acc(taps[kh * s.KW + kw]);
      }
    }
    output[idx] = from_acc<T>(relu ? relu_keep_nan(acc) : acc);
  }
}

struct TiledGeometry {
  int64_t patch_h, patch_w;  // input patch under one output tile
  int64_t tiles_h, tiles_w, oc_blocks;  // oc_blocks: blocks of kOcPerBlock channels per group
  int64_t blocks;
  size_t shared_bytes;
};

TiledGeometry tiled_geometry(const Conv2dShape& s, size_t acc_bytes) {
  TiledGeometry t;
  t.patch_h = (kTile - 1) * s.stride_h + (s.KH - 1) * s.dil_h + 1;
  t.patch_w = (kTile - 1) * s.stride_w + (s.KW - 1) * s.dil_w + 1;
  t.tiles_h = ceil_div(s.OH, kTile);
  t.tiles_w = ceil_div(s.OW, kTile);
  t.oc_blocks = ceil_div(s.C_out / s.groups, kOcPerBlock);
  t.blocks = s.N * s.groups * t.oc_blocks * t.tiles_h * t.tiles_w;
  t.shared_bytes = (t.patch_h * t.patch_w + kOcPerBlock * s.KH * s.KW) * acc_bytes;
  return t;
}

// Launch bounds: kTile * kTile threads and at least 2 blocks per SM. With the bare
// __launch_bounds__(256) ptxas capped the kernel at 64 registers and spilled the kOcPerBlock
// accumulators and 64-bit indices to local memory (nvcc -arch=sm_90 -Xptxas -v: 32-60 bytes of
// spill stores); with a floor of 2 blocks it may use up to 128 (it takes 112-116, no spills),
// and 2 x 256 x 128 registers still fit the SM's 64K.
template <typename T>
__global__ void __launch_bounds__(kTile * kTile, 2)
conv2d_tiled_kernel(const T* __restrict__ input, const T* __restrict__ weight,
                    const T* __restrict__ bias, T* __restrict__ output, Conv2dShape s,
                    bool relu, TiledGeometry t) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char shared_raw[];
  A* patch = reinterpret_cast<A*>(shared_raw);        // patch_h x patch_w, one input channel
  A* filters = patch + t.patch_h * t.patch_w;          // kOcPerBlock x KH x KW, that channel

  // blockIdx.x -> (n, group, channel block, tile row, tile column)
  int64_t b = blockIdx.x;
  const int64_t tile_w = b % t.tiles_w; b /= t.tiles_w;
  const int64_t tile_h = b % t.tiles_h; b /= t.tiles_h;
  const int64_t ocb = b % (s.groups * t.oc_blocks), n = b / (s.groups * t.oc_blocks);
  const int64_t cin_g = s.C_in / s.groups, cout_g = s.C_out / s.groups;
  const int64_t g = ocb / t.oc_blocks;
  const int64_t oc0 = g * cout_g + (ocb % t.oc_blocks) * kOcPerBlock;
  const int64_t oc_count = min64(kOcPerBlock, (g + 1) * cout_g - oc0);

  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kTile + tx;
  const int64_t oh = tile_h * kTile + ty, ow = tile_w * kTile + tx;
  const int64_t ih0 = tile_h * kTile * s.stride_h - s.pad_h;  // patch origin in the input
  const int64_t iw0 = tile_w * kTile * s.stride_w - s.pad_w;
  const int64_t taps = s.KH * s.KW, patch_size = t.patch_h * t.patch_w;

  A acc[kOcPerBlock];
#pragma unroll
  for (int j = 0; j < kOcPerBlock; ++j) acc[j] = (bias && j < oc_count) ? to_acc(bias[oc0 + j]) : A(0);

  for (int64_t icg = 0; icg < cin_g; ++icg) {
    const T* in_plane = input + (n * s.C_in + g * cin_g + icg) * s.H * s.W;
    __syncthreads();  // the previous channel's patch has been read by every thread
    for (int64_t i = tid; i < patch_size; i += kTile * kTile) {
      const int64_t ih = ih0 + i / t.patch_w, iw = iw0 + i % t.patch_w;
      patch[i] = (ih >= 0 && ih < s.H && iw >= 0 && iw < s.W) ? to_acc(in_plane[ih * s.W + iw])
                                                              : A(0);
    }
    for (int64_t i = tid; i < kOcPerBlock * taps; i += kTile * kTile) {
      const int64_t j = i / taps;
      filters[i] = j < oc_count ? to_acc(weight[((oc0 + j) * cin_g + icg) * taps + i % taps])
                                : A(0);
    }
    __syncthreads();
    if (oh < s.OH && ow < s.OW) {
      for (int64_t kh = 0; kh < s.KH; ++kh) {
        const A* patch_row = patch + (ty * s.stride_h + kh * s.dil_h) * t.patch_w +
                             tx * s.stride_w;
        for (int64_t kw = 0; kw < s.KW; ++kw) {
          const A v = patch_row[kw * s.dil_w];
#pragma unroll
          for (int j = 0; j < kOcPerBlock; ++j) acc[j] += v * filters[j * taps + kh * s.KW + kw];
        }
      }
    }
  }
  if (oh < s.OH && ow < s.OW) {
#pragma unroll  // constant trip count: acc[] stays in registers
    for (int j = 0; j < kOcPerBlock; ++j)
      if (j < oc_count)
        output[((n * s.C_out + oc0 + j) * s.OH + oh) * s.OW + ow] =
            from_acc<T>(relu ? relu_keep_nan(acc[j]) : acc[j]);
  }
}

// grad_input[n, ic, ih, iw]: the sum over the group's output channels and the taps (kh, kw)
// whose output position oh = (ih + pad - kh * dil) / stride is whole and in range.
template <typename T>
__global__ void conv2d_grad_input_kernel(const T* __restrict__ grad_output,
                                             const T* __restrict__ weight,
                                             T* __restrict__ grad_input, Conv2dShape s) {
  using A = acc_t<T>;
  const int64_t total = s.N * s.C_in * s.H * s.W;
  const int64_t cin_g = s.C_in / s.groups, cout_g = s.C_out / s.groups;
  for (int64_t idx = thread_index(); idx < total; idx += grid_stride()) {
    const int64_t iw = idx % s.W, ih = (idx / s.W) % s.H;
    const int64_t ic = (idx / (s.W * s.H)) % s.C_in, n = idx / (s.W * s.H * s.C_in);
    const int64_t g = ic / cin_g, icg = ic % cin_g;
    A acc = 0;
    for (int64_t oc = g * cout_g; oc < (g + 1) * cout_g; ++oc) {
      const T* gout_plane = grad_output + (n * s.C_out + oc) * s.OH * s.OW;
      const T* taps = weight + (oc * cin_g + icg) * s.KH * s.KW;
      for (int64_t kh = 0; kh < s.KH; ++kh) {
        const int64_t th = ih + s.pad_h - kh * s.dil_h;
        if (th < 0 || th % s.stride_h != 0 || th / s.stride_h >= s.OH) continue;
        const T* gout_row = gout_plane + (th / s.stride_h) * s.OW;
        for (int64_t kw = 0; kw < s.KW; ++kw) {
          const int64_t tw = iw + s.pad_w - kw * s.dil_w;
          if (tw < 0 || tw % s.stride_w != 0 || tw / s.stride_w >= s.OW) continue;
          acc += to_acc(gout_row[tw / s.stride_w]) * to_acc(taps[kh * s.KW + kw]);
        }
      }
    }
    grad_input[idx] = from_acc<T>(acc);
  }
}

// One block per weight element (oc, icg, kh, kw): its threads sum grad_output * input over
// (n, oh, ow). Simple and deterministic; a tiled reduction would reuse loads across taps.
template <typename T>
__global__ void conv2d_grad_weight_kernel(const T* __restrict__ grad_output,
                                              const T* __restrict__ input,
                                              T* __restrict__ grad_weight, Conv2dShape s) {
  using A = acc_t<T>;
  const int64_t cin_g = s.C_in / s.groups, cout_g = s.C_out / s.groups;
  const int64_t e = blockIdx.x;
  const int64_t kw = e % s.KW, kh = (e / s.KW) % s.KH;
  const int64_t icg = (e / (s.KW * s.KH)) % cin_g, oc = e / (s.KW * s.KH * cin_g);
  const int64_t ic = (oc / cout_g) * cin_g + icg;
  const int64_t count = s.N * s.OH * s.OW;
  A acc = 0;
  for (int64_t r = threadIdx.x; r < count; r += blockDim.x) {
    const int64_t ow = r % s.OW, oh = (r / s.OW) % s.OH, n = r / (s.OW * s.OH);
    const int64_t ih = oh * s.stride_h - s.pad_h + kh * s.dil_h;
    const int64_t iw = ow * s.stride_w - s.pad_w + kw * s.dil_w;
    if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) continue;
    acc += to_acc(grad_output[((n * s.C_out + oc) * s.OH + oh) * s.OW + ow]) *
           to_acc(input[((n * s.C_in + ic) * s.H + ih) * s.W + iw]);
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) grad_weight[e] = from_acc<T>(acc);
}

// One block per output channel: the sum of grad_output over (n, oh, ow).
template <typename T>
__global__ void conv2d_grad_bias_kernel(const T* __restrict__ grad_output,
                                            T* __restrict__ grad_bias, Conv2dShape s) {
  using A = acc_t<T>;
  const int64_t oc = blockIdx.x, plane = s.OH * s.OW;
  A acc = 0;
  for (int64_t r = threadIdx.x; r < s.N * plane; r += blockDim.x)
    acc += to_acc(grad_output[((r / plane) * s.C_out + oc) * plane + r % plane]);
  acc = block_sum(acc);
  if (threadIdx.x == 0) grad_bias[oc] = from_acc<T>(acc);
}

size_t acc_bytes(DType dtype) { return dtype == DType::f64 ? sizeof(double) : sizeof(float); }

}  // namespace

bool conv2d_tiled_fits(const Conv2dShape& s, DType dtype) {
  const TiledGeometry t = tiled_geometry(s, acc_bytes(dtype));
  return t.shared_bytes <= kMaxSharedBytes && t.blocks <= 0x7fffffff;
}

cudaError_t conv2d_forward_cuda(DType dtype, const void* input, const void* weight,
                                const void* bias, void* output, const Conv2dShape& s, bool relu,
                                int64_t algo, cudaStream_t stream) {
  const bool tiled = algo == kConvTiled || (algo == kConvAuto && conv2d_tiled_fits(s, dtype));
  if (tiled && !conv2d_tiled_fits(s, dtype)) return cudaErrorInvalidConfiguration;
  const TiledGeometry t = tiled_geometry(s, acc_bytes(dtype));
  CNNOPS_CUDA_DISPATCH(dtype, {
    const T* x = static_cast<const T*>(input);
    const T* w = static_cast<const T*>(weight);
    const T* b = static_cast<const T*>(bias);
    T* y = static_cast<T*>(output);
    if (tiled) {
      conv2d_tiled_kernel<T><<<static_cast<unsigned int>(t.blocks), dim3(kTile, kTile),
                               t.shared_bytes, stream>>>(x, w, b, y, s, relu, t);
    } else {
      conv2d_naive_kernel<T><<<blocks_for(s.N * s.C_out * s.OH * s.OW), kThreads, 0, stream>>>(
          x, w, b, y, s, relu);
    }
  })
  return cudaGetLastError();
}

cudaError_t conv2d_grad_input_cuda(DType dtype, const void* grad_output, const void* weight,
                                       void* grad_input, const Conv2dShape& s,
                                       cudaStream_t stream) {
  CNNOPS_CUDA_DISPATCH(dtype, {
    conv2d_grad_input_kernel<T><<<blocks_for(s.N * s.C_in * s.H * s.W), kThreads, 0,
                                      stream>>>(static_cast<const T*>(grad_output),
                                                static_cast<const T*>(weight),
                                                static_cast<T*>(grad_input), s);
  })
  return cudaGetLastError();
}

cudaError_t conv2d_grad_weight_cuda(DType dtype, const void* grad_output, const void* input,
                                        void* grad_weight, const Conv2dShape& s,
                                        cudaStream_t stream) {
  const int64_t elements = s.C_out * (s.C_in / s.groups) * s.KH * s.KW;
  if (elements > 0x7fffffff) return cudaErrorInvalidConfiguration;
  CNNOPS_CUDA_DISPATCH(dtype, {
    conv2d_grad_weight_kernel<T><<<static_cast<unsigned int>(elements), kThreads, 0,
                                       stream>>>(static_cast<const T*>(grad_output),
                                                 static_cast<const T*>(input),
                                                 static_cast<T*>(grad_weight), s);
  })
  return cudaGetLastError();
}

cudaError_t conv2d_grad_bias_cuda(DType dtype, const void* grad_output, void* grad_bias,
                                      const Conv2dShape& s, cudaStream_t stream) {
  if (s.C_out > 0x7fffffff) return cudaErrorInvalidConfiguration;
  CNNOPS_CUDA_DISPATCH(dtype, {
    conv2d_grad_bias_kernel<T><<<static_cast<unsigned int>(s.C_out), kThreads, 0, stream>>>(
        static_cast<const T*>(grad_output), static_cast<T*>(grad_bias), s);
  })
  return cudaGetLastError();
}

}  // namespace cnnops
