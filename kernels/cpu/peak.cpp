// The machine's limits, measured in the same run as the kernels, so that the bench tool can
// print every kernel's time as a fraction of them (issue 14):
//   cnnops_cpu_fma_peak_gflops(threads, seconds): float32 multiply-add rate of a tight loop of
//     independent FMAs in the widest vector ISA the CPU has (AVX-512, else AVX2 + FMA, else the
//     baseline), in GFLOP/s (one FMA = 2 flops), summed over `threads` OpenMP threads.
//   cnnops_cpu_copy_gbps(threads, seconds): memcpy bandwidth on a 256 MiB buffer (well past
//     any L3), bytes read + bytes written per second, in GB/s.
// Both run for about `seconds` (at least one repetition) and return the best repetition.
// Exported with C linkage so that ctypes can call them on the extension's .so.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <vector>

#include "conv2d_blocked.h"
#include "cpu_common.h"

namespace cnnops {
namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// kChains independent accumulator chains, enough to cover FMA latency (4 cycles) x 2 ports.
constexpr int kChains = 16;
constexpr int64_t kIters = 1 << 20;

template <int VW>
struct PeakVec;
template <>
struct PeakVec<16> { typedef float type __attribute__((vector_size(64))); };
template <>
struct PeakVec<8> { typedef float type __attribute__((vector_size(32))); };

// Returns a value derived from the accumulators, so that the loop is not removed.
template <int VW>
CNNOPS_INLINE float fma_loop(float seed) {
  using V = typename PeakVec<VW>::type;
  V acc[kChains], a, b;
  for (int l = 0; l < VW; ++l) a[l] = 1.0f + seed * 1e-7f, b[l] = 1e-7f;
#pragma GCC unroll 16
  for (int c = 0; c < kChains; ++c) acc[c] = a * float(c);
  for (int64_t i = 0; i < kIters; ++i) {
#pragma GCC unroll 16
    for (int c = 0; c < kChains; ++c) acc[c] = acc[c] * a + b;
  }
  float s = 0;
  for (int c = 0; c < kChains; ++c) s += acc[c][0];
  return s;
}

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
__attribute__((target("avx512f,avx512vl,fma"))) float fma_avx512(float seed) {
  return fma_loop<16>(seed);
}
__attribute__((target("avx2,fma"))) float fma_avx2(float seed) { return fma_loop<8>(seed); }
#endif
float fma_baseline(float seed) { return fma_loop<8>(seed); }

// flops of one fma_* call and the call itself for the widest ISA
int64_t fma_flops(CpuIsa isa) {
  const int lanes = isa == CpuIsa::kAvx512 ? 16 : 8;
  return int64_t(2) * lanes * kChains * kIters;
}
float fma_call(CpuIsa isa, float seed) {
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
  if (isa == CpuIsa::kAvx512) return fma_avx512(seed);
  if (isa == CpuIsa::kAvx2) return fma_avx2(seed);
#endif
  return fma_baseline(seed);
}

volatile float g_sink;

}  // namespace
}  // namespace cnnops

extern "C" double cnnops_cpu_fma_peak_gflops(int threads, double seconds) {
  using namespace cnnops;
  threads = std::max(1, threads);
  const CpuIsa isa = cpu_isa_supported();
  double best = 0;
  const double end = now() + seconds;
  do {
    double t0 = 0, t1 = 0;
    float sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    {
#pragma omp barrier
#pragma omp master
      t0 = now();
      sink += fma_call(isa, float(omp_get_thread_num()));
#pragma omp barrier
#pragma omp master
      t1 = now();
    }
    g_sink = sink;
    best = std::max(best, double(fma_flops(isa)) * threads / (t1 - t0) / 1e9);
  } while (now() < end);
  return best;
}

extern "C" double cnnops_cpu_copy_gbps(int threads, double seconds) {
  threads = std::max(1, threads);
  const int64_t bytes = int64_t(256) << 20;
  std::vector<char> src(bytes), dst(bytes);
  // first touch by the threads that copy, and every page mapped before timing
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < bytes; i += 4096) src[i] = char(i), dst[i] = 0;
  const int64_t chunk = (bytes / threads + 63) / 64 * 64;
  double best = 0;
  const double end = cnnops::now() + seconds;
  do {
    const double t0 = cnnops::now();
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int t = 0; t < threads; ++t) {
      const int64_t lo = std::min(bytes, t * chunk), hi = std::min(bytes, lo + chunk);
      std::memcpy(dst.data() + lo, src.data() + lo, hi - lo);
    }
    const double t1 = cnnops::now();
    best = std::max(best, 2.0 * double(bytes) / (t1 - t0) / 1e9);
  } while (cnnops::now() < end);
  cnnops::g_sink = float(dst[bytes / 2]);
  return best;
}
