// A small cooperative CPU emulator of the CUDA execution model, enough to run lr_kernels.cuh unchanged on a
// machine without a GPU (a development check, not part of the package build; see check_emulated.py).
//
// Every CUDA thread of a block is a fiber (ucontext). The scheduler runs the runnable fibers one at a time,
// each until it reaches a barrier (__syncthreads, or the warp exchange of a shuffle) or ends, in ascending,
// descending or random order, then releases a barrier once every participant has reached it. So a missing
// __syncthreads makes a thread read shared memory before it is written (the order decides who is first),
// and shared memory starts each block filled with NaN bytes, which the outputs then show. A barrier that
// not every thread of the block reaches is reported as an error, as is a write past the dynamic shared
// memory. Blocks run one after the other, in ascending, descending or random order: results that depend on
// the block order reveal blocks that write the same output.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace lremu {

struct Index3 {
  unsigned x = 0, y = 0, z = 0;
};
inline Index3 thread_idx, block_idx;
inline dim3 block_dim, grid_dim;

enum class State { kRunnable, kBlockBarrier, kWarpBarrier, kDone };

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kGuardBytes = 64;
// The planner keeps real launches within 48 KiB; the emulator accepts more so that check_emulated.py can run
// the shared-memory variant on shapes whose tiles would not fit on a GPU.
constexpr int64_t kMaxDynamicSmem = 1 << 24;

struct Runtime {
  std::vector<ucontext_t> ctx;
  std::vector<std::vector<char>> stacks;
  std::vector<State> state;
  ucontext_t scheduler;
  int current = -1;
  int threads = 0;
  std::function<void()> body;
  std::vector<double> warp_buf;
  std::vector<unsigned char> smem;
  int thread_order = 0;  // 0 ascending, 1 descending, 2 random
  int block_order = 0;
  std::mt19937_64 rng{0};
  int64_t launches = 0;
  int64_t max_smem = 0;  // largest dynamic shared memory of a launch since the last reset
};

inline Runtime& runtime() {
  static Runtime r;
  return r;
}

[[noreturn]] inline void fail(const std::string& what) { throw std::runtime_error("lremu: " + what); }

inline void set_schedule(int thread_order, int block_order, uint64_t seed) {
  Runtime& r = runtime();
  r.thread_order = thread_order;
  r.block_order = block_order;
  r.rng.seed(seed);
}

inline unsigned char* dynamic_smem() { return runtime().smem.data() + kGuardBytes; }

inline void yield(State st) {
  Runtime& r = runtime();
  const int t = r.current;
  r.state[t] = st;
  swapcontext(&r.ctx[t], &r.scheduler);
}

inline void syncthreads() { yield(State::kBlockBarrier); }

template <typename T>
T shfl_xor(T v, int lane_mask) {
  Runtime& r = runtime();
  if (r.threads % 32 != 0) {  // inside a fiber: no exception can unwind past it
    std::fprintf(stderr, "lremu: warp shuffle in a block that is not a whole number of warps\n");
    std::abort();
  }
  const int t = r.current;
  const int lane = t & 31;
  r.warp_buf[t] = static_cast<double>(v);
  yield(State::kWarpBarrier);
  const T out = static_cast<T>(r.warp_buf[(t - lane) + (lane ^ lane_mask)]);
  yield(State::kWarpBarrier);
  return out;
}

inline void fiber_main() {
  Runtime& r = runtime();
  r.body();
  r.state[r.current] = State::kDone;  // returns to the scheduler through uc_link
}

inline void resume(int t) {
  Runtime& r = runtime();
  r.current = t;
  thread_idx.x = t % block_dim.x;
  thread_idx.y = (t / block_dim.x) % block_dim.y;
  thread_idx.z = t / (block_dim.x * block_dim.y);
  swapcontext(&r.scheduler, &r.ctx[t]);
}

inline void run_block() {
  Runtime& r = runtime();
  const int n = r.threads;
  for (int t = 0; t < n; ++t) {
    r.state[t] = State::kRunnable;
    getcontext(&r.ctx[t]);
    r.ctx[t].uc_stack.ss_sp = r.stacks[t].data();
    r.ctx[t].uc_stack.ss_size = r.stacks[t].size();
    r.ctx[t].uc_link = &r.scheduler;
    makecontext(&r.ctx[t], fiber_main, 0);
  }
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  if (r.thread_order == 1) std::reverse(order.begin(), order.end());
  while (true) {
    if (r.thread_order == 2) std::shuffle(order.begin(), order.end(), r.rng);
    for (int t : order) {
      if (r.state[t] == State::kRunnable) resume(t);
    }
    int done = 0, at_block = 0;
    for (int t = 0; t < n; ++t) {
      done += r.state[t] == State::kDone;
      at_block += r.state[t] == State::kBlockBarrier;
    }
    if (done == n) return;
    bool released = false;
    for (int w = 0; w * 32 < n; ++w) {
      const int end = std::min(n, w * 32 + 32);
      bool all = true;
      for (int t = w * 32; t < end; ++t) all = all && r.state[t] == State::kWarpBarrier;
      if (all) {
        for (int t = w * 32; t < end; ++t) r.state[t] = State::kRunnable;
        released = true;
      }
    }
    if (released) continue;
    if (at_block == n) {
      for (int t = 0; t < n; ++t) r.state[t] = State::kRunnable;
      continue;
    }
    fail("barrier not reached by every thread (block " + std::to_string(block_idx.x) + ": " +
         std::to_string(done) + " done, " + std::to_string(at_block) + " at __syncthreads, the rest at a shuffle)");
  }
}

template <typename... KernelArgs, typename... Args>
void launch(void (*kernel)(KernelArgs...), int64_t blocks, dim3 block, int64_t smem_bytes, Args... args) {
  Runtime& r = runtime();
  const int n = static_cast<int>(block.x * block.y * block.z);
  if (n < 1 || n > 1024) fail("block of " + std::to_string(n) + " threads");
  if (smem_bytes < 0 || smem_bytes > kMaxDynamicSmem) fail("dynamic shared memory of " + std::to_string(smem_bytes));
  block_dim = block;
  grid_dim = dim3(static_cast<unsigned>(blocks));
  r.threads = n;
  r.body = [&]() { kernel(args...); };
  if (static_cast<int>(r.stacks.size()) < n) {
    r.stacks.resize(n);
    for (auto& s : r.stacks) s.resize(kStackBytes);
    r.ctx.resize(n);
  }
  r.state.assign(n, State::kRunnable);
  r.warp_buf.assign(((n + 31) / 32) * 32, 0.0);
  r.smem.assign(static_cast<size_t>(smem_bytes) + 2 * kGuardBytes, 0xFF);
  r.launches += 1;
  r.max_smem = std::max(r.max_smem, smem_bytes);
  std::vector<int64_t> order(blocks);
  std::iota(order.begin(), order.end(), 0);
  if (r.block_order == 1) std::reverse(order.begin(), order.end());
  if (r.block_order == 2) std::shuffle(order.begin(), order.end(), r.rng);
  for (int64_t b : order) {
    block_idx.x = static_cast<unsigned>(b);
    std::fill(r.smem.begin(), r.smem.end(), 0xFF);  // NaN in every float format
    run_block();
    for (size_t e = 0; e < kGuardBytes; ++e) {
      if (r.smem[e] != 0xFF || r.smem[r.smem.size() - 1 - e] != 0xFF) {
        fail("write outside the dynamic shared memory in block " + std::to_string(b));
      }
    }
  }
  r.body = nullptr;
}

}  // namespace lremu

#define threadIdx (::lremu::thread_idx)
#define blockIdx (::lremu::block_idx)
#define blockDim (::lremu::block_dim)
#define gridDim (::lremu::grid_dim)
