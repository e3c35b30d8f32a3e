// Convolution kernels (see kernels/conv2d.h for the phase-plane implicit GEMM).
//
// Per image: (1) fill the zero-padded phase planes (parallel over channels); (2) either the
// GEMM — out_virtual[m, p'] = sum_k A[m, k] * planes[k-offset + p'] with a register-blocked
// microkernel of kConvMR output channels x NV vectors of virtual positions — or, for
// depthwise convolution (one input channel per group), a per-channel stencil over output rows.
// Bias and ReLU are applied when the tile is written to the NCHW output.
#include "kernels/conv2d.h"

#include <cstring>

#include "common/simd.h"

namespace mmfast {
namespace MMFAST_VARIANT {
namespace {

constexpr int W = VecF::kWidth;
constexpr int MR = kConvMR;
#if defined(__AVX512F__)
// 8 x 3 zmm accumulators + 3 B vectors + the broadcast: 28 of 32 registers.
constexpr int kNV = 3;
#else
// AVX2: 8 x 1 ymm accumulators (FMA latency x ports = 8 in flight), 10 of 16 registers.
constexpr int kNV = 1;
#endif
constexpr int NR = kNV * W;
static_assert(NR <= kConvMaxNR, "tile wider than the workspace slack");

// ---- (1) phase planes ---------------------------------------------------------------------

void fill_planes(const Conv2dParams& p, int64_t n, float* planes) {
  const Conv2dShape& s = p.shape;
  const Conv2dGeometry& g = p.geom;
  const float* xn = p.x + n * p.xs_n;
  const int64_t grain = g.plane_stride >= 4096 ? 1 : 4096 / g.plane_stride + 1;
  parallel_for(s.C, grain, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const float* xc = xn + c * p.xs_c;
      float* pc = planes + c * g.plane_stride;
      for (int64_t a = 0; a < s.SH; ++a) {
        for (int64_t b = 0; b < s.SW; ++b) {
          float* ph = pc + (a * s.SW + b) * g.phase_stride;
          // Plane columns j read input column j*SW + b - PL: valid for j in [j0, j1).
          const int64_t lead = s.PL - b;
          const int64_t j0 = lead <= 0 ? 0 : (lead + s.SW - 1) / s.SW;
          const int64_t last = s.W - 1 + lead;
          int64_t j1 = last < 0 ? 0 : last / s.SW + 1;
          if (j1 > g.Wq) j1 = g.Wq;
          for (int64_t i = 0; i < g.Hq; ++i) {
            float* row = ph + i * g.Wq;
            const int64_t r = i * s.SH + a - s.PT;
            if (r < 0 || r >= s.H || j1 <= j0) {
              std::memset(row, 0, static_cast<size_t>(g.Wq) * sizeof(float));
              continue;
            }
            const float* xr = xc + r * p.xs_h + (j0 * s.SW + b - s.PL) * p.xs_w;
            std::memset(row, 0, static_cast<size_t>(j0) * sizeof(float));
            if (s.SW == 1 && p.xs_w == 1) {
              std::memcpy(row + j0, xr, static_cast<size_t>(j1 - j0) * sizeof(float));
            } else {
              const int64_t step = s.SW * p.xs_w;
              for (int64_t j = j0; j < j1; ++j) row[j] = xr[(j - j0) * step];
            }
            std::memset(row + j1, 0, static_cast<size_t>(g.Wq - j1) * sizeof(float));
          }
        }
      }
    }
  });
  // Slack read (and dropped) by the last tiles: keep it finite.
  const int64_t used = s.C * g.plane_stride;
  std::memset(planes + used, 0, static_cast<size_t>(g.planes_floats - used) * sizeof(float));
}

// ---- (2a) GEMM ------------------------------------------------------------------------------

// tile[MR][NV*W] = A_panel (K x MR, packed) * B, B[k][j] = b[c*plane_stride + tap[t] + j],
// k = (c, t). The accumulators stay in registers for the whole K loop.
template <int NV>
void microkernel(const float* a, const float* b, int64_t cg, int64_t plane_stride,
                 const int64_t* tap, int64_t ntaps, float* tile) {
  VecF acc[MR][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = VecF::set1(0.0f);
  for (int64_t c = 0; c < cg; ++c) {
    const float* bc = b + c * plane_stride;
    for (int64_t t = 0; t < ntaps; ++t) {
      const float* bp = bc + tap[t];
      VecF bv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) bv[v] = VecF::load(bp + v * W);
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        const VecF av = VecF::set1(a[i]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[i][v] = fmadd(av, bv[v], acc[i][v]);
      }
      a += MR;
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v].store(tile + i * NV * W + v * W);
}

// y[row, ow0 : ow0 + len] = act(src[0 : len] + bias), ys_w == 1 vectorised.
inline void store_run(const float* src, float* dst, int64_t len, int64_t ys_w, float bias,
                      bool relu) {
  if (ys_w == 1) {
    const VecF vb = VecF::set1(bias), zero = VecF::set1(0.0f);
    int64_t j = 0;
    for (; j + W <= len; j += W) {
      VecF r = VecF::load(src + j) + vb;
      if (relu) r = max(zero, r);
      r.store(dst + j);
    }
    if (j < len) {
      const int t = static_cast<int>(len - j);
      VecF r = VecF::load_partial(src + j, t, 0.0f) + vb;
      if (relu) r = max(zero, r);
      r.store_partial(dst + j, t);
    }
  } else {
    for (int64_t j = 0; j < len; ++j) {
      float r = src[j] + bias;
      if (relu) r = r > 0.0f ? r : 0.0f;
      dst[j * ys_w] = r;
    }
  }
}

// Writes the valid part of a tile of virtual positions [p0, p0 + cols) for output channels
// m0 .. m0 + rows - 1: position p' is output (p' / Wq, p' % Wq) when p' % Wq < OW.
void store_tile(const Conv2dParams& p, int64_t n, const float* tile, int64_t tile_stride,
                int64_t p0, int64_t cols, int64_t m0, int64_t rows) {
  const Conv2dGeometry& g = p.geom;
  float* yn = p.y + n * p.ys_n;
  const int64_t oh_first = p0 / g.Wq, oh_last = (p0 + cols - 1) / g.Wq;
  for (int64_t oh = oh_first; oh <= oh_last && oh < g.OH; ++oh) {
    const int64_t row0 = oh * g.Wq;
    const int64_t ow_begin = (p0 > row0 ? p0 : row0) - row0;
    const int64_t end = p0 + cols < row0 + g.OW ? p0 + cols : row0 + g.OW;
    const int64_t len = end - row0 - ow_begin;
    if (len <= 0) continue;
    const int64_t j = row0 + ow_begin - p0;
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t m = m0 + i;
      float* dst = yn + m * p.ys_c + oh * p.ys_h + ow_begin * p.ys_w;
      store_run(tile + i * tile_stride + j, dst, len, p.ys_w, p.bias ? p.bias[m] : 0.0f, p.relu);
    }
  }
}

void conv_gemm(const Conv2dParams& p, int64_t n, const float* planes) {
  const Conv2dShape& s = p.shape;
  const Conv2dGeometry& g = p.geom;
  const int64_t k = g.Cg * g.ntaps;
  const int64_t n_tiles = (g.virtual_cols + NR - 1) / NR;
  // Enough (group, tile) tasks to balance the threads: each task runs every panel of its
  // group over one tile (the tile's B rows stay in L1/L2 across panels). Otherwise split the
  // panels too (small images, e.g. 7x7: few tiles, many output channels).
  const int64_t nthreads = get_num_threads();
  const bool split_m = s.groups * n_tiles < 4 * nthreads;
  const int64_t m_tasks = split_m ? g.m_blocks : 1;
  const int64_t tasks = s.groups * m_tasks * n_tiles;
  parallel_for(tasks, 1, [&](int64_t t0, int64_t t1) {
    alignas(64) float tile[MR * NR];
    for (int64_t task = t0; task < t1; ++task) {
      // m-major order when splitting panels: consecutive tasks reuse one weight panel.
      const int64_t tile_idx = task % n_tiles;
      const int64_t rest = task / n_tiles;
      const int64_t mt = rest % m_tasks, grp = rest / m_tasks;
      const int64_t mb_begin = split_m ? mt : 0, mb_end = split_m ? mt + 1 : g.m_blocks;
      const int64_t p0 = tile_idx * NR;
      const int64_t cols = g.virtual_cols - p0 < NR ? g.virtual_cols - p0 : NR;
      const float* b = planes + grp * g.Cg * g.plane_stride + p0;
      for (int64_t mb = mb_begin; mb < mb_end; ++mb) {
        const float* a = p.packed_w + (grp * g.m_blocks + mb) * MR * k;
        microkernel<kNV>(a, b, g.Cg, g.plane_stride, g.tap_offset, g.ntaps, tile);
        const int64_t m0 = mb * MR;
        const int64_t rows = g.Mg - m0 < MR ? g.Mg - m0 : MR;
        store_tile(p, n, tile, NR, p0, cols, grp * g.Mg + m0, rows);
      }
    }
  });
}

// ---- (2b) depthwise -------------------------------------------------------------------------

// One input channel per group (Cg == 1), Mg outputs each (channel multiplier): a stencil over
// each output row, vectorised along ow, reading the planes at the taps' offsets.
void conv_depthwise(const Conv2dParams& p, int64_t n, const float* planes) {
  const Conv2dShape& s = p.shape;
  const Conv2dGeometry& g = p.geom;
  const int64_t rows_per_task = g.OH >= 8 ? 8 : g.OH;
  const int64_t row_tasks = (g.OH + rows_per_task - 1) / rows_per_task;
  const int64_t ntaps = g.ntaps;
  float* yn = p.y + n * p.ys_n;
  parallel_for(s.M * row_tasks, 1, [&](int64_t t0, int64_t t1) {
    float w[kConvMaxTaps];
    alignas(64) float buf[W];
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t m = task / row_tasks, rt = task % row_tasks;
      const int64_t grp = m / g.Mg, j = m % g.Mg;
      // Unpack this output channel's taps from its weight panel.
      const float* panel = p.packed_w + (grp * g.m_blocks + j / MR) * MR * ntaps;
      for (int64_t t = 0; t < ntaps; ++t) w[t] = panel[t * MR + j % MR];
      const float bias = p.bias ? p.bias[m] : 0.0f;
      const float* plane = planes + grp * g.plane_stride;
      const int64_t oh_end = (rt + 1) * rows_per_task < g.OH ? (rt + 1) * rows_per_task : g.OH;
      for (int64_t oh = rt * rows_per_task; oh < oh_end; ++oh) {
        const float* src = plane + oh * g.Wq;
        float* dst = yn + m * p.ys_c + oh * p.ys_h;
        for (int64_t ow = 0; ow < g.OW; ow += W) {
          VecF acc = VecF::set1(0.0f);
          for (int64_t t = 0; t < ntaps; ++t)
            acc = fmadd(VecF::set1(w[t]), VecF::load(src + g.tap_offset[t] + ow), acc);
          acc.store(buf);
          const int64_t len = g.OW - ow < W ? g.OW - ow : W;
          store_run(buf, dst + ow * p.ys_w, len, p.ys_w, bias, p.relu);
        }
      }
    }
  });
}

}  // namespace

void conv2d(const Conv2dParams& p) {
  for (int64_t n = 0; n < p.shape.N; ++n) {
    fill_planes(p, n, p.workspace);
    if (p.geom.depthwise)
      conv_depthwise(p, n, p.workspace);
    else
      conv_gemm(p, n, p.workspace);
  }
}

}  // namespace MMFAST_VARIANT
}  // namespace mmfast
