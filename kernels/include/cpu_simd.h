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

// 32 bytes of T as one GCC vector (an AVX2 register; two SSE registers on the baseline): the
// row kernels of conv2d.cpp and batch_norm.cpp.
template <typename T>
struct Vec32Of;
template <>
struct Vec32Of<float> { typedef float type __attribute__((vector_size(32))); };
template <>
struct Vec32Of<double> { typedef double type __attribute__((vector_size(32))); };
template <typename T>
using Vec32 = typename Vec32Of<T>::type;

// The first 64-byte aligned float at or after p (a zmm load that spans two cache lines costs
// twice as much).
inline float* align64(float* p) {
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(p) + 63) & ~uintptr_t(63));
}

#if CNNOPS_CPU_X86
// In-register transposes: r[i] lane l becomes r[l] lane i (16 x 16 on AVX-512, 8 x 8 on AVX2).
// The blocked kernels' copies, repacks and epilogue all use them. The zero-masking forms with
// an all-ones mask: GCC 12's plain ones pass an undefined source and warn
// (-Wmaybe-uninitialized); same instructions.
CNNOPS_TARGET_AVX512 inline void transpose16(__m512 r[16]) {
  const __mmask16 kAll = 0xFFFF;
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_maskz_unpacklo_ps(kAll, r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_maskz_unpackhi_ps(kAll, r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_maskz_shuffle_ps(kAll, t[4 * i], t[4 * i + 2], 0x44);
    r[4 * i + 1] = _mm512_maskz_shuffle_ps(kAll, t[4 * i], t[4 * i + 2], 0xEE);
    r[4 * i + 2] = _mm512_maskz_shuffle_ps(kAll, t[4 * i + 1], t[4 * i + 3], 0x44);
    r[4 * i + 3] = _mm512_maskz_shuffle_ps(kAll, t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_maskz_shuffle_f32x4(kAll, r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_maskz_shuffle_f32x4(kAll, r[i], r[i + 4], 0xDD);
    t[i + 8] = _mm512_maskz_shuffle_f32x4(kAll, r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_maskz_shuffle_f32x4(kAll, r[i + 8], r[i + 12], 0xDD);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_maskz_shuffle_f32x4(kAll, t[i], t[i + 8], 0x88);
    r[i + 4] = _mm512_maskz_shuffle_f32x4(kAll, t[i + 4], t[i + 12], 0x88);
    r[i + 8] = _mm512_maskz_shuffle_f32x4(kAll, t[i], t[i + 8], 0xDD);
    r[i + 12] = _mm512_maskz_shuffle_f32x4(kAll, t[i + 4], t[i + 12], 0xDD);
  }
}

CNNOPS_TARGET_AVX2 inline void transpose8(__m256 r[8]) {
  __m256 t[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    r[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    r[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    r[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    r[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
    t[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
  }
  for (int i = 0; i < 8; ++i) r[i] = t[i];
}
#endif

}  // namespace cnnops
