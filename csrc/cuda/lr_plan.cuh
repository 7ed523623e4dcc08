// Launch planning of the CUDA kernels of the local relation op (paper Sec. 4): block shapes, haloed
// shared-memory tiles and whether they fit, and the batch split of the gather pass. Plain host C++,
// shared by the CUDA launchers and the CPU emulator, so both run exactly the same configurations.
#pragma once

#include <algorithm>
#include <cstdint>

namespace lrrobust {
namespace cuda {

constexpr int kChannelChunk = 8;   // value channels held in registers per pass; more channels loop in chunks
constexpr int kOffsetChunk = 64;   // window offsets per flush of the geo_prior partial sums
constexpr int kMaxThreads = 256;   // threads per block
constexpr int64_t kSharedLimit = 48 * 1024;           // dynamic shared memory a block may use without opt-in
constexpr int64_t kPartialBudget = int64_t(1) << 22;  // entries of the geo_prior partial sums (gather pass)

// Sizes of one call. All fit in int (checked by the launcher); products that may not are formed in int64.
struct LrGeom {
  int n, groups, channels, per_group;  // per_group = m = ceil(C/G); the last group may hold fewer
  int height, width, out_h, out_w;
  int ksize, radius, stride, dilation;  // K, r = (K-1)/2, s, d
  int kind;                             // 0 sqdiff, 1 absdiff, 2 product
};

// One pass's launch: a block of tw x th threads covers a tile of tw x th pixels (output pixels for the
// forward and statistics passes, input pixels for the gather pass). The shared-memory layout (byte
// offsets) is decided here and only read by the kernels.
struct LrTile {
  int tw, th;            // block shape (threads = pixels of the tile)
  int tiles_x, tiles_y;  // tiles over the pixel grid
  int rh, rw;            // capacity (rows, cols) of the haloed region staged in shared memory
  int tiled;             // 1: stage tiles in shared memory; 0: read global memory directly (tile too big)
  int64_t smem;          // dynamic shared memory bytes of the launch
  int n_chunks, n_per;   // gather pass: the batch is split into n_chunks chunks of n_per images
  // Window passes: geo[g] (KK acc_t) at 0, the key tile (rh*rw scalars) at off_a, the value tile
  // (rh*rw pixels x kChannelChunk channels, channel-interleaved) at off_b.
  // Gather pass: per-warp offset sums (warps*kOffsetChunk acc_t) at 0, geo[g] at off_a, the per-output
  // statistics (rh*rw x {q, lse, D, 0} acc_t) at off_b, the grad_out tile (rh*rw x kChannelChunk) at off_c.
  int off_a, off_b, off_c;
};

inline int64_t lr_align16(int64_t bytes) { return (bytes + 15) / 16 * 16; }

inline int lr_ceil_div_pos(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

// Block shape for a rows x cols pixel grid: a warp-multiple of threads, no wider than needed.
inline void lr_block_shape(int rows, int cols, int& tw, int& th) {
  tw = cols > 16 ? 32 : (cols > 8 ? 16 : 8);
  th = kMaxThreads / tw;
  while (th / 2 >= rows && tw * (th / 2) >= 32) th /= 2;
}

// Shrinks the block until bytes(tw, th) fits the limit; false when even the smallest block does not.
template <typename Bytes>
inline bool lr_fit_block(int& tw, int& th, int64_t limit, Bytes bytes) {
  while (bytes(tw, th) > limit) {
    if (th > 1 && tw * (th / 2) >= 32) {
      th /= 2;
    } else if (tw > 8 && (tw / 2) * th >= 32) {
      tw /= 2;
    } else {
      return false;
    }
  }
  return true;
}

// Forward and statistics passes: one thread per output pixel; the tile stages the haloed key plane, the
// haloed kChannelChunk value planes (interleaved: one vector load per pixel) and the group's geo_prior.
inline LrTile lr_plan_window_pass(const LrGeom& g, int64_t scalar_bytes, int64_t acc_bytes, int64_t limit) {
  const int64_t kk = int64_t(g.ksize) * g.ksize;
  const int64_t halo = 2 * int64_t(g.radius) * g.dilation;
  auto cap = [&](int tw, int th) {
    return (int64_t(th - 1) * g.stride + halo + 1) * (int64_t(tw - 1) * g.stride + halo + 1);
  };
  auto off_a = [&](int, int) { return lr_align16(kk * acc_bytes); };
  auto off_b = [&](int tw, int th) { return lr_align16(off_a(tw, th) + cap(tw, th) * scalar_bytes); };
  auto bytes = [&](int tw, int th) { return off_b(tw, th) + cap(tw, th) * kChannelChunk * scalar_bytes; };
  LrTile t{};
  lr_block_shape(g.out_h, g.out_w, t.tw, t.th);
  int tw = t.tw, th = t.th;
  if (lr_fit_block(tw, th, limit, bytes)) {
    t.tw = tw;
    t.th = th;
    t.tiled = 1;
    t.rh = static_cast<int>(int64_t(th - 1) * g.stride + halo + 1);
    t.rw = static_cast<int>(int64_t(tw - 1) * g.stride + halo + 1);
    t.smem = bytes(tw, th);
    t.off_a = static_cast<int>(off_a(tw, th));
    t.off_b = static_cast<int>(off_b(tw, th));
  }
  t.tiles_x = lr_ceil_div_pos(g.out_w, t.tw);
  t.tiles_y = lr_ceil_div_pos(g.out_h, t.th);
  t.n_chunks = g.n;
  t.n_per = 1;
  return t;
}

// Gather pass (gradients of key, value and geo_prior): one thread per input pixel; the tile stages, over
// the outputs whose windows reach it, the statistics {q, lse, D} and kChannelChunk grad_out planes
// (interleaved), and the group's geo_prior. Every launch also holds the per-warp geo_prior partial sums.
inline LrTile lr_plan_gather_pass(const LrGeom& g, int64_t scalar_bytes, int64_t acc_bytes, int64_t limit,
                                  int64_t partial_budget) {
  const int64_t kk = int64_t(g.ksize) * g.ksize;
  const int64_t halo = 2 * int64_t(g.radius) * g.dilation;
  auto rows = [&](int th) { return std::min<int64_t>(g.out_h, (th - 1 + halo) / g.stride + 1); };
  auto cols = [&](int tw) { return std::min<int64_t>(g.out_w, (tw - 1 + halo) / g.stride + 1); };
  auto off_a = [&](int tw, int th) { return int64_t(tw) * th / 32 * kOffsetChunk * acc_bytes; };
  auto off_b = [&](int tw, int th) { return lr_align16(off_a(tw, th) + kk * acc_bytes); };
  auto off_c = [&](int tw, int th) { return off_b(tw, th) + rows(th) * cols(tw) * 4 * acc_bytes; };
  auto bytes = [&](int tw, int th) { return off_c(tw, th) + rows(th) * cols(tw) * kChannelChunk * scalar_bytes; };
  LrTile t{};
  lr_block_shape(g.height, g.width, t.tw, t.th);
  int tw = t.tw, th = t.th;
  if (lr_fit_block(tw, th, limit, bytes)) {
    t.tw = tw;
    t.th = th;
    t.tiled = 1;
    t.rh = static_cast<int>(rows(th));
    t.rw = static_cast<int>(cols(tw));
    t.smem = bytes(tw, th);
    t.off_a = static_cast<int>(off_a(tw, th));
    t.off_b = static_cast<int>(off_b(tw, th));
    t.off_c = static_cast<int>(off_c(tw, th));
  } else {
    t.smem = off_a(t.tw, t.th);
  }
  t.tiles_x = lr_ceil_div_pos(g.width, t.tw);
  t.tiles_y = lr_ceil_div_pos(g.height, t.th);
  // Partial sums: one per (group, offset, tile, batch chunk). Split the batch as finely as the budget allows.
  const int64_t per_chunk = int64_t(g.groups) * kk * t.tiles_x * t.tiles_y;
  const int64_t want = std::max<int64_t>(1, std::min<int64_t>(g.n, partial_budget / std::max<int64_t>(1, per_chunk)));
  t.n_per = lr_ceil_div_pos(g.n, want);
  t.n_chunks = lr_ceil_div_pos(g.n, t.n_per);
  return t;
}

}  // namespace cuda
}  // namespace lrrobust
