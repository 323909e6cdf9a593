// What the vectorised CPU kernels (kernels/cpu/conv2d_blocked*.cpp) share: GCC vector types,
// the target attributes of their instruction-set variants, 64-byte alignment.
#pragma once

#include <cstdint>

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define CNNOPS_CPU_X86 1
#include <immintrin.h>
// Functions compiled for AVX-512 (F, VL, BW, DQ) or AVX2 + FMA; the caller picks one at run
// time (cpu_isa_active() in conv2d_blocked.h).
#define CNNOPS_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
#define CNNOPS_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define CNNOPS_TARGET_AVX512
#define CNNOPS_TARGET_AVX2
#endif

namespace cnnops {

// VW floats as one GCC vector (a typedef with a dependent vector_size inside a template is
// parsed as plain float by GCC 12, hence the specialisations).
template <int VW>
struct FloatVec;
template <>
struct FloatVec<16> { typedef float type __attribute__((vector_size(64))); };
template <>
struct FloatVec<8> { typedef float type __attribute__((vector_size(32))); };
template <>
struct FloatVec<4> { typedef float type __attribute__((vector_size(16))); };

// The first 64-byte aligned float at or after p (a zmm load that spans two cache lines costs
// twice as much).
inline float* align64(float* p) {
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(p) + 63) & ~uintptr_t(63));
}

}  // namespace cnnops
