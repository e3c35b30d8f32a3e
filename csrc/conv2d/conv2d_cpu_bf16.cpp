// The bf16 convolution's AVX512-BF16 kernel: the spatial implicit GEMM of conv2d_cpu.cpp with K
// taken in channel pairs (layouts and error bound in conv2d_cpu_bf16.h). Per image:
//  (1) fill the channel pairs' phase planes, float32 -> bf16 pairs (parallel over pairs);
//  (2) out_virtual[m, p'] = sum_(pair, tap) A[m, (pair, tap)] . planes[pair][tap_offset + p'],
//      a microkernel of kConvBf16MR output channels (one broadcast word each) x 3 vectors of 16
//      virtual positions: 24 zmm accumulators, each VDPBF16PS doing 32 multiply-adds;
//  then bias and ReLU in float32 when a tile is written out.
// Compiled once, with -mavx512bf16, into namespace mmfast::avx512bf16.
#include "conv2d/conv2d_cpu_bf16.h"

#include <cstring>

#include "common/bf16_simd.h"
#include "common/parallel.h"

namespace mmfast {
namespace MMFAST_VARIANT {
namespace {

constexpr int MR = kConvBf16MR;
constexpr int kNV = 3;        // vectors of 16 positions per tile
constexpr int NR = kNV * 16;  // positions per tile
static_assert(NR <= kConvMaxNR, "tile wider than the workspace slack");

inline const float* f32(const void* ptr) { return static_cast<const float*>(ptr); }

// ---- (1) channel-pair phase planes ------------------------------------------------------------

// The pair (c0, c1) of image n (c1 < 0: a zero partner), every used phase plane, at dst:
// dst[slot*Hq*Wq + i*Wq + j] = (bf16(xpad[c0, i*SH + a, j*SW + b]), bf16(xpad[c1, ...])).
void fill_pair(const Conv2dParams& p, const Conv2dCpuPlan& g, int64_t n, int64_t c0, int64_t c1,
               uint32_t* dst) {
  const Conv2dShape& s = p.shape;
  const float* x0 = f32(p.x) + n * p.x_stride.n + c0 * p.x_stride.c;
  const float* x1 = c1 >= 0 ? f32(p.x) + n * p.x_stride.n + c1 * p.x_stride.c : nullptr;
  const int64_t step = s.stride_w * p.x_stride.w;  // input elements between plane columns
  alignas(64) float lo[16], hi[16];
  for (int64_t slot = 0; slot < g.nphases; ++slot) {
    const int64_t a = g.phase_a[slot], b = g.phase_b[slot];
    uint32_t* ph = dst + slot * g.phase_stride;
    // Plane column j reads input column j*SW + b - PL: valid for j in [j0, j1).
    const int64_t lead = s.pad_left - b;
    const int64_t j0 = lead <= 0 ? 0 : (lead + s.stride_w - 1) / s.stride_w;
    const int64_t last = s.W - 1 + lead;
    int64_t j1 = last < 0 ? 0 : last / s.stride_w + 1;
    if (j1 > g.Wq) j1 = g.Wq;
    for (int64_t i = 0; i < g.Hq; ++i) {
      uint32_t* row = ph + i * g.Wq;
      const int64_t r = i * s.stride_h + a - s.pad_top;
      if (r < 0 || r >= s.H || j1 <= j0) {
        std::memset(row, 0, static_cast<size_t>(g.Wq) * sizeof(uint32_t));
        continue;
      }
      // Input element of plane column j: base[j * step], valid for j in [j0, j1).
      const int64_t off = r * p.x_stride.h + (b - s.pad_left) * p.x_stride.w;
      for (int64_t jb = 0; jb < g.Wq; jb += 16) {
        const int64_t width = g.Wq - jb < 16 ? g.Wq - jb : 16;
        const int64_t v0 = j0 > jb ? j0 - jb : 0, v1 = j1 - jb < width ? j1 - jb : width;
        __m512 vlo = _mm512_setzero_ps(), vhi = _mm512_setzero_ps();
        if (v1 > v0) {
          if (step == 1) {
            // Lanes [v0, v1) hold columns jb + v0 ..: masked loads never touch the other lanes.
            const __mmask16 m = static_cast<__mmask16>(first_lanes(v1) & ~first_lanes(v0));
            const int64_t e = off + jb;  // element of lane 0 (may lie before the row: masked)
            vlo = _mm512_maskz_loadu_ps(m, x0 + e);
            if (x1) vhi = _mm512_maskz_loadu_ps(m, x1 + e);
          } else {
            for (int v = 0; v < 16; ++v) lo[v] = hi[v] = 0.0f;
            for (int64_t v = v0; v < v1; ++v) {
              const int64_t e = off + (jb + v) * step;
              lo[v] = x0[e];
              if (x1) hi[v] = x1[e];
            }
            vlo = _mm512_load_ps(lo);
            vhi = _mm512_load_ps(hi);
          }
        }
        const __m512i words = pack_pairs(vlo, vhi);
        if (width == 16)
          _mm512_storeu_si512(row + jb, words);
        else
          _mm512_mask_storeu_epi32(row + jb, first_lanes(width), words);
      }
    }
  }
}

// Every pair's planes of image n, then the slack the last tiles read (kept finite: zero).
void fill_planes(const Conv2dParams& p, const Conv2dCpuPlan& g, int64_t n, uint32_t* planes,
                 int64_t words) {
  const Conv2dShape& s = p.shape;
  const int64_t pairs = (g.Cg + 1) / 2, total = s.groups * pairs;
  const int64_t grain = g.plane_stride >= 4096 ? 1 : 4096 / g.plane_stride + 1;
  parallel_for(total, grain, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t grp = q / pairs, cp = q % pairs;
      const int64_t c0 = grp * g.Cg + 2 * cp;
      const int64_t c1 = 2 * cp + 1 < g.Cg ? c0 + 1 : -1;
      fill_pair(p, g, n, c0, c1, planes + q * g.plane_stride);
    }
  });
  const int64_t used = total * g.plane_stride;
  std::memset(planes + used, 0, static_cast<size_t>(words - used) * sizeof(uint32_t));
}

// ---- (2) GEMM -------------------------------------------------------------------------------

// tile[MR][NV*16] = A_panel . B over K = pairs x taps, B[(cp, t)][j] = b[cp*plane_stride +
// tap[t] + j] (a word: one channel pair at one position). The accumulators stay in registers.
template <int NV>
void microkernel(const uint32_t* a, const uint32_t* b, int64_t pairs, int64_t plane_stride,
                 const int64_t* tap, int64_t ntaps, float* tile) {
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  for (int64_t cp = 0; cp < pairs; ++cp) {
    const uint32_t* bc = b + cp * plane_stride;
    for (int64_t t = 0; t < ntaps; ++t) {
      const uint32_t* bp = bc + tap[t];
      __m512i bv[NV];
#pragma GCC unroll 3
      for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_si512(bp + v * 16);
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        const __m512i av = _mm512_set1_epi32(static_cast<int>(a[i]));
#pragma GCC unroll 3
        for (int v = 0; v < NV; ++v) acc[i][v] = dot_pairs(acc[i][v], av, bv[v]);
      }
      a += MR;
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(tile + i * NR + v * 16, acc[i][v]);
}

// y[row, ow0 : ow0 + len] = act(src[0 : len] + bias), ys_w == 1 vectorised.
inline void store_run(const float* src, float* dst, int64_t len, int64_t ys_w, float bias,
                      bool relu) {
  if (ys_w == 1) {
    const __m512 vb = _mm512_set1_ps(bias), zero = _mm512_setzero_ps();
    for (int64_t j = 0; j < len; j += 16) {
      const __mmask16 m = first_lanes(len - j);
      __m512 r = _mm512_add_ps(_mm512_maskz_loadu_ps(m, src + j), vb);
      if (relu) r = _mm512_max_ps(zero, r);  // NaN stays NaN (max returns its second operand)
      _mm512_mask_storeu_ps(dst + j, m, r);
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
                int64_t p0, int64_t cols, int64_t m0, int64_t rows) {
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
      store_run(tile + i * NR + j, dst, len, p.y_stride.w, p.bias ? f32(p.bias)[m] : 0.0f, p.relu);
    }
  }
}

void conv_gemm(const Conv2dParams& p, const Conv2dCpuPlan& g, int64_t n, const uint32_t* planes) {
  const Conv2dShape& s = p.shape;
  const int64_t pairs = (g.Cg + 1) / 2;
  const int64_t k = pairs * g.ntaps;
  const int64_t n_tiles = (g.virtual_cols + NR - 1) / NR;
  // As conv2d_cpu.cpp: (group, tile) tasks, each running every panel of its group over one tile
  // (its B rows stay in L1/L2), or split by panel too when that gives too few tasks.
  const int64_t nthreads = get_num_threads();
  const bool split_m = s.groups * n_tiles < 4 * nthreads;
  const int64_t m_tasks = split_m ? g.m_blocks : 1;
  const int64_t tasks = s.groups * m_tasks * n_tiles;
  const uint32_t* weights = static_cast<const uint32_t*>(p.weight);
  parallel_for(tasks, 1, [&](int64_t t0, int64_t t1) {
    alignas(64) float tile[MR * NR];
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t tile_idx = task % n_tiles;
      const int64_t rest = task / n_tiles;
      const int64_t mt = rest % m_tasks, grp = rest / m_tasks;
      const int64_t mb_begin = split_m ? mt : 0, mb_end = split_m ? mt + 1 : g.m_blocks;
      const int64_t p0 = tile_idx * NR;
      const int64_t cols = g.virtual_cols - p0 < NR ? g.virtual_cols - p0 : NR;
      const int nv = static_cast<int>((cols + 15) / 16);
      const uint32_t* b = planes + grp * pairs * g.plane_stride + p0;
      for (int64_t mb = mb_begin; mb < mb_end; ++mb) {
        const uint32_t* a = weights + (grp * g.m_blocks + mb) * MR * k;
        if (nv >= 3)
          microkernel<3>(a, b, pairs, g.plane_stride, g.tap_offset, g.ntaps, tile);
        else if (nv == 2)
          microkernel<2>(a, b, pairs, g.plane_stride, g.tap_offset, g.ntaps, tile);
        else
          microkernel<1>(a, b, pairs, g.plane_stride, g.tap_offset, g.ntaps, tile);
        const int64_t m0 = mb * MR;
        const int64_t rows = g.Mg - m0 < MR ? g.Mg - m0 : MR;
        store_tile(p, g, n, tile, p0, cols, grp * g.Mg + m0, rows);
      }
    }
  });
}

}  // namespace

void conv2d_bf16(const Conv2dParams& p, const Conv2dCpuPlan& g) {
  uint32_t* planes = static_cast<uint32_t*>(p.workspace);
  const int64_t words = static_cast<int64_t>(p.workspace_bytes / sizeof(uint32_t));
  for (int64_t n = 0; n < p.shape.N; ++n) {
    fill_planes(p, g, n, planes, words);
    conv_gemm(p, g, n, planes);
  }
}

}  // namespace MMFAST_VARIANT
}  // namespace mmfast
