// Micro benchmark: conv2d_blocked.cpp's scalar repack loop vs pack_blocked_weights, one thread,
// thread CPU time, median of interleaved runs; memcpy of the same bytes as the bound.
//   g++ -O3 -fopenmp -I kernels/include -I kernels/cpu kernels/cpu/conv2d_blocked_pack.cpp
//       kernels/cpu/cpu_isa.cpp tests/cpp/bench_pack.cpp -I tests/cpp -o /tmp/bench_pack
//   CNNOPS_CPU_ISA=avx512 /tmp/bench_pack   (or avx2, baseline)
#include <omp.h>
#include <time.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "conv2d_blocked.h"
#include "conv2d_blocked_pack.h"

using namespace cnnops;

static double thread_ns() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

// conv2d_blocked.cpp's loop as it stands (korder is built by the caller anyway: not timed)
__attribute__((noinline)) static void scalar_pack(const PackSpec& p, const int64_t* korder, float* dst) {
  const int64_t lanes = p.lanes, blocks = (p.C_out + lanes - 1) / lanes;
  const float* weight = p.weight;
  for (int64_t ob = 0; ob < blocks; ++ob)
    for (int64_t k = 0; k < p.K; ++k)
      for (int64_t l = 0; l < lanes; ++l) {
        const int64_t oc = ob * lanes + l;
        dst[(ob * p.K + k) * lanes + l] = oc < p.C_out ? weight[oc * p.w_out + korder[k]] : 0.0f;
      }
}

static std::vector<int64_t> make_korder(const PackSpec& p) {
  std::vector<int64_t> korder;
  for (int64_t icb = 0; icb < (p.blocked_in ? (p.C_in + 15) / 16 : p.C_in); ++icb)
    for (int64_t t = 0; t < p.taps; ++t) {
      const int64_t wt = p.w_tap ? p.w_tap[t] : t;
      if (!p.blocked_in) {
        korder.push_back(icb * p.w_in + wt);
        continue;
      }
      for (int64_t l = 0; l < 16 && icb * 16 + l < p.C_in; ++l) korder.push_back((icb * 16 + l) * p.w_in + wt);
    }
  return korder;
}

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Sub {
  std::vector<int64_t> w_tap;  // empty: forward layout
};

// One layer: forward (w_tap null) or grad_input (its stride phases' sub-convolutions).
static const char* g_filter = nullptr;
static void run(const char* name, int64_t Co, int64_t Ci, int64_t k, int64_t stride, bool grad_input,
                bool blocked_in, int lanes) {
  if (g_filter && !std::strstr(name, g_filter)) return;
  const int64_t T = k * k, numel = Co * Ci * T;
  std::vector<float> w(numel);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1, 1);
  for (auto& x : w) x = u(rng);
  std::vector<PackSpec> specs;
  std::vector<std::vector<int64_t>> taps;
  if (!grad_input) {
    PackSpec p;
    p.weight = w.data(), p.C_out = Co, p.C_in = Ci, p.taps = T, p.w_in = T, p.w_out = Ci * T;
    p.blocked_in = blocked_in, p.lanes = lanes, p.K = Ci * T;
    specs.push_back(p);
  } else {
    for (int64_t rh = 0; rh < stride; ++rh)
      for (int64_t rw = 0; rw < stride; ++rw) {
        std::vector<int64_t> th, tw, t;
        for (int64_t a = 0; a < k; ++a)
          if (a % stride == rh) th.push_back(a);
        for (int64_t a = 0; a < k; ++a)
          if (a % stride == rw) tw.push_back(a);
        for (size_t a = 0; a < th.size(); ++a)
          for (size_t b = 0; b < tw.size(); ++b) t.push_back(th[th.size() - 1 - a] * k + tw[tw.size() - 1 - b]);
        if (!t.empty()) taps.push_back(t);
      }
    for (auto& t : taps) {
      PackSpec p;
      p.weight = w.data(), p.C_out = Ci, p.C_in = Co, p.taps = static_cast<int64_t>(t.size());
      p.w_tap = t.data(), p.w_out = T, p.w_in = Ci * T;
      p.blocked_in = blocked_in, p.lanes = lanes, p.K = Co * p.taps;
      specs.push_back(p);
    }
  }
  std::vector<std::vector<int64_t>> korders;
  std::vector<std::vector<float>> outs;
  int64_t out_floats = 0;
  for (auto& p : specs) {
    korders.push_back(make_korder(p));
    const int64_t n = (p.C_out + lanes - 1) / lanes * p.K * lanes;
    outs.emplace_back(n + 16);
    out_floats += n;
  }
  std::vector<float> copy_dst(numel + out_floats);
  auto dst = [&](size_t i) {
    return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(outs[i].data()) + 63) & ~uintptr_t(63));
  };
  const int reps = numel > (1 << 20) ? 15 : numel > (1 << 16) ? 41 : 201;
  std::vector<double> ts, tv, tc;
  for (int r = 0; r < reps + 2; ++r) {  // interleaved; the first two warm up
    double t0 = thread_ns();
    for (size_t i = 0; i < specs.size(); ++i) scalar_pack(specs[i], korders[i].data(), dst(i));
    double t1 = thread_ns();
    for (size_t i = 0; i < specs.size(); ++i) pack_blocked_weights(specs[i], dst(i), false);
    double t2 = thread_ns();
    // the bound: copy the bytes read (weights, once) into a buffer of the bytes written
    std::memcpy(copy_dst.data(), w.data(), numel * 4);
    std::memcpy(copy_dst.data() + numel, w.data(), std::min(numel, out_floats) * 4);
    double t3 = thread_ns();
    if (r >= 2) ts.push_back(t1 - t0), tv.push_back(t2 - t1), tc.push_back(t3 - t2);
  }
  // check once (the test does it properly)
  for (size_t i = 0; i < specs.size(); ++i) {
    std::vector<float> ref(outs[i].size());
    scalar_pack(specs[i], korders[i].data(), ref.data());
    pack_blocked_weights(specs[i], dst(i), false);
    if (std::memcmp(ref.data(), dst(i), (outs[i].size() - 16) * 4)) std::printf("MISMATCH %s\n", name);
  }
  const double s = median(ts), v = median(tv), c = median(tc);
  // bound: (weights read + packed written) bytes at the rate memcpy moves (read + write) bytes
  const double bytes = (numel + out_floats) * 4.0;
  const double copy_rate = (numel + std::min(numel, out_floats)) * 2 * 4.0 / c;  // bytes / ns
  const double bound = bytes / copy_rate;
  std::printf("%-34s %2s L%-2d %9.1f %9.1f %6.1fx %8.1f %5.2f %6.1f\n", name, blocked_in ? "bl" : "pl", lanes,
              s / 1e3, v / 1e3, s / v, bound / 1e3, v / bound, bytes / v);
}

int main(int argc, char** argv) {
  if (argc > 1) g_filter = argv[1];
  const char* isa = std::getenv("CNNOPS_CPU_ISA");
  const int VW = cpu_isa_active() == CpuIsa::kAvx512 ? 16 : 8;
  std::printf("isa %s (VW %d), 1 thread, thread CPU time, median; us\n", isa ? isa : "best", VW);
  std::printf("%-34s %2s %-3s %9s %9s %7s %8s %5s %6s\n", "shape", "ly", "L", "scalar", "vector", "speedup",
              "bound", "x bnd", "GB/s");
  struct L { const char* name; int64_t Co, Ci, k, s; };
  const L layers[] = {{"resnet conv1 3->64 7x7 s2", 64, 3, 7, 2},     {"resnet 64->64 3x3", 64, 64, 3, 1},
                      {"resnet 64->128 3x3 s2", 128, 64, 3, 2},       {"resnet 64->128 1x1 s2", 128, 64, 1, 2},
                      {"resnet 128->128 3x3", 128, 128, 3, 1},        {"resnet 128->256 3x3 s2", 256, 128, 3, 2},
                      {"resnet 128->256 1x1 s2", 256, 128, 1, 2},     {"resnet 256->256 3x3", 256, 256, 3, 1},
                      {"resnet 256->512 3x3 s2", 512, 256, 3, 2},     {"resnet 256->512 1x1 s2", 512, 256, 1, 2},
                      {"resnet 512->512 3x3", 512, 512, 3, 1}};
  for (const L& l : layers) {
    std::string n = std::string("fwd ") + l.name;
    run(n.c_str(), l.Co, l.Ci, l.k, l.s, false, l.Ci >= 16, VW);
  }
  for (const L& l : layers) {
    if (l.Ci < 16) continue;  // grad_input blocked needs the layer's C_in >= 16
    std::string n = std::string("gin ") + l.name;
    // the sub-convolution of a 1x1 layer is 1x1 stride 1 unpadded: `direct`, planar
    run(n.c_str(), l.Co, l.Ci, l.k, l.s, true, l.k > 1, VW);
  }
  run("fwd lenet 1->6 5x5 (thin)", 6, 1, 5, 1, false, false, 6);
  run("fwd lenet 6->16 5x5", 16, 6, 5, 1, false, false, VW);
  run("fwd resnet 512->512 3x3 planar", 512, 512, 3, 1, false, false, VW);
  run("gin resnet 512->512 3x3 planar", 512, 512, 3, 1, true, false, VW);
  return 0;
}
