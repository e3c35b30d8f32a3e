// The bf16 convolution's AVX512-BF16 kernel: the spatial implicit GEMM of conv2d_cpu.cpp with K
// taken in channel pairs (layouts and error bound in conv2d_cpu_bf16.h). Per image:
//  (1) fill the channel pairs' phase planes, float32 -> bf16 pairs (parallel over pairs);
//  (2) out_virtual[m, p'] = sum_(pair, tap) A[m, (pair, tap)] . planes[pair][tap_offset + p'],
//      a microkernel of kConvBf16MR output channels (one broadcast word each) x 3 vectors of 16
//      virtual positions: 24 zmm accumulators, each VDPBF16PS doing 32 multiply-adds;
//  then bias and ReLU in float32 when a tile is written out. Besides: (1b) tap-pair planes for
//  few odd channels (the stem), the same GEMM over them; (2a) 1x1 direct mode, pairs converted
//  per chunk of positions; (2b) the channel-vectorised GEMM for small images; (3) depthwise, the
//  tap-pair ring for stride 1, rounded float32 planes otherwise.
// Compiled once, with -mavx512bf16, into namespace mmfast::avx512bf16.
#include "conv2d/conv2d_cpu_bf16.h"

#include <algorithm>
#include <cstring>

#include "common/bf16.h"
#include "common/bf16_simd.h"
#include "common/parallel.h"

namespace mmfast {
namespace MMFAST_VARIANT {
namespace {

constexpr int MR = kConvBf16MR;
constexpr int NR = kConvBf16NR;  // positions per tile
constexpr int kNV = NR / 16;     // vectors of 16 positions per tile
static_assert(kNV * 16 == NR && kNV == 3, "the microkernels run 3 vectors of 16");
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
    // Plane columns [j0, j1) read the input (the plan's), the others are padding.
    const int64_t j0 = g.phase_j0[slot], j1 = g.phase_j1[slot];
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
          if (step == 1 && v0 == 0 && v1 == 16) {
            vlo = _mm512_loadu_ps(x0 + off + jb);
            if (x1) vhi = _mm512_loadu_ps(x1 + off + jb);
          } else if (step == 1) {
            // Lanes [v0, v1) take columns jb + v0 .. jb + v1 - 1: an expanding load reads just
            // those elements, from the first one on.
            const __mmask16 m = static_cast<__mmask16>(first_lanes(v1) & ~first_lanes(v0));
            const int64_t e = off + jb + v0;
            vlo = _mm512_maskz_expandloadu_ps(m, x0 + e);
            if (x1) vhi = _mm512_maskz_expandloadu_ps(m, x1 + e);
          } else if (step == 2 && v0 == 0 && v1 == 16) {
            // Stride 2 (a stem): the even elements of 31 contiguous ones.
            const int64_t e = off + jb * 2;
            const __m512i even =
                _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
            const __mmask16 m15 = static_cast<__mmask16>(0x7fff);
            vlo = _mm512_permutex2var_ps(_mm512_loadu_ps(x0 + e), even,
                                         _mm512_maskz_loadu_ps(m15, x0 + e + 16));
            if (x1)
              vhi = _mm512_permutex2var_ps(_mm512_loadu_ps(x1 + e), even,
                                           _mm512_maskz_loadu_ps(m15, x1 + e + 16));
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

// ---- (1b) tap-pair planes (tap-pair mode, conv2d_cpu_bf16.h) ---------------------------------

// 16 elements of a zero-padded contiguous row: xpad[a + k] = xr[a + k] for 0 <= a + k < W, else
// 0 (a: the x index of lane 0). Inside the row a plain load; at its ends an expanding load of
// just the valid lanes, from the first valid element on (no pointer outside the row).
inline __m512 padded_load(const float* xr, int64_t a, int64_t W) {
  if (a >= 0 && a + 16 <= W) return _mm512_loadu_ps(xr + a);
  const int64_t v0 = a < 0 ? -a : 0, v1 = W - a < 16 ? W - a : 16;
  if (v1 <= v0) return _mm512_setzero_ps();
  const __mmask16 m = static_cast<__mmask16>(first_lanes(v1) & ~first_lanes(v0));
  return _mm512_maskz_expandloadu_ps(m, xr + a + v0);
}

// Lanes k of a row at columns (jb + k) * 2 + e (stride 2): the even elements of 32 from e on.
inline __m512 stride2_load(const float* xr, int64_t e, int64_t W) {
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  return _mm512_permutex2var_ps(padded_load(xr, e, W), even, padded_load(xr, e + 16, W));
}

// Channel c's plane of kind `kind` (0: P, 1: R, 2: L) at phase slot `slot`, image n, at dst:
// dst[i*Wq + j] = (bf16 xpad[R, C], bf16 second), R = i*SH + a, C = j*SW + b (layout in
// conv2d_cpu_bf16.h).
void fill_tap_plane(const Conv2dParams& p, const Conv2dCpuPlan& g, int64_t n, int64_t c, int kind,
                    int64_t slot, uint32_t* dst) {
  const Conv2dShape& s = p.shape;
  const float* xc = f32(p.x) + n * p.x_stride.n + c * p.x_stride.c;
  const int64_t a = g.phase_a[slot], b = g.phase_b[slot];
  const int64_t drow = kind == 1 ? s.dilation_h : 0, dcol = kind == 0 ? s.dilation_w : 0;
  const int64_t off_lo = b - s.pad_left, off_hi = off_lo + dcol;  // x column of plane column 0
  const bool dense = p.x_stride.w == 1;
  alignas(64) float lo[16], hi[16];
  for (int64_t i = 0; i < g.Hq; ++i) {
    uint32_t* row = dst + i * g.Wq;
    const int64_t r_lo = i * s.stride_h + a - s.pad_top, r_hi = r_lo + drow;
    const float* xlo = r_lo >= 0 && r_lo < s.H ? xc + r_lo * p.x_stride.h : nullptr;
    const float* xhi = kind != 2 && r_hi >= 0 && r_hi < s.H ? xc + r_hi * p.x_stride.h : nullptr;
    if (!xlo && !xhi) {
      std::memset(row, 0, static_cast<size_t>(g.Wq) * sizeof(uint32_t));
      continue;
    }
    for (int64_t jb = 0; jb < g.Wq; jb += 16) {
      const int64_t width = g.Wq - jb < 16 ? g.Wq - jb : 16;
      __m512i words;
      if (dense && s.stride_w == 1) {
        words = pack_pairs(xlo ? padded_load(xlo, jb + off_lo, s.W) : _mm512_setzero_ps(),
                           xhi ? padded_load(xhi, jb + off_hi, s.W) : _mm512_setzero_ps());
      } else if (dense && s.stride_w == 2 && kind == 0 && dcol == 1 && xlo) {
        // (x[2j + e], x[2j + e + 1]): 32 consecutive elements, already in pair order
        const int64_t e = 2 * jb + off_lo;
        words =
            (__m512i)_mm512_cvtne2ps_pbh(padded_load(xlo, e + 16, s.W), padded_load(xlo, e, s.W));
      } else if (dense && s.stride_w == 2) {
        words = pack_pairs(xlo ? stride2_load(xlo, 2 * jb + off_lo, s.W) : _mm512_setzero_ps(),
                           xhi ? stride2_load(xhi, 2 * jb + off_hi, s.W) : _mm512_setzero_ps());
      } else {
        for (int64_t v = 0; v < 16; ++v) {
          const int64_t cl = (jb + v) * s.stride_w + off_lo, ch = (jb + v) * s.stride_w + off_hi;
          lo[v] = xlo && v < width && cl >= 0 && cl < s.W ? xlo[cl * p.x_stride.w] : 0.0f;
          hi[v] = xhi && v < width && ch >= 0 && ch < s.W ? xhi[ch * p.x_stride.w] : 0.0f;
        }
        words = pack_pairs(_mm512_load_ps(lo), _mm512_load_ps(hi));
      }
      if (width == 16)
        _mm512_storeu_si512(row + jb, words);
      else
        _mm512_mask_storeu_epi32(row + jb, first_lanes(width), words);
    }
  }
}

// Every channel's used tap-pair planes of image n, then the slack the last tiles read (zero).
void fill_tap_planes(const Conv2dParams& p, const Conv2dCpuPlan& g, const Conv2dBf16TapPairs& t,
                     int64_t n, uint32_t* planes, int64_t words) {
  const Conv2dShape& s = p.shape;
  const int64_t kind_stride = g.nphases * g.phase_stride;
  parallel_for(s.C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      for (int kind = 0; kind < kConvBf16TapKinds; ++kind) {
        for (int64_t slot = 0; slot < g.nphases; ++slot) {
          if (t.used[kind][slot])
            fill_tap_plane(
                p, g, n, c, kind, slot,
                planes + c * t.plane_stride + kind * kind_stride + slot * g.phase_stride);
        }
      }
    }
  });
  const int64_t used = s.C * t.plane_stride;
  if (words > used)
    std::memset(planes + used, 0, static_cast<size_t>(words - used) * sizeof(uint32_t));
}

// ---- (2) GEMM -------------------------------------------------------------------------------

// Where a full tile's 3 vectors of virtual positions go in y (rows of y contiguous, Wq >= 16 so
// a vector spans at most two output rows): vector v's lanes [0, n0) to y + off0[v] (its first
// row, from its column on), and lanes [shift, shift + n1) to y + off1[v] (the next row, from
// column 0), moved down by `shift` lanes first; the lanes between are garbage columns.
struct TileOut {
  int64_t off0[3], off1[3];
  __mmask16 m0[3], m1[3];
  __m512i down[3];  // lane j <- lane j + shift
  bool whole[3];    // all 16 lanes are outputs of the first row: a plain store
};

void tile_out(const Conv2dParams& p, const Conv2dCpuPlan& g, int64_t p0, TileOut& o) {
  const Conv2dShape& s = p.shape;
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int v = 0; v < 3; ++v) {
    const int64_t q = p0 + v * 16, oh = q / g.Wq, ow = q % g.Wq;
    const int64_t n0 = s.OW - ow < 0 ? 0 : s.OW - ow < 16 ? s.OW - ow : 16;
    const int64_t shift = g.Wq - ow;
    const int64_t n1 = shift < 16 && oh + 1 < s.OH ? std::min<int64_t>(16 - shift, s.OW) : 0;
    o.off0[v] = oh * p.y_stride.h + ow;
    o.off1[v] = (oh + 1) * p.y_stride.h;
    o.m0[v] = first_lanes(n0);
    o.m1[v] = first_lanes(n1);
    o.down[v] = _mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int>(shift < 16 ? shift : 0)));
    o.whole[v] = n0 == 16;
  }
}

// tile[MR][NV*16] = A_panel . B over K = pairs x taps, B[(cp, t)][j] = b[cp*plane_stride +
// tap[t] + j] (a word: one channel pair at one position). The accumulators stay in registers.
// ToY (NV = 3, full panels): straight to y instead, row i (output channel m0 + i) at
// y + i * ys_c as `out` says, with bias (may be null) and ReLU: store_tile's round trip through
// the tile was ~13% of the 7x7 stem.
template <int NV, bool ToY = false>
void microkernel(const uint32_t* a, const uint32_t* b, int64_t pairs, int64_t plane_stride,
                 const int64_t* tap, int64_t ntaps, float* tile, const TileOut* out = nullptr,
                 int64_t ys_c = 0, const float* bias = nullptr, bool relu = false) {
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
  if (ToY) {
    const __m512 zero = _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512 vb = _mm512_set1_ps(bias ? bias[i] : 0.0f);
      float* yi = tile + i * ys_c;
#pragma GCC unroll 3
      for (int v = 0; v < NV; ++v) {
        __m512 r = _mm512_add_ps(acc[i][v], vb);
        if (relu) r = _mm512_max_ps(zero, r);  // NaN stays NaN
        if (out->whole[v]) {
          _mm512_storeu_ps(yi + out->off0[v], r);
          continue;
        }
        if (out->m0[v]) _mm512_mask_storeu_ps(yi + out->off0[v], out->m0[v], r);
        if (out->m1[v])
          _mm512_mask_storeu_ps(yi + out->off1[v], out->m1[v],
                                _mm512_permutexvar_ps(out->down[v], r));
      }
    }
    return;
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
    int64_t j = 0;
    for (; j + 16 <= len; j += 16) {
      __m512 r = _mm512_add_ps(_mm512_loadu_ps(src + j), vb);
      if (relu) r = _mm512_max_ps(zero, r);  // NaN stays NaN (max returns its second operand)
      _mm512_storeu_ps(dst + j, r);
    }
    if (j < len) {
      const __mmask16 m = first_lanes(len - j);
      __m512 r = _mm512_add_ps(_mm512_maskz_loadu_ps(m, src + j), vb);
      if (relu) r = _mm512_max_ps(zero, r);
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

// B of one chunk in direct mode (1x1, stride 1, no padding, rows contiguous: position p' is
// input element p'): bt[cp * ld + j] = (bf16 x[c0][p0 + j], bf16 x[c0 + 1][p0 + j]) for j <
// cols, zeros up to the next whole vector. Converted once per chunk into this thread's slice of
// the workspace and reused by every panel.
void pack_direct_chunk(const Conv2dParams& p, const Conv2dCpuPlan& g, int64_t n, int64_t grp,
                       int64_t p0, int64_t cols, int64_t ld, uint32_t* bt) {
  const int64_t pairs = (g.Cg + 1) / 2;
  const int64_t full = cols / 16, vecs = (cols + 15) / 16;
  const __mmask16 tail = first_lanes(cols - full * 16);
  const float* xn = f32(p.x) + n * p.x_stride.n + p0;
  for (int64_t cp = 0; cp < pairs; ++cp) {
    const int64_t c0 = grp * g.Cg + 2 * cp;
    const float* x0 = xn + c0 * p.x_stride.c;
    const float* x1 = 2 * cp + 1 < g.Cg ? x0 + p.x_stride.c : nullptr;
    uint32_t* dst = bt + cp * ld;
    int64_t v = 0;
    if (x1) {
      for (; v < full; ++v)
        _mm512_store_si512(dst + v * 16,
                           pack_pairs(_mm512_loadu_ps(x0 + v * 16), _mm512_loadu_ps(x1 + v * 16)));
    } else {
      for (; v < full; ++v)
        _mm512_store_si512(dst + v * 16,
                           pack_pairs(_mm512_loadu_ps(x0 + v * 16), _mm512_setzero_ps()));
    }
    if (v < vecs) {  // the masked tail reads no element past the image
      const __m512 lo = _mm512_maskz_loadu_ps(tail, x0 + v * 16);
      const __m512 hi = x1 ? _mm512_maskz_loadu_ps(tail, x1 + v * 16) : _mm512_setzero_ps();
      _mm512_store_si512(dst + v * 16, pack_pairs(lo, hi));
    }
  }
}

// Direct mode's tile: acc[MR][NV] = A_panel . B over the pairs, B[cp][j] = b[cp * ldb + j]. ToY:
// straight to the output, row i (output channel m0 + i) at out + i * ldo, with bias (may be
// null) and ReLU; else into tile[MR][NR] (out, ldo ignored) for store_tile.
template <int NV, bool ToY>
void microkernel_direct(const uint32_t* a, const uint32_t* b, int64_t pairs, int64_t ldb,
                        float* out, int64_t ldo, const float* bias, bool relu, const float* pf,
                        int64_t pf_stride) {
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  for (int64_t cp = 0; cp < pairs; ++cp) {
    __m512i bv[NV];
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_load_si512(b + v * 16);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512i av = _mm512_set1_epi32(static_cast<int>(a[i]));
#pragma GCC unroll 3
      for (int v = 0; v < NV; ++v) acc[i][v] = dot_pairs(acc[i][v], av, bv[v]);
    }
    if (pf) {
      _mm_prefetch(reinterpret_cast<const char*>(pf), _MM_HINT_T1);
      _mm_prefetch(reinterpret_cast<const char*>(pf + pf_stride), _MM_HINT_T1);
      pf += 2 * pf_stride;
    }
    a += MR;
    b += ldb;
  }
  if (ToY) {
    const __m512 zero = _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512 vb = _mm512_set1_ps(bias ? bias[i] : 0.0f);
#pragma GCC unroll 3
      for (int v = 0; v < NV; ++v) {
        __m512 r = _mm512_add_ps(acc[i][v], vb);
        if (relu) r = _mm512_max_ps(zero, r);  // NaN stays NaN
        _mm512_storeu_ps(out + i * ldo + v * 16, r);
      }
    }
    return;
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(out + i * NR + v * 16, acc[i][v]);
}

// Direct mode per image: tasks of (group, range of panels, chunk of positions); each converts its
// chunk of every pair once (pack_direct_chunk), then runs each panel over the chunk's tiles in
// turn, so a panel writes its 8 output rows as runs of a whole chunk (up to 768 floats) rather
// than of one tile. (One tile per task, every panel over it, wrote 256 rows of 48 floats per tile
// on 1x1 64->256 @56: 2.3x slower per image at batch 8, with the output out of cache, than at
// batch 1, and slower than the float32 kernel.)
void conv_gemm_direct(const Conv2dParams& p, const Conv2dCpuPlan& g, int64_t n) {
  const Conv2dShape& s = p.shape;
  const int64_t pairs = (g.Cg + 1) / 2;
  const int64_t hw = g.virtual_cols;  // OH * OW, the input's own positions
  const int64_t n_tiles = (hw + NR - 1) / NR;
  const int64_t max_tiles = ::mmfast::conv2d_bf16_direct_chunk(pairs) / NR;
  // Fewer than 4 chunks a thread: smaller chunks, so that the threads balance (the pool hands
  // tasks out one by one; a core shared with another process finishes fewer). Splitting the
  // panels instead converts every chunk again: 1x1 256->64 @56 on 2 threads ran at 1.4x fp32
  // that way where 1 thread ran at 1.8x.
  const int64_t nthreads = get_num_threads();
  int64_t n_chunks = (n_tiles + max_tiles - 1) / max_tiles;
  if (s.groups * n_chunks < 4 * nthreads)
    n_chunks = std::min(n_tiles, (4 * nthreads + s.groups - 1) / s.groups);
  const int64_t chunk = (n_tiles + n_chunks - 1) / n_chunks * NR;
  n_chunks = (hw + chunk - 1) / chunk;
  // Panels split into ranges only when the chunks are still fewer than the threads (each range
  // converts its chunk again).
  const int64_t have = s.groups * n_chunks;
  const int64_t m_tasks =
      have >= nthreads ? 1 : std::min<int64_t>(g.m_blocks, (nthreads + have - 1) / have);
  const int64_t m_per = (g.m_blocks + m_tasks - 1) / m_tasks;
  const int64_t tasks = s.groups * m_tasks * n_chunks;
  const uint32_t* weights = static_cast<const uint32_t*>(p.weight);
  const bool to_y = p.y_stride.w == 1 && (p.y_stride.h == s.OW || s.OH == 1);
  float* yn = static_cast<float*>(p.y) + n * p.y_stride.n;
  const float* bias = p.bias ? f32(p.bias) : nullptr;
  parallel_for(tasks, 1, [&](int64_t t0, int64_t t1) {
    alignas(64) float tile[MR * NR];
    const int tid = current_thread_index();
    uint32_t* bt =
        static_cast<uint32_t*>(p.workspace) + (tid < g.nthreads ? tid : 0) * pairs * chunk;
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t ci = task % n_chunks, rest = task / n_chunks;
      const int64_t mt = rest % m_tasks, grp = rest / m_tasks;
      const int64_t mb_begin = mt * m_per;
      const int64_t mb_end = std::min(g.m_blocks, mb_begin + m_per);
      const int64_t p0 = ci * chunk, cols = std::min(chunk, hw - p0);
      pack_direct_chunk(p, g, n, grp, p0, cols, chunk, bt);
      // Prefetch (into L2) the next chunk's input lines, one line of each channel row per
      // microkernel call, while this chunk is multiplied.
      const int64_t next_cols = ci + 1 < n_chunks ? std::min(chunk, hw - p0 - chunk) : 0;
      const int64_t pf_lines = (next_cols + 15) / 16;
      const float* pf_base = f32(p.x) + n * p.x_stride.n + grp * g.Cg * p.x_stride.c + p0 + chunk;
      int64_t call = 0;
      for (int64_t mb = mb_begin; mb < mb_end; ++mb) {
        const uint32_t* a = weights + (grp * g.m_blocks + mb) * MR * pairs;
        const int64_t m0 = mb * MR, m = grp * g.Mg + m0;
        const int64_t rows = std::min<int64_t>(MR, g.Mg - m0);
        for (int64_t j0 = 0; j0 < cols; j0 += NR) {
          const int64_t tc = std::min<int64_t>(NR, cols - j0);
          const float* pf = call < pf_lines ? pf_base + call * 16 : nullptr;
          ++call;
          if (to_y && tc == NR && rows == MR) {
            microkernel_direct<3, true>(a, bt + j0, pairs, chunk, yn + m * p.y_stride.c + p0 + j0,
                                        p.y_stride.c, bias ? bias + m : nullptr, p.relu, pf,
                                        p.x_stride.c);
            continue;
          }
          const int nv = static_cast<int>((tc + 15) / 16);
          if (nv >= 3)
            microkernel_direct<3, false>(a, bt + j0, pairs, chunk, tile, 0, nullptr, false, pf,
                                         p.x_stride.c);
          else if (nv == 2)
            microkernel_direct<2, false>(a, bt + j0, pairs, chunk, tile, 0, nullptr, false, pf,
                                         p.x_stride.c);
          else
            microkernel_direct<1, false>(a, bt + j0, pairs, chunk, tile, 0, nullptr, false, pf,
                                         p.x_stride.c);
          store_tile(p, g, n, tile, p0 + j0, tc, m, rows);
        }
      }
    }
  });
}

// The K pairs of the spatial GEMM: `units` plane sets a group (channel pairs, or channels in
// tap-pair mode), `stride` words apart, each read at `ntaps` offsets `tap` (the taps, or the
// tap pairs); the packed weights in the same order, [unit][tap][m] per panel.
struct KPairs {
  int64_t units, stride;
  const int64_t* tap;
  int64_t ntaps;
};

// planes: image n's planes (KPairs k's layout).
void conv_gemm(const Conv2dParams& p, const Conv2dCpuPlan& g, int64_t n, const uint32_t* planes,
               const KPairs& kp) {
  const Conv2dShape& s = p.shape;
  const int64_t pairs = kp.units;
  const int64_t k = pairs * kp.ntaps;
  const int64_t n_tiles = (g.virtual_cols + NR - 1) / NR;
  // As conv2d_cpu.cpp: (group, tile) tasks, each running every panel of its group over one tile
  // (its B rows stay in L1/L2), or split by panel too when that gives too few tasks.
  const int64_t nthreads = get_num_threads();
  const bool split_m = s.groups * n_tiles < 4 * nthreads;
  const int64_t m_tasks = split_m ? g.m_blocks : 1;
  const int64_t tasks = s.groups * m_tasks * n_tiles;
  const uint32_t* weights = static_cast<const uint32_t*>(p.weight);
  // Full tiles go straight to y where its rows are contiguous (a vector then spans at most two
  // output rows when Wq >= 16).
  const bool y_dense = p.y_stride.w == 1 && g.Wq >= 16;
  float* yn = static_cast<float*>(p.y) + n * p.y_stride.n;
  parallel_for(tasks, 1, [&](int64_t t0, int64_t t1) {
    alignas(64) float tile[MR * NR];
    TileOut out{};  // (set by tile_out before any use)
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t tile_idx = task % n_tiles;
      const int64_t rest = task / n_tiles;
      const int64_t mt = rest % m_tasks, grp = rest / m_tasks;
      const int64_t mb_begin = split_m ? mt : 0, mb_end = split_m ? mt + 1 : g.m_blocks;
      const int64_t p0 = tile_idx * NR;
      const int64_t cols = g.virtual_cols - p0 < NR ? g.virtual_cols - p0 : NR;
      const int nv = static_cast<int>((cols + 15) / 16);
      const uint32_t* b = planes + grp * pairs * kp.stride + p0;
      const bool to_y = y_dense && cols == NR;
      if (to_y) tile_out(p, g, p0, out);
      for (int64_t mb = mb_begin; mb < mb_end; ++mb) {
        const uint32_t* a = weights + (grp * g.m_blocks + mb) * MR * k;
        if (to_y && g.Mg - mb * MR >= MR) {
          const int64_t m = grp * g.Mg + mb * MR;
          microkernel<3, true>(a, b, pairs, kp.stride, kp.tap, kp.ntaps, yn + m * p.y_stride.c,
                               &out, p.y_stride.c, p.bias ? f32(p.bias) + m : nullptr, p.relu);
          continue;
        }
        if (nv >= 3)
          microkernel<3>(a, b, pairs, kp.stride, kp.tap, kp.ntaps, tile);
        else if (nv == 2)
          microkernel<2>(a, b, pairs, kp.stride, kp.tap, kp.ntaps, tile);
        else
          microkernel<1>(a, b, pairs, kp.stride, kp.tap, kp.ntaps, tile);
        const int64_t m0 = mb * MR;
        const int64_t rows = g.Mg - m0 < MR ? g.Mg - m0 : MR;
        store_tile(p, g, n, tile, p0, cols, grp * g.Mg + m0, rows);
      }
    }
  });
}

// ---- (2b) channel-vectorised GEMM ---------------------------------------------------------------

// As conv2d_cpu.cpp's channel path (small images, many channels): 6 output positions, each a
// broadcast word (one channel pair at one position, from the pair planes) x up to 4 vectors of
// 16 output channels (the "cols" packing: per (pair, tap), kConvNC words (w[m, 2c'],
// w[m, 2c'+1])): 24 accumulators. (8 positions x 2 vectors, a 64-wide panel in two halves, was
// 10-17% slower on 3x3 128 @28, 256 @14, 512 @7.)
constexpr int kPosRows = 6;
constexpr int kNVc = kConvNC / 16;
static_assert(kNVc * 16 == kConvNC, "panel must be whole vectors");
static_assert(kNVc <= 4, "conv_gemm_cols runs at most 4 vectors a panel");

// tile[i][v*16 + j] (+)= sum over pairs [cp0, cp1) x taps of planes[pos[i] + cp*plane_stride +
// tap[t]] . a[(cp, t)][v*16 + j]; a points at (cp0, 0) of a panel.
template <int NV>
void microkernel_cols(const uint32_t* a, const uint32_t* planes, const int64_t* pos, int64_t cp0,
                      int64_t cp1, int64_t plane_stride, const int64_t* tap, int64_t ntaps,
                      float* tile, bool accumulate) {
  __m512 acc[kPosRows][NV];
  const uint32_t* r[kPosRows];
#pragma GCC unroll 8
  for (int i = 0; i < kPosRows; ++i) {
    r[i] = planes + pos[i];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      acc[i][v] = accumulate ? _mm512_load_ps(tile + i * kConvNC + v * 16) : _mm512_setzero_ps();
  }
  for (int64_t cp = cp0; cp < cp1; ++cp) {
    for (int64_t t = 0; t < ntaps; ++t) {
      const int64_t off = cp * plane_stride + tap[t];
      __m512i av[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) av[v] = _mm512_loadu_si512(a + v * 16);
#pragma GCC unroll 8
      for (int i = 0; i < kPosRows; ++i) {
        const __m512i bv = _mm512_set1_epi32(static_cast<int>(r[i][off]));
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[i][v] = dot_pairs(acc[i][v], bv, av[v]);
      }
      a += kConvNC;
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < kPosRows; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) _mm512_store_ps(tile + i * kConvNC + v * 16, acc[i][v]);
}

// Lanes each path uses, to pick one (as conv2d_cpu.cpp): spatial wastes garbage columns and
// tail vectors, channel wastes tail positions and tail channel vectors.
bool prefer_channel_path(const Conv2dShape& s, const Conv2dCpuPlan& g) {
  const double useful = static_cast<double>(s.OH * s.OW);
  const int64_t s_tiles = (g.virtual_cols + NR - 1) / NR;
  const int64_t s_last = g.virtual_cols - (s_tiles - 1) * NR;
  const double s_cols = static_cast<double>((s_tiles - 1) * NR + (s_last + 15) / 16 * 16);
  const double s_eff =
      useful / s_cols * static_cast<double>(g.Mg) / static_cast<double>(g.m_blocks * MR);
  const int64_t c_rows = (s.OH * s.OW + kPosRows - 1) / kPosRows * kPosRows;
  const double c_eff = useful / static_cast<double>(c_rows) * static_cast<double>(g.Mg) /
                       static_cast<double>((g.Mg + 15) / 16 * 16);
  return c_eff > 1.04 * s_eff;
}

// Images n0 .. n0 + count - 1 as one GEMM: position q is image n0 + q / (OH*OW), whose pair
// planes start at planes + (q / (OH*OW)) * image_words.
void conv_gemm_cols(const Conv2dParams& p, const Conv2dCpuPlan& g, int64_t n0, int64_t count,
                    const uint32_t* planes, int64_t image_words) {
  const Conv2dShape& s = p.shape;
  const int64_t pairs = (g.Cg + 1) / 2;
  const int64_t k = pairs * g.ntaps;
  const int64_t hw = s.OH * s.OW;
  const int64_t positions = count * hw;
  const int64_t pblocks = (positions + kPosRows - 1) / kPosRows;
  const int64_t panels = (g.Mg + kConvNC - 1) / kConvNC;
  // Tasks: (group, panel, run of up to 8 position blocks); K blocked (~256 pairs x taps) so
  // the weight block stays in L2 while the blocks reuse it.
  constexpr int64_t kGroupBlocks = 8;
  const int64_t pgroups = (pblocks + kGroupBlocks - 1) / kGroupBlocks;
  const int64_t cp_block = g.ntaps >= 256 ? 1 : 256 / g.ntaps;
  const int64_t tasks = s.groups * panels * pgroups;
  float* yn = static_cast<float*>(p.y) + n0 * p.y_stride.n;
  const uint32_t* weights = static_cast<const uint32_t*>(p.weight_cols);
  parallel_for(tasks, 1, [&](int64_t t0, int64_t t1) {
    alignas(64) float tiles[kGroupBlocks][kPosRows * kConvNC];
    int64_t pos[kGroupBlocks][kPosRows];
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t pg = task % pgroups;
      const int64_t panel = (task / pgroups) % panels, grp = task / (pgroups * panels);
      const int64_t m0 = panel * kConvNC;
      const int64_t width = g.Mg - m0 < kConvNC ? g.Mg - m0 : kConvNC;
      const int nv = static_cast<int>((width + 15) / 16);
      const int64_t pb0 = pg * kGroupBlocks;
      const int64_t pb1 = pb0 + kGroupBlocks < pblocks ? pb0 + kGroupBlocks : pblocks;
      for (int64_t pb = pb0; pb < pb1; ++pb) {
        for (int i = 0; i < kPosRows; ++i) {
          int64_t q = pb * kPosRows + i;
          if (q >= positions) q = positions - 1;  // past the end: repeat the last (dropped)
          const int64_t img = q / hw, qq = q % hw;
          pos[pb - pb0][i] = img * image_words + (qq / s.OW) * g.Wq + qq % s.OW;
        }
      }
      const uint32_t* a_panel = weights + (grp * panels + panel) * kConvNC * k;
      const uint32_t* gplanes = planes + grp * pairs * g.plane_stride;
      for (int64_t cp0 = 0; cp0 < pairs; cp0 += cp_block) {
        const int64_t cp1 = cp0 + cp_block < pairs ? cp0 + cp_block : pairs;
        const uint32_t* a = a_panel + cp0 * g.ntaps * kConvNC;
        for (int64_t pb = pb0; pb < pb1; ++pb) {
          float* tile = tiles[pb - pb0];
          const int64_t* ps = pos[pb - pb0];
          if (nv == 4)
            microkernel_cols<4>(a, gplanes, ps, cp0, cp1, g.plane_stride, g.tap_offset, g.ntaps,
                                tile, cp0 > 0);
          else if (nv == 3)
            microkernel_cols<3>(a, gplanes, ps, cp0, cp1, g.plane_stride, g.tap_offset, g.ntaps,
                                tile, cp0 > 0);
          else if (nv == 2)
            microkernel_cols<2>(a, gplanes, ps, cp0, cp1, g.plane_stride, g.tap_offset, g.ntaps,
                                tile, cp0 > 0);
          else
            microkernel_cols<1>(a, gplanes, ps, cp0, cp1, g.plane_stride, g.tap_offset, g.ntaps,
                                tile, cp0 > 0);
        }
      }
      // Transposing store: tile rows are positions, columns output channels. When the run's
      // positions are consecutive outputs of one image in dense output rows, each channel's run
      // is contiguous in y: gathered 16 positions at a time (as conv2d_cpu.cpp; the scalar
      // store below took ~10% of a 3x3 layer there).
      const int64_t q_first = pb0 * kPosRows, run = (pb1 - pb0) * kPosRows;
      if (p.y_stride.w == 1 && (p.y_stride.h == s.OW || s.OH == 1) && q_first + run <= positions &&
          q_first / hw == (q_first + run - 1) / hw) {
        const float* flat = &tiles[0][0];  // (kGroupBlocks * kPosRows) x kConvNC
        const __m512i idx = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(kConvNC));
        float* ybase = yn + (q_first / hw) * p.y_stride.n + q_first % hw;
        const __m512 zero = _mm512_setzero_ps();
        for (int64_t j = 0; j < width; ++j) {
          const int64_t m = grp * g.Mg + m0 + j;
          const __m512 vb = _mm512_set1_ps(p.bias ? f32(p.bias)[m] : 0.0f);
          float* ym = ybase + m * p.y_stride.c;
          for (int64_t q = 0; q < run; q += 16) {
            __m512 r = _mm512_add_ps(_mm512_i32gather_ps(idx, flat + q * kConvNC + j, 4), vb);
            if (p.relu) r = _mm512_max_ps(zero, r);  // NaN stays NaN
            if (run - q >= 16)
              _mm512_storeu_ps(ym + q, r);
            else
              _mm512_mask_storeu_ps(ym + q, first_lanes(run - q), r);
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

// ---- (3) depthwise ----------------------------------------------------------------------------

// One input channel per group has no channel pairs for VDPBF16PS: the stencil of
// conv2d_cpu.cpp in float32 FMAs on the bf16-rounded input and weights (exact products, the same
// bound). Channel c's planes, each value rounded to bf16, as float32 at dst.
inline __m512 round_bf16_ps(__m512 v) {
  const __m256i h = (__m256i)_mm512_cvtneps_pbh(v);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

void fill_channel_rounded(const Conv2dParams& p, const Conv2dCpuPlan& g, int64_t n, int64_t c,
                          float* dst) {
  const Conv2dShape& s = p.shape;
  const float* xc = f32(p.x) + n * p.x_stride.n + c * p.x_stride.c;
  const int64_t step = s.stride_w * p.x_stride.w;
  alignas(64) float lo[16];
  for (int64_t slot = 0; slot < g.nphases; ++slot) {
    const int64_t a = g.phase_a[slot], b = g.phase_b[slot];
    float* ph = dst + slot * g.phase_stride;
    // Plane columns [j0, j1) read the input (the plan's), the others are padding.
    const int64_t j0 = g.phase_j0[slot], j1 = g.phase_j1[slot];
    for (int64_t i = 0; i < g.Hq; ++i) {
      float* row = ph + i * g.Wq;
      const int64_t r = i * s.stride_h + a - s.pad_top;
      if (r < 0 || r >= s.H || j1 <= j0) {
        std::memset(row, 0, static_cast<size_t>(g.Wq) * sizeof(float));
        continue;
      }
      const int64_t off = r * p.x_stride.h + (b - s.pad_left) * p.x_stride.w;
      for (int64_t jb = 0; jb < g.Wq; jb += 16) {
        const int64_t width = g.Wq - jb < 16 ? g.Wq - jb : 16;
        const int64_t v0 = j0 > jb ? j0 - jb : 0, v1 = j1 - jb < width ? j1 - jb : width;
        __m512 v = _mm512_setzero_ps();
        if (v1 > v0) {
          if (step == 1 && v0 == 0 && v1 == 16) {
            v = _mm512_loadu_ps(xc + off + jb);
          } else if (step == 1) {  // (as in fill_pair)
            const __mmask16 m = static_cast<__mmask16>(first_lanes(v1) & ~first_lanes(v0));
            v = _mm512_maskz_expandloadu_ps(m, xc + off + jb + v0);
          } else {
            for (int t = 0; t < 16; ++t) lo[t] = 0.0f;
            for (int64_t t = v0; t < v1; ++t) lo[t] = xc[off + (jb + t) * step];
            v = _mm512_load_ps(lo);
          }
        }
        if (width == 16)
          _mm512_storeu_ps(row + jb, round_bf16_ps(v));
        else
          _mm512_mask_storeu_ps(row + jb, first_lanes(width), round_bf16_ps(v));
      }
    }
  }
}

// NV vectors of one output row: acc = bias + sum_t w[t] * src[tap[t] + v*16], ReLU, store.
template <int NV>
inline void depthwise_run(const float* src, const int64_t* tap, const float* w, int64_t ntaps,
                          float* dst, int64_t len, int64_t ys_w, float bias, bool relu) {
  __m512 acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = _mm512_set1_ps(bias);
  for (int64_t t = 0; t < ntaps; ++t) {
    const __m512 wt = _mm512_set1_ps(w[t]);
    const float* st = src + tap[t];
    for (int v = 0; v < NV; ++v) acc[v] = _mm512_fmadd_ps(wt, _mm512_loadu_ps(st + v * 16), acc[v]);
  }
  for (int v = 0; v < NV; ++v) {
    if (relu) acc[v] = _mm512_max_ps(_mm512_setzero_ps(), acc[v]);
    const int64_t left = len - v * 16;
    if (left <= 0) break;
    if (ys_w == 1) {
      if (left >= 16)  // (masked stores are slow on some CPUs: only for the tail)
        _mm512_storeu_ps(dst + v * 16, acc[v]);
      else
        _mm512_mask_storeu_ps(dst + v * 16, first_lanes(left), acc[v]);
    } else {
      alignas(64) float buf[16];
      _mm512_store_ps(buf, acc[v]);
      for (int64_t j = 0; j < (left < 16 ? left : 16); ++j) dst[(v * 16 + j) * ys_w] = buf[j];
    }
  }
}

// As conv2d_cpu.cpp's conv_depthwise: per channel, its rounded planes in this thread's slice of
// the workspace (g.channel_floats floats), every output channel of the group over them. The bf16
// weights come from the packing: word (w[m, 0, t], 0) at panel m / MR, pair 0, tap t, row m % MR.
void conv_depthwise(const Conv2dParams& p, const Conv2dCpuPlan& g, int64_t n) {
  const Conv2dShape& s = p.shape;
  const int64_t ntaps = g.ntaps;
  float* yn = static_cast<float*>(p.y) + n * p.y_stride.n;
  const uint32_t* weights = static_cast<const uint32_t*>(p.weight);
  parallel_for(s.C, 1, [&](int64_t c0, int64_t c1) {
    const int tid = current_thread_index();
    float* plane =
        static_cast<float*>(p.workspace) + (tid < g.nthreads ? tid : 0) * g.channel_floats;
    float w[kConvMaxTaps];
    std::memset(plane + g.plane_stride, 0,
                static_cast<size_t>(g.channel_floats - g.plane_stride) * sizeof(float));
    for (int64_t c = c0; c < c1; ++c) {
      fill_channel_rounded(p, g, n, c, plane);
      for (int64_t j = 0; j < g.Mg; ++j) {
        const int64_t m = c * g.Mg + j;
        const uint32_t* panel = weights + (c * g.m_blocks + j / MR) * MR * ntaps;
        for (int64_t t = 0; t < ntaps; ++t)
          w[t] = bf16_to_float(static_cast<uint16_t>(panel[t * MR + j % MR]));
        const float bias = p.bias ? f32(p.bias)[m] : 0.0f;
        for (int64_t oh = 0; oh < s.OH; ++oh) {
          const float* src = plane + oh * g.Wq;
          float* dst = yn + m * p.y_stride.c + oh * p.y_stride.h;
          for (int64_t ow = 0; ow < s.OW; ow += 64) {
            const int64_t left = s.OW - ow;
            float* d = dst + ow * p.y_stride.w;
            if (left > 48)
              depthwise_run<4>(src + ow, g.tap_offset, w, ntaps, d, left, p.y_stride.w, bias,
                               p.relu);
            else if (left > 32)
              depthwise_run<3>(src + ow, g.tap_offset, w, ntaps, d, left, p.y_stride.w, bias,
                               p.relu);
            else if (left > 16)
              depthwise_run<2>(src + ow, g.tap_offset, w, ntaps, d, left, p.y_stride.w, bias,
                               p.relu);
            else
              depthwise_run<1>(src + ow, g.tap_offset, w, ntaps, d, left, p.y_stride.w, bias,
                               p.relu);
          }
        }
      }
    }
  });
}

// ---- (3b) depthwise, tap pairs ----------------------------------------------------------------

// Stride 1, no row dilation (conv2d_bf16_dw_pairs): as conv2d_cpu.cpp's ring path, with K pairs
// taken along each filter row (layout in conv2d_cpu_bf16.h). Each input row enters the ring once,
// rounded and paired as it is copied; a block of kDwRows output rows x NV vectors of 16 keeps
// kDwRows * NV accumulators, and every vector loaded from the ring serves every output row of
// the block that reads it (the loop runs over input rows), where the float32 stencil loads per
// (output row, tap).
constexpr int kDwRows = kConvBf16DwRows, kDwNV = 4;  // 16 accumulators
constexpr int64_t kDwRowsIn = kDwRows + kConvBf16DwMaxKH - 1;

// The block's output: acc[r][v] (ReLU'd) to output row oh0 + r < oh0 + rows, columns ow0 + v*16
// .. (len of them in all).
template <int NV>
inline void dw_store(__m512 (&acc)[kDwRows][NV], bool relu, float* y, int64_t ys_h, int64_t ys_w,
                     int64_t oh0, int64_t rows, int64_t ow0, int64_t len) {
  const __m512 zero = _mm512_setzero_ps();
#pragma GCC unroll 4
  for (int r = 0; r < kDwRows; ++r) {
    if (r >= rows) continue;
    float* dst = y + (oh0 + r) * ys_h + ow0 * ys_w;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      __m512 o = acc[r][v];
      if (relu) o = _mm512_max_ps(zero, o);  // NaN stays NaN
      const int64_t left = len - v * 16;
      if (ys_w == 1) {
        if (left >= 16)
          _mm512_storeu_ps(dst + v * 16, o);
        else
          _mm512_mask_storeu_ps(dst + v * 16, first_lanes(left), o);
      } else {
        alignas(64) float lanes[16];
        _mm512_store_ps(lanes, o);
        for (int64_t q = 0; q < (left < 16 ? left : 16); ++q) dst[(v * 16 + q) * ys_w] = lanes[q];
      }
    }
  }
}

// Output rows oh0 .. oh0 + rows - 1, columns ow0 .. ow0 + len - 1 (len <= NV * 16); rowq[i]: the
// ring row that filter row 0 reads for output row oh0 + i (so filter row kh of output row
// oh0 + r reads rowq[r + kh]); wp[kh * KP + kp]: weight word (w[kh, 2kp], w[kh, 2kp + 1]).
// A KH x KW filter known at compile time: the loop runs over the block's input rows, and each
// vector loaded serves every output row that reads it (3x3: 48 loads and 96 VDPBF16PS for 4 rows
// x 64 columns, where the float32 stencil loads 144 vectors for 144 FMAs).
// (Not inlined: inlined into its caller, every variant together, the accumulators spilled.)
template <int NV, int KH, int KW>
__attribute__((noinline)) void dw_block_fixed(const uint32_t* const* rowq, const uint32_t* wp,
                                              int64_t d2, float bias, bool relu, float* y,
                                              int64_t ys_h, int64_t ys_w, int64_t oh0, int64_t rows,
                                              int64_t ow0, int64_t len) {
  constexpr int R = kDwRows, KP = (KW + 1) / 2;
  __m512 acc[R][NV];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_set1_ps(bias);
  const __m512i first_half = _mm512_set1_epi32(0xffff);
#pragma GCC unroll 24
  for (int i = 0; i < R + KH - 1; ++i) {
    // (GCC hoists every row's loads to the top and spills them without this barrier)
    __asm__ volatile("" ::: "memory");
    const uint32_t* src = rowq[i] + ow0;
#pragma GCC unroll 8
    for (int kp = 0; kp < KP; ++kp) {
      __m512i b[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        b[v] = _mm512_loadu_si512(src + kp * d2 + v * 16);
        if (KW % 2 == 1 && kp == KP - 1) b[v] = _mm512_and_si512(b[v], first_half);
      }
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const int kh = i - r;
        if (kh < 0 || kh >= KH) continue;
        const __m512i w = _mm512_set1_epi32(static_cast<int>(wp[kh * KP + kp]));
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = dot_pairs(acc[r][v], w, b[v]);
      }
    }
  }
  dw_store<NV>(acc, relu, y, ys_h, ys_w, oh0, rows, ow0, len);
}

// Any filter (KH <= kConvBf16DwMaxKH): loads per (filter row, tap pair, output row).
template <int NV>
__attribute__((noinline)) void dw_block_any(const uint32_t* const* rowq, const uint32_t* wp,
                                            int64_t KH, int64_t kp_n, bool lone, int64_t d2,
                                            float bias, bool relu, float* y, int64_t ys_h,
                                            int64_t ys_w, int64_t oh0, int64_t rows, int64_t ow0,
                                            int64_t len) {
  constexpr int R = kDwRows;
  __m512 acc[R][NV];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_set1_ps(bias);
  const __m512i keep = _mm512_set1_epi32(-1), first_half = _mm512_set1_epi32(0xffff);
  for (int64_t kh = 0; kh < KH; ++kh) {
    for (int64_t kp = 0; kp < kp_n; ++kp) {
      const __m512i w = _mm512_set1_epi32(static_cast<int>(wp[kh * kp_n + kp]));
      const __m512i mask = lone && kp == kp_n - 1 ? first_half : keep;
      const int64_t off = ow0 + kp * d2;
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const uint32_t* src = rowq[r + kh] + off;
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v)
          acc[r][v] =
              dot_pairs(acc[r][v], w, _mm512_and_si512(_mm512_loadu_si512(src + v * 16), mask));
      }
    }
  }
  dw_store<NV>(acc, relu, y, ys_h, ys_w, oh0, rows, ow0, len);
}

// Ring row of input row xr (W elements, stride xs_w): q[j] = (bf16 xpad[j], bf16 xpad[j + d])
// for j < row_words, xpad[j] = xr[j - pad_left] inside the row, else 0. A strided row is first
// gathered into the float32 staging row `stage` (contiguous rows are read in place: loads
// from a just-written staging row straddle its stores, which cannot be forwarded, and the
// row fill took most of the time).
void fill_ring_row(const float* xr, int64_t xs_w, const Conv2dShape& s, int64_t row_words,
                   float* stage, uint32_t* q) {
  const int64_t pl = s.pad_left, d = s.dilation_w;
  if (xs_w != 1) {
    for (int64_t j = 0; j < s.W; ++j) stage[j] = xr[j * xs_w];
    xr = stage;
  }
  // Vectors jb with both loads inside the row (jb - pl >= 0, jb - pl + d + 16 <= W) in a plain
  // loop; the padded ends through padded_load.
  int64_t jb = 0;
  for (; jb < row_words && jb < pl; jb += 16)
    _mm512_store_si512(
        q + jb, pack_pairs(padded_load(xr, jb - pl, s.W), padded_load(xr, jb - pl + d, s.W)));
  const float* x0 = xr - pl;  // (only offset by jb >= pl below)
  for (; jb + 16 <= s.W + pl - d && jb < row_words; jb += 16)
    _mm512_store_si512(q + jb, pack_pairs(_mm512_loadu_ps(x0 + jb), _mm512_loadu_ps(x0 + jb + d)));
  for (; jb < row_words; jb += 16)
    _mm512_store_si512(
        q + jb, pack_pairs(padded_load(xr, jb - pl, s.W), padded_load(xr, jb - pl + d, s.W)));
}

// Every output channel of input channel c, image n (slice: this thread's workspace slice).
void depthwise_pairs_channel(const Conv2dParams& p, const Conv2dCpuPlan& g, int64_t n, int64_t c,
                             uint32_t* slice) {
  const Conv2dShape& s = p.shape;
  const int64_t slots = kDwRows + s.KH - 1;
  const int64_t row = ::mmfast::conv2d_bf16_dw_row_words(g);
  uint32_t* zeros = slice + slots * row;  // a zero row and a vector of slack
  float* stage = reinterpret_cast<float*>(zeros + row + 16);
  std::memset(zeros, 0, static_cast<size_t>(row + 16) * sizeof(uint32_t));
  const float* xc = f32(p.x) + n * p.x_stride.n + c * p.x_stride.c;
  const int64_t kp_n = (s.KW + 1) / 2;
  const bool lone = s.KW % 2 == 1;
  const uint32_t* weights = static_cast<const uint32_t*>(p.weight);
  const uint32_t* rowq[kDwRowsIn];
  int64_t next = -s.pad_top;  // next input row to enter the ring
  for (int64_t oh0 = 0; oh0 < s.OH; oh0 += kDwRows) {
    const int64_t rows = s.OH - oh0 < kDwRows ? s.OH - oh0 : kDwRows;
    const int64_t ih0 = oh0 - s.pad_top;
    for (int64_t i = 0; i < slots; ++i) {
      const int64_t ih = ih0 + i;
      if (ih < 0 || ih >= s.H) {
        rowq[i] = zeros;
        continue;
      }
      uint32_t* slot = slice + (ih % slots) * row;
      if (ih >= next) {  // rows arrive in order; the ones before `next` are in place
        fill_ring_row(xc + ih * p.x_stride.h, p.x_stride.w, s, row, stage, slot);
        next = ih + 1;
      }
      rowq[i] = slot;
    }
    for (int64_t j = 0; j < g.Mg; ++j) {
      const int64_t m = c * g.Mg + j;
      // The packing holds word (w[m, 0, t], 0) at panel m / MR, pair 0, tap t, row m % MR.
      const uint32_t* panel = weights + (c * g.m_blocks + j / MR) * MR * g.ntaps;
      uint32_t wp[kConvMaxTaps];
      for (int64_t kh = 0; kh < s.KH; ++kh) {
        for (int64_t kp = 0; kp < kp_n; ++kp) {
          const int64_t t = kh * s.KW + 2 * kp;
          const uint32_t lo = panel[t * MR + j % MR] & 0xffffu;
          const uint32_t hi = 2 * kp + 1 < s.KW ? panel[(t + 1) * MR + j % MR] & 0xffffu : 0u;
          wp[kh * kp_n + kp] = lo | hi << 16;
        }
      }
      const float bias = p.bias ? f32(p.bias)[m] : 0.0f;
      float* y = static_cast<float*>(p.y) + n * p.y_stride.n + m * p.y_stride.c;
      for (int64_t ow0 = 0; ow0 < s.OW; ow0 += kDwNV * 16) {
        const int64_t len = s.OW - ow0 < kDwNV * 16 ? s.OW - ow0 : kDwNV * 16;
        const int nv = static_cast<int>((len + 15) / 16);
#define MMFAST_DW_FIXED(KH_, KW_)                  \
  if (s.KH == KH_ && s.KW == KW_) {                \
    if (nv >= 4)                                   \
      dw_block_fixed<4, KH_, KW_>(MMFAST_DW_ARGS); \
    else if (nv == 3)                              \
      dw_block_fixed<3, KH_, KW_>(MMFAST_DW_ARGS); \
    else if (nv == 2)                              \
      dw_block_fixed<2, KH_, KW_>(MMFAST_DW_ARGS); \
    else                                           \
      dw_block_fixed<1, KH_, KW_>(MMFAST_DW_ARGS); \
    continue;                                      \
  }
#define MMFAST_DW_ARGS \
  rowq, wp, 2 * s.dilation_w, bias, p.relu, y, p.y_stride.h, p.y_stride.w, oh0, rows, ow0, len
        MMFAST_DW_FIXED(3, 3)
        MMFAST_DW_FIXED(5, 5)
        MMFAST_DW_FIXED(7, 7)
#undef MMFAST_DW_ARGS
#undef MMFAST_DW_FIXED
#define MMFAST_DW_ARGS                                                                            \
  rowq, wp, s.KH, kp_n, lone, 2 * s.dilation_w, bias, p.relu, y, p.y_stride.h, p.y_stride.w, oh0, \
      rows, ow0, len
        if (nv >= 4)
          dw_block_any<4>(MMFAST_DW_ARGS);
        else if (nv == 3)
          dw_block_any<3>(MMFAST_DW_ARGS);
        else if (nv == 2)
          dw_block_any<2>(MMFAST_DW_ARGS);
        else
          dw_block_any<1>(MMFAST_DW_ARGS);
#undef MMFAST_DW_ARGS
      }
    }
  }
}

void conv_depthwise_pairs(const Conv2dParams& p, const Conv2dCpuPlan& g) {
  const Conv2dShape& s = p.shape;
  const int64_t slice_words = ::mmfast::conv2d_bf16_dw_thread_words(s, g);
  parallel_for(s.N * s.C, 1, [&](int64_t t0, int64_t t1) {
    const int tid = current_thread_index();
    uint32_t* slice =
        static_cast<uint32_t*>(p.workspace) + (tid < g.nthreads ? tid : 0) * slice_words;
    for (int64_t t = t0; t < t1; ++t) depthwise_pairs_channel(p, g, t / s.C, t % s.C, slice);
  });
}

}  // namespace

void conv2d_bf16(const Conv2dParams& p, const Conv2dCpuPlan& g) {
  uint32_t* planes = static_cast<uint32_t*>(p.workspace);
  const int64_t words = static_cast<int64_t>(p.workspace_bytes / sizeof(uint32_t));
  // The workspace holds batch_images images' planes (conv2d_bf16_workspace_words), each in
  // image_words (64-byte multiples); the spatial path uses the first.
  const int64_t batch = g.batch_images > 0 ? g.batch_images : 1;
  const int64_t image_words = words / batch / 16 * 16;
  if (!g.depthwise && p.weight_cols && g.path != 1 && !::mmfast::conv2d_bf16_tap_mode(p.shape) &&
      (g.path == 2 || prefer_channel_path(p.shape, g))) {
    // Channel path: up to batch_images images' pair planes at once, one GEMM over them.
    for (int64_t n0 = 0; n0 < p.shape.N; n0 += batch) {
      const int64_t count = p.shape.N - n0 < batch ? p.shape.N - n0 : batch;
      for (int64_t i = 0; i < count; ++i)
        fill_planes(p, g, n0 + i, planes + i * image_words, image_words);
      conv_gemm_cols(p, g, n0, count, planes, image_words);
    }
    return;
  }
  if (g.depthwise && ::mmfast::conv2d_bf16_dw_pairs(p.shape)) {
    conv_depthwise_pairs(p, g);
    return;
  }
  if (!g.depthwise && ::mmfast::conv2d_bf16_tap_mode(p.shape)) {
    Conv2dBf16TapPairs t;
    ::mmfast::conv2d_bf16_tap_pairs(p.shape, g, t);
    const KPairs kp{g.Cg, t.plane_stride, t.offset, t.npairs};
    for (int64_t n = 0; n < p.shape.N; ++n) {
      fill_tap_planes(p, g, t, n, planes, words);
      conv_gemm(p, g, n, planes, kp);
    }
    return;
  }
  const bool direct = ::mmfast::conv2d_bf16_direct(p.shape, p.x_stride);
  const KPairs kp{(g.Cg + 1) / 2, g.plane_stride, g.tap_offset, g.ntaps};
  for (int64_t n = 0; n < p.shape.N; ++n) {
    if (g.depthwise) {
      conv_depthwise(p, g, n);
      continue;
    }
    if (direct) {
      conv_gemm_direct(p, g, n);
      continue;
    }
    fill_planes(p, g, n, planes, image_words);
    conv_gemm(p, g, n, planes, kp);
  }
}

}  // namespace MMFAST_VARIANT
}  // namespace mmfast
