// The CPU kernels' instruction-set variant, chosen at run time (conv2d_blocked.h). A file of its
// own so that the standalone C++ tests (tests/cpp) link it without the kernels.
#include <cstdlib>
#include <cstring>

#include "conv2d_blocked.h"

namespace cnnops {

CpuIsa cpu_isa_supported() {
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
  static const CpuIsa best = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
      return CpuIsa::kAvx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CpuIsa::kAvx2;
    return CpuIsa::kBaseline;
  }();
  return best;
#else
  return CpuIsa::kBaseline;
#endif
}

CpuIsa cpu_isa_active() {
  const CpuIsa best = cpu_isa_supported();
  const char* env = std::getenv("CNNOPS_CPU_ISA");
  if (!env || !*env) return best;
  CpuIsa want = best;
  if (!std::strcmp(env, "baseline") || !std::strcmp(env, "scalar")) want = CpuIsa::kBaseline;
  else if (!std::strcmp(env, "avx2")) want = CpuIsa::kAvx2;
  else if (!std::strcmp(env, "avx512")) want = CpuIsa::kAvx512;
  return static_cast<int>(want) < static_cast<int>(best) ? want : best;
}

}  // namespace cnnops
