// Helpers shared by the C++ (CPU) kernels.
#pragma once

#include <cstdint>

namespace cnnops {

// Below this many multiply-adds (or window reads) a call runs on one thread: forking the
// OpenMP team costs more than it saves.
constexpr int64_t kParallelWork = int64_t(1) << 15;

}  // namespace cnnops

// The extension is built for the baseline x86-64 (SSE2) so that it runs anywhere. The hot
// row functions are compiled twice more, for AVX2 + FMA (x86-64-v3) and AVX-512, and the
// loader picks the best the CPU has (function multiversioning of GCC >= 11; other compilers
// and architectures build the baseline only). OpenMP regions call these functions rather than
// holding the loops, because an outlined OpenMP body is not cloned; their helpers are
// CNNOPS_INLINE.
#if defined(__x86_64__) && defined(__GNUC__) && __GNUC__ >= 11 && !defined(__clang__) && \
    !defined(__CUDACC__)
#define CNNOPS_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CNNOPS_SIMD_CLONES
#endif

// The helpers of a cloned function must be inlined into it to be compiled for its target.
#if defined(__GNUC__)
#define CNNOPS_INLINE inline __attribute__((always_inline))
#else
#define CNNOPS_INLINE inline
#endif
