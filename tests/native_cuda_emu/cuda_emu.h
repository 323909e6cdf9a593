// A CPU emulation of the CUDA execution model, just enough to run the kernels of kernels/*.cu
// on a machine without a GPU (tests/test_native_cuda_emulated.py). Blocks run one after the
// other; the threads of a block run as real std::threads (a team kept for the run), so __syncthreads is a barrier,
// __shared__ memory is shared by the block, and __shfl_down_sync exchanges through a per-warp
// buffer between two per-warp barriers. test_native_cuda_emulated.py rewrites each launch
// `kernel<<<grid, block, shared, stream>>>(args)` into `emu::Launch(grid, block, shared,
// stream)(kernel, args)` and `extern __shared__ ... name[];` into a pointer to
// emu::dynamic_shared before compiling with g++.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <thread>
#include <vector>

namespace emu {

inline thread_local dim3 thread_idx, block_idx;
inline dim3 block_dim, grid_dim;
inline std::barrier<>* block_barrier = nullptr;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
inline double warp_buffer[1024];
alignas(16) inline unsigned char dynamic_shared[48 * 1024];

inline int linear_thread() {
  return static_cast<int>(thread_idx.x + block_dim.x * (thread_idx.y + block_dim.y * thread_idx.z));
}

inline cudaError_t last_error() { return cudaSuccess; }

// A team of `size` worker threads, kept for the whole run: creating 256 threads per launch
// costs far more than the tiny kernels the tests launch.
class Team {
 public:
  explicit Team(int size) : size_(size), start_(size + 1), done_(size + 1) {
    for (int t = 0; t < size; ++t)
      workers_.emplace_back([this, t] {
        for (;;) {
          start_.arrive_and_wait();
          if (quit_) return;
          job_(t);
          done_.arrive_and_wait();
        }
      });
  }
  ~Team() {
    quit_ = true;
    start_.arrive_and_wait();
    for (auto& w : workers_) w.join();
  }
  // Runs job(t) on every worker t and waits for all of them.
  void run(const std::function<void(int)>& job) {
    job_ = job;
    start_.arrive_and_wait();
    done_.arrive_and_wait();
  }
  static Team& of_size(int size) {
    static std::map<int, std::unique_ptr<Team>> teams;
    auto& team = teams[size];
    if (!team) team = std::make_unique<Team>(size);
    return *team;
  }

 private:
  int size_;
  std::barrier<> start_, done_;
  std::function<void(int)> job_;
  bool quit_ = false;
  std::vector<std::thread> workers_;
};

struct Launch {
  dim3 grid, block;
  size_t shared;
  Launch(dim3 grid_, dim3 block_, size_t shared_ = 0, cudaStream_t = nullptr)
      : grid(grid_), block(block_), shared(shared_) {}

  template <typename Kernel, typename... Args>
  void operator()(Kernel kernel, Args... args) {
    const int threads = static_cast<int>(block.x * block.y * block.z);
    if (threads > 1024 || shared > sizeof(dynamic_shared) || grid.x == 0) {
      std::fprintf(stderr, "emu: invalid launch (grid %u, %d threads, %zu bytes shared)\n",
                   grid.x, threads, shared);
      std::exit(2);
    }
    grid_dim = grid;
    block_dim = block;
    // The team runs the blocks one after the other, meeting at the block barrier after each
    // block (so static __shared__ memory can be reused by the next block).
    std::barrier<> barrier(threads);
    block_barrier = &barrier;
    warp_barriers.clear();
    for (int w = 0; w * 32 < threads; ++w)
      warp_barriers.push_back(std::make_unique<std::barrier<>>(std::min(32, threads - 32 * w)));
    Team::of_size(threads).run([&](int t) {
      thread_idx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
      for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
          for (unsigned bx = 0; bx < grid.x; ++bx) {
            block_idx = dim3(bx, by, bz);
            kernel(args...);
            barrier.arrive_and_wait();
          }
    });
  }
};

}  // namespace emu

#define threadIdx (::emu::thread_idx)
#define blockIdx (::emu::block_idx)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)
#undef __shared__
#define __shared__ static
#undef __launch_bounds__
#define __launch_bounds__(...)

using std::isnan;  // device code calls the CUDA math library's unqualified isnan

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }

template <typename T>
T __shfl_down_sync(unsigned, T value, int offset) {
  const int tid = emu::linear_thread(), lane = tid % 32;
  auto& barrier = *emu::warp_barriers[tid / 32];
  emu::warp_buffer[tid] = static_cast<double>(value);
  barrier.arrive_and_wait();
  const T result = lane + offset < 32 ? static_cast<T>(emu::warp_buffer[tid + offset]) : value;
  barrier.arrive_and_wait();
  return result;
}
