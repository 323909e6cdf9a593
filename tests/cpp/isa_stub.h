// cpu_isa_active() / cpu_isa_supported(), copied from kernels/cpu/conv2d_blocked.cpp so that the
// standalone test and benchmark link without the rest of that file.
#include <cstdlib>
#include <cstring>

#include "conv2d_blocked.h"

namespace cnnops {
CpuIsa cpu_isa_supported() {
  static const CpuIsa best = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
      return CpuIsa::kAvx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CpuIsa::kAvx2;
    return CpuIsa::kBaseline;
  }();
  return best;
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
