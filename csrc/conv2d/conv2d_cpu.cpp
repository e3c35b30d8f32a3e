// Convolution kernels (see conv2d/conv2d_cpu.h for the phase-plane implicit GEMM).
//
// Per image, one of three paths (bias and ReLU applied when a tile is written to the output):
//  - spatial GEMM: fill the zero-padded phase planes (parallel over channels), then
//    out_virtual[m, p'] = sum_k A[m, k] * planes[k-offset + p'] with a register-blocked
//    microkernel of kConvMR output channels (broadcast) x NV vectors of virtual positions,
//    or, where that uses more lanes, of whole vectors along the output rows ("row tiles":
//    no garbage columns, accumulators stored straight to y; the ResNet stem 7x7/2 @224);
//  - channel GEMM (AVX-512, chosen when it wastes clearly fewer lanes — small images, many
//    channels): the same planes, 6 output positions (broadcast from the planes) x 4 vectors of
//    16 output channels (the "cols" weight layout); no garbage columns, K blocked to keep
//    weights in L2;
//  - depthwise (one input channel per group): stride 1 (no row dilation) reads the input rows
//    through a small ring of padded rows and runs a register-blocked stencil (4 output rows x
//    up to 4 vectors along ow); otherwise, per channel, its planes are filled into a
//    per-thread buffer and a stencil runs over the output rows, vectorised along ow.
#include "conv2d/conv2d_cpu.h"

#include <cstring>

#include "common/simd.h"

namespace mmfast {
namespace MMFAST_VARIANT {
namespace {

constexpr int W = VecF::kWidth;
constexpr int MR = kConvMR;

// x, the packed weights, bias and y are float32 here (check_conv2d refuses other dtypes).
inline const float* f32(const void* ptr) { return static_cast<const float*>(ptr); }
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

// Plane `slot` (phase (a, b)) of channel c at ph, Hq x Wq:
// ph[i*Wq + j] = xpad[c, i*SH + a, j*SW + b] (0 in the padding).
void fill_phase(const Conv2dParams& p, const Conv2dCpuPlan& g, int64_t n, int64_t c, int64_t slot,
                float* ph) {
  const Conv2dShape& s = p.shape;
  const float* xc = f32(p.x) + n * p.x_stride.n + c * p.x_stride.c;
  const int64_t a = g.phase_a[slot], b = g.phase_b[slot];
  // Plane columns [j0, j1) read the input (the plan's), the others are padding.
  const int64_t j0 = g.phase_j0[slot], j1 = g.phase_j1[slot];
  for (int64_t i = 0; i < g.Hq; ++i) {
    float* row = ph + i * g.Wq;
    const int64_t r = i * s.stride_h + a - s.pad_top;
    if (r < 0 || r >= s.H || j1 <= j0) {
      std::memset(row, 0, static_cast<size_t>(g.Wq) * sizeof(float));
      continue;
    }
    const int64_t col0 = j0 * s.stride_w + b - s.pad_left;  // input column of plane column j0
    const float* xr = xc + r * p.x_stride.h + col0 * p.x_stride.w;
    std::memset(row, 0, static_cast<size_t>(j0) * sizeof(float));
    if (s.stride_w == 1 && p.x_stride.w == 1) {
      std::memcpy(row + j0, xr, static_cast<size_t>(j1 - j0) * sizeof(float));
    } else {
      const int64_t step = s.stride_w * p.x_stride.w;
      for (int64_t j = j0; j < j1; ++j) row[j] = xr[(j - j0) * step];
    }
    std::memset(row + j1, 0, static_cast<size_t>(g.Wq - j1) * sizeof(float));
  }
}

// The planes of one row phase `a` at once: with column stride 2 along contiguous input rows,
// planes (a, 0) and (a, 1) are the even and odd columns of the same padded rows, so one pass
// over the rows fills both (tasks of one (channel, row phase); see fill_rows_s2).
struct FillUnit {
  int64_t slot0 = -1, slot1 = -1;  // slots of phases (a, 0), (a, 1); -1 where no tap reads it
  int64_t any() const { return slot0 >= 0 ? slot0 : slot1; }
};

#if defined(__AVX512F__)
// Plane rows up to this many vectors (1024 columns) take fill_rows_s2.
constexpr int64_t kS2MaxVectors = 64;

// Lanes [begin, end) of a 16-lane mask, clamped.
inline __mmask16 lane_range(int64_t begin, int64_t end) {
  if (begin < 0) begin = 0;
  if (end > W) end = W;
  if (end <= begin) return 0;
  return static_cast<__mmask16>(((1u << end) - 1u) & ~((1u << begin) - 1u));
}

// Column stride 2, input rows contiguous: plane (a, b) column j is input column 2j + b - PL, so
// vector q of a plane row (columns 16q .. 16q + 15) is the even (b = 0) or odd (b = 1) lanes of
// the 32 input columns from 32q - PL: two loads and a permute per plane. Where that window
// reaches past either end of the row (the padding), rows of at least 32 columns load the 32
// columns at the row's end instead, permuted with the indices shifted and the lanes outside
// the row zeroed; narrower rows use masked loads. Nothing outside the row is read, and the
// loads are plain ones (masked loads whose disabled lanes fell on lines not in cache ran the
// fill of a batch streamed from memory at half speed: 1x1/2 256->512 @56). Per-vector indices
// and masks depend only on q, so the row loop has no data-dependent branches (the scalar
// gather and memsets this replaces were 15-35% of the stride-2 layers of a ResNet encoder).
// Where fill_rows_s2 loads each plane-row vector q from and how it permutes it: these depend
// only on the shape, so they are worked out once per image (not per channel).
struct S2Table {
  int64_t nq = 0, q_full = 0;  // vectors per plane row; those wholly inside it
  // Rows of at least 16 columns: two plain loads of 16 columns inside the row, from columns
  // lo_at[q] and hi_at[q]; narrower rows: masked loads (lo, hi) of the window itself.
  bool plain = false;
  int64_t lo_at[kS2MaxVectors], hi_at[kS2MaxVectors];
  alignas(64) int32_t idx[2][kS2MaxVectors][W];  // [b][q]: lane -> index into (lo, hi)
  __mmask16 m[2][kS2MaxVectors];                 // [b][q]: lanes inside the row
  __mmask16 lo[kS2MaxVectors], hi[kS2MaxVectors], st[kS2MaxVectors];

  // False where the plane rows are too wide for the table (Wq > kS2MaxVectors * W).
  bool build(const Conv2dShape& s, int64_t Wq) {
    nq = (Wq + W - 1) / W;
    if (nq > kS2MaxVectors) return false;
    q_full = Wq / W;
    plain = s.W >= W;
    for (int64_t q = 0; q < nq; ++q) {
      const int64_t base = 2 * W * q - s.pad_left;  // input column of plane column 16q, b = 0
      int64_t l = base, h = base + W;
      if (s.W >= 2 * W) {
        l = base < 0 ? 0 : (base > s.W - 2 * W ? s.W - 2 * W : base);
        h = l + W;
      } else if (plain) {
        l = 0, h = s.W - W;  // the whole row
      }
      lo_at[q] = l, hi_at[q] = h;
      lo[q] = lane_range(-l, s.W - l);
      hi[q] = lane_range(-h, s.W - h);
      st[q] = lane_range(0, Wq - W * q);
      for (int b = 0; b < 2; ++b) {
        m[b][q] = 0;
        for (int j = 0; j < W; ++j) {
          const int64_t col = base + 2 * j + b;
          int32_t k = 0;  // lanes outside the row: index 0, masked off
          bool in = col >= 0 && col < s.W;
          if (in && col >= l && col < l + W)
            k = static_cast<int32_t>(col - l);
          else if (in && col >= h && col < h + W)
            k = static_cast<int32_t>(W + col - h);
          else
            in = false;  // not loaded (does not happen for a column of the row)
          idx[b][q][j] = k;
          if (in) m[b][q] = static_cast<__mmask16>(m[b][q] | (1u << j));
        }
      }
    }
    return true;
  }
};

template <bool B0, bool B1>
void fill_rows_s2(const float* xc, int64_t xs_h, const Conv2dShape& s, const S2Table& t, int64_t Hq,
                  int64_t Wq, int64_t a, float* dst0, float* dst1) {
  const int64_t nq = t.nq;
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t i = 0; i < Hq; ++i) {
    float* row0 = B0 ? dst0 + i * Wq : nullptr;
    float* row1 = B1 ? dst1 + i * Wq : nullptr;
    const int64_t r = i * s.stride_h + a - s.pad_top;
    if (r < 0 || r >= s.H) {
      for (int64_t q = 0; q < nq; ++q) {
        if (B0) _mm512_mask_storeu_ps(row0 + W * q, t.st[q], zero);
        if (B1) _mm512_mask_storeu_ps(row1 + W * q, t.st[q], zero);
      }
      continue;
    }
    // Narrow rows: the window may start left of the row (lanes masked off), so addresses, not
    // pointers, until the masked loads (which touch only their enabled lanes).
    const uintptr_t xr = reinterpret_cast<uintptr_t>(xc + r * xs_h);
    for (int64_t q = 0; q < nq; ++q) {
      __m512 vlo, vhi;
      if (t.plain) {
        vlo = _mm512_loadu_ps(reinterpret_cast<const float*>(xr + t.lo_at[q] * 4));
        vhi = _mm512_loadu_ps(reinterpret_cast<const float*>(xr + t.hi_at[q] * 4));
      } else {
        const uintptr_t at = xr + static_cast<uintptr_t>(t.lo_at[q] * 4);
        vlo = _mm512_maskz_loadu_ps(t.lo[q], reinterpret_cast<const void*>(at));
        vhi = _mm512_maskz_loadu_ps(t.hi[q], reinterpret_cast<const void*>(at + 4 * W));
      }
      const __m512 v0 =
          _mm512_maskz_permutex2var_ps(t.m[0][q], vlo, _mm512_load_si512(t.idx[0][q]), vhi);
      const __m512 v1 =
          _mm512_maskz_permutex2var_ps(t.m[1][q], vlo, _mm512_load_si512(t.idx[1][q]), vhi);
      if (q < t.q_full) {
        if (B0) _mm512_storeu_ps(row0 + W * q, v0);
        if (B1) _mm512_storeu_ps(row1 + W * q, v1);
      } else {
        if (B0) _mm512_mask_storeu_ps(row0 + W * q, t.st[q], v0);
        if (B1) _mm512_mask_storeu_ps(row1 + W * q, t.st[q], v1);
      }
    }
  }
}
#endif

// The fill units of a plan: with column stride 2, one per row phase (its (a, 0) and (a, 1)
// planes together); otherwise one per plane. Returns their count.
int64_t fill_units(const Conv2dCpuPlan& g, int64_t stride_w, FillUnit* units) {
  int64_t count = 0;
  for (int64_t slot = 0; slot < g.nphases; ++slot) {
    if (stride_w == 2) {
      int64_t k = 0;  // the unit of this row phase, if one was started
      while (k < count && g.phase_a[units[k].any()] != g.phase_a[slot]) ++k;
      if (k < count) {
        (g.phase_b[slot] == 0 ? units[k].slot0 : units[k].slot1) = slot;
        continue;
      }
    }
    units[count] = FillUnit{};
    ((stride_w == 2 && g.phase_b[slot] == 1) ? units[count].slot1 : units[count].slot0) = slot;
    ++count;
  }
  return count;
}

// How a call's planes are filled: its units, and (column stride 2 along contiguous rows,
// AVX-512) the vector fill's table, worked out once per image or per depthwise pass.
struct FillPlan {
  FillUnit units[kConvMaxTaps];
  int64_t count = 0;
#if defined(__AVX512F__)
  bool s2 = false;
  S2Table table;
#endif
  FillPlan(const Conv2dParams& p, const Conv2dCpuPlan& g) {
    count = fill_units(g, p.shape.stride_w, units);
#if defined(__AVX512F__)
    s2 = p.shape.stride_w == 2 && p.x_stride.w == 1 && table.build(p.shape, g.Wq);
#endif
  }
};

// Fills unit u's planes of channel c (dst: the channel's planes, slot after slot).
void fill_unit(const Conv2dParams& p, const Conv2dCpuPlan& g, const FillPlan& f, int64_t n,
               int64_t c, const FillUnit& u, float* dst) {
#if defined(__AVX512F__)
  if (f.s2) {
    const float* xc = f32(p.x) + n * p.x_stride.n + c * p.x_stride.c;
    float* d0 = u.slot0 >= 0 ? dst + u.slot0 * g.phase_stride : nullptr;
    float* d1 = u.slot1 >= 0 ? dst + u.slot1 * g.phase_stride : nullptr;
    const int64_t a = g.phase_a[u.any()];
    const int64_t hs = p.x_stride.h;
    if (d0 && d1)
      fill_rows_s2<true, true>(xc, hs, p.shape, f.table, g.Hq, g.Wq, a, d0, d1);
    else if (d0)
      fill_rows_s2<true, false>(xc, hs, p.shape, f.table, g.Hq, g.Wq, a, d0, d1);
    else
      fill_rows_s2<false, true>(xc, hs, p.shape, f.table, g.Hq, g.Wq, a, d0, d1);
    return;
  }
#else
  (void)f;
#endif
  if (u.slot0 >= 0) fill_phase(p, g, n, c, u.slot0, dst + u.slot0 * g.phase_stride);
  if (u.slot1 >= 0) fill_phase(p, g, n, c, u.slot1, dst + u.slot1 * g.phase_stride);
}

// Channel c's phase planes (the used ones), each Hq x Wq, at dst: slot after slot.
void fill_channel(const Conv2dParams& p, const Conv2dCpuPlan& g, const FillPlan& f, int64_t n,
                  int64_t c, float* dst) {
  for (int64_t k = 0; k < f.count; ++k) fill_unit(p, g, f, n, c, f.units[k], dst);
}

// All channels' planes of image n (the GEMM paths read across channels), in tasks of one
// (channel, unit): a stride-2 layer of 3 channels has 6 units (12 planes) to spread over the
// threads, not 3 channels.
void fill_planes(const Conv2dParams& p, const Conv2dCpuPlan& g, int64_t n, float* planes) {
  const Conv2dShape& s = p.shape;
  const FillPlan f(p, g);
  const int64_t unit_floats = g.plane_stride / f.count;
  const int64_t grain = unit_floats >= 4096 ? 1 : 4096 / unit_floats + 1;
  parallel_for(s.C * f.count, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t c = t / f.count;
      fill_unit(p, g, f, n, c, f.units[t % f.count], planes + c * g.plane_stride);
    }
  });
  // Slack read (and dropped) by the last tiles: keep it finite.
  const int64_t used = s.C * g.plane_stride;
  std::memset(planes + used, 0, static_cast<size_t>(g.planes_floats - used) * sizeof(float));
}

// ---- (2a) GEMM ------------------------------------------------------------------------------

// tile[MR][NV*W] = A_panel (K x MR, packed) * B, B[k][j] = b[c*plane_stride + tap[t] + j],
// k = (c, t). The accumulators stay in registers for the whole K loop. Masked: only the first
// `valid` columns of each B row may be read (the caller's own input, 1x1 direct mode); the
// masked loads (AVX-512 / AVX2 maskload) do not fault on the lanes they skip.
// ToY: the tile goes straight to the output instead, row i (output channel m0 + i) at
// tile + i * ldy, with bias[i] (bias may be null) and ReLU: for tiles whose columns are all
// outputs, consecutive in y (no garbage columns, dense planes; 1x1 layers), which saves the
// store_tile() round trip (~5-10% of a 1x1 layer with K = 64).
template <int NV, bool Masked = false, bool ToY = false>
void microkernel(const float* a, const float* b, int64_t cg, int64_t plane_stride,
                 const int64_t* tap, int64_t ntaps, float* tile, int64_t valid = 0,
                 const float* bias = nullptr, bool relu = false, int64_t ldy = 0) {
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
      for (int v = 0; v < NV; ++v) {
        if (Masked) {
          const int64_t left = valid - v * W;
          bv[v] = left >= W  ? VecF::load(bp + v * W)
                  : left > 0 ? VecF::load_partial(bp + v * W, static_cast<int>(left), 0.0f)
                             : VecF::set1(0.0f);
        } else {
          bv[v] = VecF::load(bp + v * W);
        }
      }
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        const VecF av = VecF::set1(a[i]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[i][v] = fmadd(av, bv[v], acc[i][v]);
      }
      a += MR;
    }
  }
  if (ToY) {
    const VecF zero = VecF::set1(0.0f);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const VecF vb = VecF::set1(bias ? bias[i] : 0.0f);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        VecF r = acc[i][v] + vb;
        if (relu) r = max(zero, r);  // NaN stays NaN
        r.store(tile + i * ldy + v * W);
      }
    }
    return;
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
      if (relu) r = r < 0.0f ? 0.0f : r;  // NaN stays NaN, as on the vector path
      dst[j * ys_w] = r;
    }
  }
}

// Writes the valid part of a tile of virtual positions [p0, p0 + cols) for output channels
// m0 .. m0 + rows - 1: position p' is output (p' / Wq, p' % Wq) when p' % Wq < OW.
void store_tile(const Conv2dParams& p, const Conv2dCpuPlan& g, int64_t n, const float* tile,
                int64_t tile_stride, int64_t p0, int64_t cols, int64_t m0, int64_t rows) {
  const Conv2dShape& s = p.shape;
  float* yn = static_cast<float*>(p.y) + n * p.y_stride.n;
  const int64_t oh_first = p0 / g.Wq, oh_last = (p0 + cols - 1) / g.Wq;
  for (int64_t oh = oh_first; oh <= oh_last && oh < s.OH; ++oh) {
    const int64_t row0 = oh * g.Wq;
    const int64_t ow_begin = (p0 > row0 ? p0 : row0) - row0;
    const int64_t end = p0 + cols < row0 + s.OW ? p0 + cols : row0 + s.OW;
    const int64_t len = end - row0 - ow_begin;
    if (len <= 0) continue;
    const int64_t j = row0 + ow_begin - p0;
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t m = m0 + i;
      float* dst = yn + m * p.y_stride.c + oh * p.y_stride.h + ow_begin * p.y_stride.w;
      store_run(tile + i * tile_stride + j, dst, len, p.y_stride.w, p.bias ? f32(p.bias)[m] : 0.0f,
                p.relu);
    }
  }
}

// Row tiles (see prefer_row_tiles): NV vectors of W outputs, vector v the outputs
// [ow_v, ow_v + len[v]) of one output row, so B's row for (c, tap t) is b[v] + c*plane_stride +
// tap[t] (b[v]: the plane position of (oh_v, ow_v)). The MR x NV accumulators go straight to
// y: row i (output channel m0 + i) of vector v at y[v] + i * ldy, plus bias[i] (bias may be
// null), ReLU, masked when len[v] < W. Same k order and arithmetic as microkernel().
template <int NV>
void microkernel_rows(const float* a, const float* const* b, int64_t cg, int64_t plane_stride,
                      const int64_t* tap, int64_t ntaps, float* const* y, const int* len,
                      const float* bias, bool relu, int64_t ldy) {
  VecF acc[MR][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = VecF::set1(0.0f);
  const float* bc[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) bc[v] = b[v];
  for (int64_t c = 0; c < cg; ++c) {
    for (int64_t t = 0; t < ntaps; ++t) {
      const int64_t off = tap[t];
      VecF bv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) bv[v] = VecF::load(bc[v] + off);
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        const VecF av = VecF::set1(a[i]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[i][v] = fmadd(av, bv[v], acc[i][v]);
      }
      a += MR;
    }
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bc[v] += plane_stride;
  }
  const VecF zero = VecF::set1(0.0f);
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    const VecF vb = VecF::set1(bias ? bias[i] : 0.0f);
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      VecF r = acc[i][v] + vb;
      if (relu) r = max(zero, r);  // NaN stays NaN
      if (len[v] >= W)
        r.store(y[v] + i * ldy);
      else
        r.store_partial(y[v] + i * ldy, len[v]);
    }
  }
}

// Whether the spatial GEMM runs in row tiles: tiles of NR outputs taken as whole vectors along
// each output row (ceil(OW / W) vectors a row, the last one masked), instead of runs of the
// flattened plane positions oh*Wq + ow (which compute Wq - OW garbage columns a row and go
// through a tile buffer unless a run lies in one output row). Taken when it uses clearly more
// lanes, e.g. the ResNet stem 7x7/2 @224: OW = 112 = 7 vectors, Wq = 115 (lanes 1.00 vs 0.974,
// and no store round trip); not for OW = 56 with Wq = 58 (0.875 vs 0.966). Rows of y must be
// contiguous (stride 1 along w); the planes, not the image in place (1x1 direct reads its rows
// only up to OW).
bool prefer_row_tiles(const Conv2dParams& p, const Conv2dCpuPlan& g, bool direct) {
  const Conv2dShape& s = p.shape;
  if (direct || g.Wq == s.OW || p.y_stride.w != 1) return false;
  const int64_t row_lanes = (s.OW + W - 1) / W * W;
  // row_lanes / OW < Wq / OW, by more than rounding: OW / row_lanes > OW / Wq.
  return row_lanes < g.Wq;
}

// The spatial GEMMs' tasks: (group, tile), each running every panel of its group over one tile
// (the tile's B rows stay in L1/L2 across panels), or, when there are too few of those to
// balance the threads (small images, e.g. 7x7: few tiles, many output channels), (group, panel,
// tile) in m-major order so consecutive tasks reuse one weight panel.
struct GemmTasks {
  int64_t n_tiles, m_tasks, count;
  bool split_m;
  GemmTasks(const Conv2dShape& s, const Conv2dCpuPlan& g, int64_t tiles)
      : n_tiles(tiles), m_tasks(1), count(0), split_m(s.groups * tiles < 4 * get_num_threads()) {
    m_tasks = split_m ? g.m_blocks : 1;
    count = s.groups * m_tasks * n_tiles;
  }
  // Task -> its tile, group and panels [mb_begin, mb_end).
  void decode(int64_t task, int64_t m_blocks, int64_t& tile, int64_t& grp, int64_t& mb_begin,
              int64_t& mb_end) const {
    tile = task % n_tiles;
    const int64_t rest = task / n_tiles;
    const int64_t mt = rest % m_tasks;
    grp = rest / m_tasks;
    mb_begin = split_m ? mt : 0;
    mb_end = split_m ? mt + 1 : m_blocks;
  }
};

// The spatial GEMM in row tiles (prefer_row_tiles): vector q of the image is row q / vpr,
// columns [(q % vpr) * W, ...) with vpr = ceil(OW / W) vectors a row; a tile is NR = kNV * W
// consecutive vectors, which may span two output rows.
void conv_gemm_rows(const Conv2dParams& p, const Conv2dCpuPlan& g, int64_t n, const float* planes) {
  const Conv2dShape& s = p.shape;
  const int64_t k = g.Cg * g.ntaps;
  const int64_t vpr = (s.OW + W - 1) / W;
  const int64_t nvec = s.OH * vpr;
  const GemmTasks tasks(s, g, (nvec + kNV - 1) / kNV);
  float* yn = static_cast<float*>(p.y) + n * p.y_stride.n;
  parallel_for(tasks.count, 1, [&](int64_t t0, int64_t t1) {
    alignas(64) float tile[MR * NR];
    for (int64_t task = t0; task < t1; ++task) {
      int64_t tile_idx, grp, mb_begin, mb_end;
      tasks.decode(task, g.m_blocks, tile_idx, grp, mb_begin, mb_end);
      const int64_t q0 = tile_idx * kNV;
      const int nv = static_cast<int>(nvec - q0 < kNV ? nvec - q0 : kNV);
      const float* b[kNV];
      int64_t yoff[kNV];
      int len[kNV];
      for (int v = 0; v < kNV; ++v) {
        const int64_t q = q0 + (v < nv ? v : nv - 1);
        const int64_t oh = q / vpr, ow = (q % vpr) * W;
        b[v] = planes + grp * g.Cg * g.plane_stride + oh * g.Wq + ow;
        yoff[v] = oh * p.y_stride.h + ow;
        len[v] = static_cast<int>(s.OW - ow < W ? s.OW - ow : W);
      }
      for (int64_t mb = mb_begin; mb < mb_end; ++mb) {
        const float* a = f32(p.weight) + (grp * g.m_blocks + mb) * MR * k;
        const int64_t m = grp * g.Mg + mb * MR;
        const int64_t rows = g.Mg - mb * MR < MR ? g.Mg - mb * MR : MR;
        // A partial panel (Mg not a multiple of MR) goes through the tile buffer: rows past Mg
        // are not outputs.
        const bool full = rows == MR;
        float* dst[kNV];
        for (int v = 0; v < kNV; ++v)
          dst[v] = full ? yn + m * p.y_stride.c + yoff[v] : tile + v * W;
        const int64_t ldy = full ? p.y_stride.c : NR;
        const float* bias = full && p.bias ? f32(p.bias) + m : nullptr;
        const bool relu = full && p.relu;
        if (nv >= kNV)
          microkernel_rows<kNV>(a, b, g.Cg, g.plane_stride, g.tap_offset, g.ntaps, dst, len, bias,
                                relu, ldy);
        else if (nv == 2)
          microkernel_rows<(kNV > 2 ? 2 : kNV)>(a, b, g.Cg, g.plane_stride, g.tap_offset, g.ntaps,
                                                dst, len, bias, relu, ldy);
        else
          microkernel_rows<1>(a, b, g.Cg, g.plane_stride, g.tap_offset, g.ntaps, dst, len, bias,
                              relu, ldy);
        if (full) continue;
        for (int64_t i = 0; i < rows; ++i) {
          const float bi = p.bias ? f32(p.bias)[m + i] : 0.0f;
          for (int v = 0; v < nv; ++v)
            store_run(tile + i * NR + v * W, yn + (m + i) * p.y_stride.c + yoff[v], len[v], 1, bi,
                      p.relu);
        }
      }
    }
  });
}

// planes: the phase planes, or (1x1 direct mode) the image itself with channel stride
// plane_stride, whose rows must not be read past the end (direct).
void conv_gemm(const Conv2dParams& p, const Conv2dCpuPlan& g, int64_t n, const float* planes,
               int64_t plane_stride, bool direct) {
  const Conv2dShape& s = p.shape;
  const int64_t k = g.Cg * g.ntaps;
  const GemmTasks tasks(s, g, (g.virtual_cols + NR - 1) / NR);
  // Virtual columns are the outputs themselves, in order (no garbage columns, dense planes).
  const bool to_y = g.Wq == s.OW && p.y_stride.w == 1 && (p.y_stride.h == s.OW || s.OH == 1);
  float* yn = static_cast<float*>(p.y) + n * p.y_stride.n;
  parallel_for(tasks.count, 1, [&](int64_t t0, int64_t t1) {
    alignas(64) float tile[MR * NR];
    for (int64_t task = t0; task < t1; ++task) {
      int64_t tile_idx, grp, mb_begin, mb_end;
      tasks.decode(task, g.m_blocks, tile_idx, grp, mb_begin, mb_end);
      const int64_t p0 = tile_idx * NR;
      const int64_t cols = g.virtual_cols - p0 < NR ? g.virtual_cols - p0 : NR;
      // The last tile may need fewer vectors (e.g. 63 virtual columns: 48 + 16, not 48 + 48).
      const int nv = static_cast<int>((cols + W - 1) / W);
      const float* b = planes + grp * g.Cg * plane_stride + p0;
      const bool masked = direct && nv * W > cols;
      for (int64_t mb = mb_begin; mb < mb_end; ++mb) {
        const float* a = f32(p.weight) + (grp * g.m_blocks + mb) * MR * k;
        const int64_t* tap = g.tap_offset;
        const int64_t m0 = mb * MR;
        // A full tile of a full panel whose columns are consecutive outputs: straight to y
        // (the whole plane when there are no garbage columns, else when it lies in one row).
        const int64_t col = p0 % g.Wq;
        if (!masked && cols == NR && g.Mg - m0 >= MR &&
            (to_y || (p.y_stride.w == 1 && col + NR <= s.OW))) {
          const int64_t m = grp * g.Mg + m0;
          float* dst = yn + m * p.y_stride.c + (to_y ? p0 : (p0 / g.Wq) * p.y_stride.h + col);
          microkernel<kNV, false, true>(a, b, g.Cg, plane_stride, tap, g.ntaps, dst, 0,
                                        p.bias ? f32(p.bias) + m : nullptr, p.relu, p.y_stride.c);
          continue;
        }
        if (masked) {
          if (nv >= kNV)
            microkernel<kNV, true>(a, b, g.Cg, plane_stride, tap, g.ntaps, tile, cols);
          else if (nv == 2)
            microkernel<(kNV > 2 ? 2 : kNV), true>(a, b, g.Cg, plane_stride, tap, g.ntaps, tile,
                                                   cols);
          else
            microkernel<1, true>(a, b, g.Cg, plane_stride, tap, g.ntaps, tile, cols);
        } else if (nv >= kNV) {
          microkernel<kNV>(a, b, g.Cg, plane_stride, tap, g.ntaps, tile);
        } else if (nv == 2) {
          microkernel<(kNV > 2 ? 2 : kNV)>(a, b, g.Cg, plane_stride, tap, g.ntaps, tile);
        } else {
          microkernel<1>(a, b, g.Cg, plane_stride, tap, g.ntaps, tile);
        }
        const int64_t rows = g.Mg - m0 < MR ? g.Mg - m0 : MR;
        const int64_t tile_stride = (nv >= kNV ? kNV : (nv == 2 && kNV > 2 ? 2 : 1)) * W;
        store_tile(p, g, n, tile, tile_stride, p0, cols, grp * g.Mg + m0, rows);
      }
    }
  });
}

// ---- (2b) channel-vectorised GEMM (AVX-512) ---------------------------------------------

#if defined(__AVX512F__)
// 6 positions x 4 vectors: 24 accumulators + 4 weight vectors + the broadcast of 32 zmm.
constexpr int kPosRows = 6;  // output positions per tile (broadcast rows)
constexpr int kNVc = kConvNC / W;
static_assert(kNVc * W == kConvNC, "panel must be whole vectors");

// tile[i][v*W + j] (+)= sum over k in [c0, c1) x taps of planes[pos[i] + c*plane_stride +
// tap[t]] * a[k][v*W + j]; a points at k = c0*ntaps of a (K x kConvNC) panel.
template <int NV>
void microkernel_cols(const float* a, const float* planes, const int64_t* pos, int64_t c0,
                      int64_t c1, int64_t plane_stride, const int64_t* tap, int64_t ntaps,
                      float* tile, bool accumulate) {
  VecF acc[kPosRows][NV];
  const float* r[kPosRows];
#pragma GCC unroll 8
  for (int i = 0; i < kPosRows; ++i) {
    r[i] = planes + pos[i];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      acc[i][v] = accumulate ? VecF::load(tile + i * kConvNC + v * W) : VecF::set1(0.0f);
  }
  for (int64_t c = c0; c < c1; ++c) {
    for (int64_t t = 0; t < ntaps; ++t) {
      const int64_t off = c * plane_stride + tap[t];
      VecF av[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) av[v] = VecF::load(a + v * W);
#pragma GCC unroll 8
      for (int i = 0; i < kPosRows; ++i) {
        const VecF bv = VecF::set1(r[i][off]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[i][v] = fmadd(bv, av[v], acc[i][v]);
      }
      a += kConvNC;
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < kPosRows; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v].store(tile + i * kConvNC + v * W);
}

// Lanes used by each path, to pick one: spatial wastes garbage columns and tail vectors,
// channel wastes tail positions and tail channel vectors.
bool prefer_channel_path(const Conv2dShape& s, const Conv2dCpuPlan& g) {
  const double useful = static_cast<double>(s.OH * s.OW);
  const int64_t s_tiles = (g.virtual_cols + NR - 1) / NR;
  const int64_t s_last = g.virtual_cols - (s_tiles - 1) * NR;
  const double s_cols = static_cast<double>((s_tiles - 1) * NR + (s_last + W - 1) / W * W);
  const double s_eff =
      useful / s_cols * static_cast<double>(g.Mg) / static_cast<double>(g.m_blocks * MR);
  const int64_t c_rows = (s.OH * s.OW + kPosRows - 1) / kPosRows * kPosRows;
  const double c_eff = useful / static_cast<double>(c_rows) * static_cast<double>(g.Mg) /
                       static_cast<double>((g.Mg + W - 1) / W * W);
  // The channel path pays a transposing store and scalar broadcasts; ask for a clear gain
  // (Zen 5, 3x3, 1 image: lanes 1.00 vs 0.96 at 64 channels @56, spatial 3% faster; 1.00 vs
  // 0.925 at 128 @28 and 0.99 vs 0.875 at 256 @14, channel 2% and 5% faster).
  return c_eff > 1.06 * s_eff;
}

// Images n0 .. n0 + count - 1 as one GEMM: position q is image n0 + q / (OH*OW), whose planes
// start at planes + (q / (OH*OW)) * image_stride.
void conv_gemm_cols(const Conv2dParams& p, const Conv2dCpuPlan& g, int64_t n0, int64_t count,
                    const float* planes, int64_t image_stride, int64_t plane_stride) {
  const Conv2dShape& s = p.shape;
  const int64_t k = g.Cg * g.ntaps;
  const int64_t hw = s.OH * s.OW;
  const int64_t positions = count * hw;
  const int64_t pblocks = (positions + kPosRows - 1) / kPosRows;
  const int64_t panels = (g.Mg + kConvNC - 1) / kConvNC;
  // Tasks: (group, panel, run of up to 8 position blocks). Within a task the K loop is
  // blocked (~512 rows) so the weight block stays in L2 while the blocks reuse it.
  constexpr int64_t kGroupBlocks = 8;
  const int64_t pgroups = (pblocks + kGroupBlocks - 1) / kGroupBlocks;
  const int64_t c_block = g.ntaps >= 512 ? 1 : 512 / g.ntaps;
  const int64_t tasks = s.groups * panels * pgroups;
  float* yn = static_cast<float*>(p.y) + n0 * p.y_stride.n;
  parallel_for(tasks, 1, [&](int64_t t0, int64_t t1) {
    alignas(64) float tiles[kGroupBlocks][kPosRows * kConvNC];
    int64_t pos[kGroupBlocks][kPosRows];
    for (int64_t task = t0; task < t1; ++task) {
      // Panel-major order: consecutive tasks (and threads) share a weight panel in L3.
      const int64_t pg = task % pgroups;
      const int64_t panel = (task / pgroups) % panels, grp = task / (pgroups * panels);
      const int64_t m0 = panel * kConvNC;
      const int64_t width = g.Mg - m0 < kConvNC ? g.Mg - m0 : kConvNC;
      const int nv = static_cast<int>((width + W - 1) / W);
      const int64_t pb0 = pg * kGroupBlocks;
      const int64_t pb1 = pb0 + kGroupBlocks < pblocks ? pb0 + kGroupBlocks : pblocks;
      // Plane offsets of each position (positions past the end repeat the last one).
      for (int64_t pb = pb0; pb < pb1; ++pb) {
        for (int i = 0; i < kPosRows; ++i) {
          int64_t q = pb * kPosRows + i;
          if (q >= positions) q = positions - 1;
          const int64_t img = q / hw, qq = q % hw;
          pos[pb - pb0][i] = img * image_stride + (qq / s.OW) * g.Wq + qq % s.OW;
        }
      }
      const float* a_panel = f32(p.weight_cols) + (grp * panels + panel) * kConvNC * k;
      const float* gplanes = planes + grp * g.Cg * plane_stride;
      for (int64_t c0 = 0; c0 < g.Cg; c0 += c_block) {
        const int64_t c1 = c0 + c_block < g.Cg ? c0 + c_block : g.Cg;
        const float* a = a_panel + c0 * g.ntaps * kConvNC;
        for (int64_t pb = pb0; pb < pb1; ++pb) {
          float* tile = tiles[pb - pb0];
          const int64_t* ps = pos[pb - pb0];
          if (nv >= 4)
            microkernel_cols<kNVc>(a, gplanes, ps, c0, c1, plane_stride, g.tap_offset, g.ntaps,
                                   tile, c0 > 0);
          else if (nv == 3)
            microkernel_cols<3>(a, gplanes, ps, c0, c1, plane_stride, g.tap_offset, g.ntaps, tile,
                                c0 > 0);
          else if (nv == 2)
            microkernel_cols<2>(a, gplanes, ps, c0, c1, plane_stride, g.tap_offset, g.ntaps, tile,
                                c0 > 0);
          else
            microkernel_cols<1>(a, gplanes, ps, c0, c1, plane_stride, g.tap_offset, g.ntaps, tile,
                                c0 > 0);
        }
      }
      // Transposing store: tile rows are positions, columns are output channels. When the
      // run's positions are consecutive outputs of one image in a dense plane, each channel's
      // run is contiguous in y: gathered 16 positions at a time (the scalar store below was
      // ~10% of a 3x3 layer at 64 channels).
      const int64_t q_first = pb0 * kPosRows, run = (pb1 - pb0) * kPosRows;
      if (p.y_stride.w == 1 && (p.y_stride.h == s.OW || s.OH == 1) && q_first + run <= positions &&
          q_first / hw == (q_first + run - 1) / hw) {
        const float* flat = &tiles[0][0];  // (kGroupBlocks * kPosRows) x kConvNC
        const __m512i idx = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(kConvNC));
        float* ybase = yn + (q_first / hw) * p.y_stride.n + q_first % hw;
        const VecF zero = VecF::set1(0.0f);
        for (int64_t j = 0; j < width; ++j) {
          const int64_t m = grp * g.Mg + m0 + j;
          const VecF vb = VecF::set1(p.bias ? f32(p.bias)[m] : 0.0f);
          float* ym = ybase + m * p.y_stride.c;
          for (int64_t q = 0; q < run; q += W) {
            VecF r = VecF{_mm512_i32gather_ps(idx, flat + q * kConvNC + j, 4)} + vb;
            if (p.relu) r = max(zero, r);  // NaN stays NaN
            if (run - q >= W)
              r.store(ym + q);
            else
              r.store_partial(ym + q, static_cast<int>(run - q));
          }
        }
        continue;
      }
      for (int64_t pb = pb0; pb < pb1; ++pb) {
        const float* tile = tiles[pb - pb0];
        const int64_t rows =
            positions - pb * kPosRows < kPosRows ? positions - pb * kPosRows : kPosRows;
        int64_t yoff[kPosRows];
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t q = pb * kPosRows + i, qq = q % hw;
          yoff[i] =
              (q / hw) * p.y_stride.n + (qq / s.OW) * p.y_stride.h + (qq % s.OW) * p.y_stride.w;
        }
        for (int64_t j = 0; j < width; ++j) {
          const int64_t m = grp * g.Mg + m0 + j;
          const float bias = p.bias ? f32(p.bias)[m] : 0.0f;
          float* ym = yn + m * p.y_stride.c;
          for (int64_t i = 0; i < rows; ++i) {
            float r = tile[i * kConvNC + j] + bias;
            if (p.relu) r = r < 0.0f ? 0.0f : r;  // NaN stays NaN
            ym[yoff[i]] = r;
          }
        }
      }
    }
  });
}
#endif

// ---- (2c) depthwise -------------------------------------------------------------------------

// NV vectors of one output row: acc[v] = sum_t w[t] * src[tap[t] + v*W], then bias, ReLU and
// a store of `len` outputs (the last vector partial).
template <int NV>
inline void depthwise_run(const float* src, const int64_t* tap, const float* w, int64_t ntaps,
                          float* dst, int64_t len, int64_t ys_w, float bias, bool relu) {
  VecF acc[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) acc[v] = VecF::set1(bias);
  for (int64_t t = 0; t < ntaps; ++t) {
    const VecF wt = VecF::set1(w[t]);
    const float* st = src + tap[t];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[v] = fmadd(wt, VecF::load(st + v * W), acc[v]);
  }
  const VecF zero = VecF::set1(0.0f);
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    if (relu) acc[v] = max(zero, acc[v]);
    const int64_t left = len - v * W;
    if (ys_w == 1) {
      if (left >= W)
        acc[v].store(dst + v * W);
      else if (left > 0)
        acc[v].store_partial(dst + v * W, static_cast<int>(left));
    } else {
      alignas(64) float buf[W];
      acc[v].store(buf);
      for (int64_t j = 0; j < (left < W ? left : W); ++j) dst[(v * W + j) * ys_w] = buf[j];
    }
  }
}

// One input channel per group (Cg == 1), Mg outputs each (channel multiplier). Each task fills
// its channel's planes into this thread's slice of the workspace (cache-resident) and runs
// every output channel of the group over it.
void conv_depthwise(const Conv2dParams& p, const Conv2dCpuPlan& g, int64_t n) {
  const Conv2dShape& s = p.shape;
  const int64_t ntaps = g.ntaps;
  float* yn = static_cast<float*>(p.y) + n * p.y_stride.n;
  const FillPlan f(p, g);
  parallel_for(s.C, 1, [&](int64_t c0, int64_t c1) {
    const int tid = current_thread_index();
    float* plane =
        static_cast<float*>(p.workspace) + (tid < g.nthreads ? tid : 0) * g.channel_floats;
    float w[kConvMaxTaps];
    // Slack past the planes, read by vectors that straddle the end: keep it finite.
    std::memset(plane + g.plane_stride, 0,
                static_cast<size_t>(g.channel_floats - g.plane_stride) * sizeof(float));
    for (int64_t c = c0; c < c1; ++c) {
      fill_channel(p, g, f, n, c, plane);
      for (int64_t j = 0; j < g.Mg; ++j) {
        const int64_t m = c * g.Mg + j;
        const float* panel = f32(p.weight) + (c * g.m_blocks + j / MR) * MR * ntaps;
        for (int64_t t = 0; t < ntaps; ++t) w[t] = panel[t * MR + j % MR];
        const float bias = p.bias ? f32(p.bias)[m] : 0.0f;
        for (int64_t oh = 0; oh < s.OH; ++oh) {
          const float* src = plane + oh * g.Wq;
          float* dst = yn + m * p.y_stride.c + oh * p.y_stride.h;
          int64_t ow = 0;
          for (; ow + 4 * W <= s.OW; ow += 4 * W)
            depthwise_run<4>(src + ow, g.tap_offset, w, ntaps, dst + ow * p.y_stride.w, 4 * W,
                             p.y_stride.w, bias, p.relu);
          const int64_t left = s.OW - ow;
          if (left > 3 * W)
            depthwise_run<4>(src + ow, g.tap_offset, w, ntaps, dst + ow * p.y_stride.w, left,
                             p.y_stride.w, bias, p.relu);
          else if (left > 2 * W)
            depthwise_run<3>(src + ow, g.tap_offset, w, ntaps, dst + ow * p.y_stride.w, left,
                             p.y_stride.w, bias, p.relu);
          else if (left > W)
            depthwise_run<2>(src + ow, g.tap_offset, w, ntaps, dst + ow * p.y_stride.w, left,
                             p.y_stride.w, bias, p.relu);
          else if (left > 0)
            depthwise_run<1>(src + ow, g.tap_offset, w, ntaps, dst + ow * p.y_stride.w, left,
                             p.y_stride.w, bias, p.relu);
        }
      }
    }
  });
}

// Stride 1, no row dilation: the input rows pass through a ring of kDwRows + KH - 1 zero-padded
// rows in this thread's workspace (L1-resident: each input row is copied once, where the
// plane path copied whole padded planes through L2), and a block of kDwRows output rows x NV
// vectors along ow keeps kDwRows * NV independent accumulators over the taps (the per-row
// loop had only NV dependent FMA chains, latency-bound), each tap one broadcast weight and NV
// loads per row.
#if defined(__AVX512F__)
constexpr int kDwRows = 4, kDwNV = 4;  // 16 accumulators + 1 weight + a load of 32 zmm
#else
constexpr int kDwRows = 4, kDwNV = 2;  // 8 accumulators + 1 weight + a load of 16 ymm
#endif
constexpr int64_t kDwMaxKH = 16;  // filter rows the direct path takes
constexpr int64_t kDwRowsIn = kDwRows + kDwMaxKH - 1;

// Output rows oh0 .. oh0 + rows - 1, columns ow0 .. ow0 + len - 1 (len <= NV * W) of output
// channel y; rowp[i] is the padded input row filter row 0 reads for output row oh0 + i.
template <int NV>
void dw_block(const float* const* rowp, const float* w, int64_t KH, int64_t KW, int64_t dw,
              float bias, bool relu, float* y, int64_t ys_h, int64_t ys_w, int64_t oh0,
              int64_t rows, int64_t ow0, int64_t len) {
  constexpr int R = kDwRows;
  VecF acc[R][NV];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = VecF::set1(bias);
  for (int64_t kh = 0; kh < KH; ++kh) {
    for (int64_t kw = 0; kw < KW; ++kw) {
      const VecF wt = VecF::set1(w[kh * KW + kw]);
      const int64_t off = ow0 + kw * dw;
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const float* src = rowp[r + kh] + off;
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = fmadd(wt, VecF::load(src + v * W), acc[r][v]);
      }
    }
  }
  const VecF zero = VecF::set1(0.0f);
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    if (r >= rows) continue;
    float* dst = y + (oh0 + r) * ys_h + ow0 * ys_w;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      VecF o = acc[r][v];
      if (relu) o = max(zero, o);
      const int64_t left = len - v * W;
      if (ys_w == 1) {
        if (left >= W)
          o.store(dst + v * W);
        else
          o.store_partial(dst + v * W, static_cast<int>(left));
      } else {
        alignas(64) float lanes[W];
        o.store(lanes);
        for (int64_t q = 0; q < (left < W ? left : W); ++q) dst[(v * W + q) * ys_w] = lanes[q];
      }
    }
  }
}

// Floats of the ring: kDwRows + KH - 1 padded rows of Wq and one of zeros, plus a vector of
// slack read (and dropped) by the last vector of a row.
int64_t dw_ring_floats(const Conv2dShape& s, const Conv2dCpuPlan& g) {
  return (kDwRows + s.KH) * g.Wq + W;
}

// Every output channel of input channel c, image n (ring: this thread's workspace slice).
void depthwise_direct_channel(const Conv2dParams& p, const Conv2dCpuPlan& g, int64_t n, int64_t c,
                              float* ring) {
  const Conv2dShape& s = p.shape;
  const int64_t slots = kDwRows + s.KH - 1, wq = g.Wq;
  const float* zeros = ring + slots * wq;
  std::memset(ring, 0, static_cast<size_t>(dw_ring_floats(s, g)) * sizeof(float));
  const float* xc = f32(p.x) + n * p.x_stride.n + c * p.x_stride.c;
  const float* rowp[kDwRowsIn];
  int64_t next = -s.pad_top;  // next input row to copy into the ring
  for (int64_t oh0 = 0; oh0 < s.OH; oh0 += kDwRows) {
    const int64_t rows = s.OH - oh0 < kDwRows ? s.OH - oh0 : kDwRows;
    const int64_t ih0 = oh0 - s.pad_top;
    for (int64_t i = 0; i < slots; ++i) {
      const int64_t ih = ih0 + i;
      if (ih < 0 || ih >= s.H) {
        rowp[i] = zeros;
        continue;
      }
      float* slot = ring + (ih % slots) * wq;
      if (ih >= next) {  // rows arrive in order; the ones before `next` are in place
        const float* xr = xc + ih * p.x_stride.h;
        if (p.x_stride.w == 1) {
          std::memcpy(slot + s.pad_left, xr, static_cast<size_t>(s.W) * sizeof(float));
        } else {
          for (int64_t q = 0; q < s.W; ++q) slot[s.pad_left + q] = xr[q * p.x_stride.w];
        }
        next = ih + 1;
      }
      rowp[i] = slot;
    }
    for (int64_t j = 0; j < g.Mg; ++j) {
      const int64_t m = c * g.Mg + j;
      float w[kConvMaxTaps];
      const float* panel = f32(p.weight) + (c * g.m_blocks + j / MR) * MR * g.ntaps;
      for (int64_t t = 0; t < g.ntaps; ++t) w[t] = panel[t * MR + j % MR];
      const float bias = p.bias ? f32(p.bias)[m] : 0.0f;
      float* y = static_cast<float*>(p.y) + n * p.y_stride.n + m * p.y_stride.c;
      for (int64_t ow0 = 0; ow0 < s.OW; ow0 += kDwNV * W) {
        const int64_t len = s.OW - ow0 < kDwNV * W ? s.OW - ow0 : kDwNV * W;
        const int nv = static_cast<int>((len + W - 1) / W);
#define MMFAST_DW_ARGS                                                                            \
  rowp, w, s.KH, s.KW, s.dilation_w, bias, p.relu, y, p.y_stride.h, p.y_stride.w, oh0, rows, ow0, \
      len
        if (nv >= kDwNV)
          dw_block<kDwNV>(MMFAST_DW_ARGS);
        else if (nv == 3 && kDwNV > 3)
          dw_block<(kDwNV > 3 ? 3 : 1)>(MMFAST_DW_ARGS);
        else if (nv == 2)
          dw_block<2>(MMFAST_DW_ARGS);
        else
          dw_block<1>(MMFAST_DW_ARGS);
#undef MMFAST_DW_ARGS
      }
    }
  }
}

bool depthwise_direct_ok(const Conv2dParams& p, const Conv2dCpuPlan& g) {
  const Conv2dShape& s = p.shape;
  return s.stride_h == 1 && s.stride_w == 1 && s.dilation_h == 1 && s.KH <= kDwMaxKH &&
         dw_ring_floats(s, g) <= g.channel_floats;
}

void conv_depthwise_direct(const Conv2dParams& p, const Conv2dCpuPlan& g) {
  const Conv2dShape& s = p.shape;
  parallel_for(s.N * s.C, 1, [&](int64_t t0, int64_t t1) {
    const int tid = current_thread_index();
    float* ring =
        static_cast<float*>(p.workspace) + (tid < g.nthreads ? tid : 0) * g.channel_floats;
    for (int64_t t = t0; t < t1; ++t) depthwise_direct_channel(p, g, t / s.C, t % s.C, ring);
  });
}

}  // namespace

void conv2d(const Conv2dParams& p, const Conv2dCpuPlan& g) {
#if defined(__AVX512F__)
  const bool cols = !g.depthwise && p.weight_cols && g.path != 1 &&
                    (g.path == 2 || prefer_channel_path(p.shape, g));
#endif
  // 1x1, stride 1, no padding, rows contiguous: the image is its own (only) phase plane, so
  // the GEMM reads it in place — no copy.
  const Conv2dShape& s = p.shape;
  const bool direct = s.KH == 1 && s.KW == 1 && s.stride_h == 1 && s.stride_w == 1 &&
                      s.pad_top == 0 && s.pad_left == 0 && s.pad_bottom == 0 && s.pad_right == 0 &&
                      p.x_stride.w == 1 && (p.x_stride.h == s.W || s.H == 1);
#if defined(__AVX512F__)
  if (cols) {
    const int64_t batch = g.batch_images > 0 ? g.batch_images : 1;
    for (int64_t n0 = 0; n0 < s.N; n0 += batch) {
      const int64_t count = s.N - n0 < batch ? s.N - n0 : batch;
      if (direct) {
        conv_gemm_cols(p, g, n0, count, f32(p.x) + n0 * p.x_stride.n, p.x_stride.n, p.x_stride.c);
        continue;
      }
      for (int64_t i = 0; i < count; ++i)
        fill_planes(p, g, n0 + i, static_cast<float*>(p.workspace) + i * g.planes_floats);
      conv_gemm_cols(p, g, n0, count, static_cast<float*>(p.workspace), g.planes_floats,
                     g.plane_stride);
    }
    return;
  }
#endif
  if (g.depthwise && depthwise_direct_ok(p, g)) {
    conv_depthwise_direct(p, g);
    return;
  }
  const bool rows = !g.depthwise && prefer_row_tiles(p, g, direct);
  for (int64_t n = 0; n < s.N; ++n) {
    if (g.depthwise) {
      conv_depthwise(p, g, n);
      continue;
    }
    const float* planes = direct ? f32(p.x) + n * p.x_stride.n : static_cast<float*>(p.workspace);
    const int64_t plane_stride = direct ? p.x_stride.c : g.plane_stride;
    if (!direct) fill_planes(p, g, n, static_cast<float*>(p.workspace));
    if (rows)
      conv_gemm_rows(p, g, n, planes);
    else
      conv_gemm(p, g, n, planes, plane_stride, direct);
  }
}

}  // namespace MMFAST_VARIANT
}  // namespace mmfast
