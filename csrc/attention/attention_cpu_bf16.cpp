// The bf16 attention's AVX512-BF16 kernel: attention_cpu.cpp's FlashAttention-style loop (same
// tasks, blocks, base-2 online softmax, masks, causal skipping) with both products on
// VDPBF16PS in K pairs (layouts and error bound in attention_cpu_bf16.h):
//   S^T[r][:] = scale' * sum_x' K[r][x'] . Q^T[x'][:]     (x' a pair of head dims)
//   O^T[c][:] = alpha * O^T[c][:] + sum_j' V[j'][c] . P^T[j'][:]   (j' a pair of keys)
// Q^T is packed per query block, K and V once per call (a parallel pre-pass into the
// workspace), P^T after each block's softmax. Compiled once, with -mavx512bf16, into namespace
// mmfast::avx512bf16.
#include "attention/attention_cpu_bf16.h"

#include <cstdlib>
#include <cstring>

#include "common/bf16.h"
#include "common/bf16_simd.h"
#include "common/parallel.h"

namespace mmfast {
namespace MMFAST_VARIANT {
namespace {

constexpr int W = 16;
constexpr int kN = 4;        // vectors of queries per full block
constexpr int kBQ = kN * W;  // 64 queries per block
constexpr int MR = 6;        // keys (S) or value columns (O) per microkernel call
constexpr int BK = 96;       // keys per block (even: key pairs never straddle blocks)
constexpr float kInf = __builtin_inff();
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2 = 0.693147180559945309f;

inline const float* f32(const void* ptr) { return static_cast<const float*>(ptr); }

// 2^x for x <= 0, as attention_cpu.cpp's exp2_nonpos (Cephes exp2f polynomial on [-1/2, 1/2],
// x clamped at -126; with kZero, x < -126 gives exactly 0).
template <bool kZero>
inline __m512 exp2_nonpos(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-126.0f);
  const __m512 xc = _mm512_max_ps(lo, x);
  // n = round(x), r = x - n (VREDUCEPS: exact), 2^n applied by VSCALEFPS (exact): the same
  // values as attention_cpu.cpp's exponent-bits construction, in 4 fewer instructions.
  const __m512 n = _mm512_roundscale_ps(xc, _MM_FROUND_TO_NEAREST_INT);
  const __m512 r = _mm512_reduce_ps(xc, _MM_FROUND_TO_NEAREST_INT);
  __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.339887440266574e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(9.618437357674640e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.550332471162809e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(2.402264791363012e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(6.931472028550421e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  const __m512 y = _mm512_scalef_ps(p, n);
  if (!kZero) return y;
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ), y, _mm512_setzero_ps());
}

// tanh(x) = 1 - 2 / (exp(2x) + 1), for the softcap (rare path: scalar per lane is enough).
inline __m512 tanh_ps(__m512 x) {
  alignas(64) float t[W];
  _mm512_store_ps(t, x);
  for (float& v : t) v = __builtin_tanhf(v);
  return _mm512_load_ps(t);
}

// ---- the products ---------------------------------------------------------------------------

// S^T[r][:] = scale * sum_x' K[r][x'] . Q^T[x'][:] for R keys (k: words, row stride k_sw).
template <int R, int N>
inline void qk_micro(const uint32_t* k, int64_t k_sw, const uint32_t* qt, int64_t dpairs,
                     __m512 scale, float* st) {
  constexpr int BQ = N * W;
  __m512 acc[R][N];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < N; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t x = 0; x < dpairs; ++x) {
    __m512i qv[N];
    for (int c = 0; c < N; ++c) qv[c] = _mm512_load_si512(qt + x * BQ + c * W);
    for (int r = 0; r < R; ++r) {
      const __m512i kb = _mm512_set1_epi32(static_cast<int>(k[r * k_sw + x]));
      for (int c = 0; c < N; ++c) acc[r][c] = dot_pairs(acc[r][c], kb, qv[c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < N; ++c)
      _mm512_store_ps(st + r * BQ + c * W, _mm512_mul_ps(acc[r][c], scale));
}

// O^T[r][:] = alpha * O^T[r][:] + sum_j' V[j'][r] . P^T[j'][:] for R value columns (v: words,
// row stride dv words per key pair) over npairs key pairs.
template <int R, int N>
inline void pv_micro(const uint32_t* v, int64_t dv, const uint32_t* pt, int64_t npairs,
                     const __m512* alpha, float* ot) {
  constexpr int BQ = N * W;
  __m512 acc[R][N];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < N; ++c)
      acc[r][c] = _mm512_mul_ps(_mm512_load_ps(ot + r * BQ + c * W), alpha[c]);
  for (int64_t j = 0; j < npairs; ++j) {
    __m512i pv[N];
    for (int c = 0; c < N; ++c) pv[c] = _mm512_load_si512(pt + j * BQ + c * W);
    for (int r = 0; r < R; ++r) {
      const __m512i vb = _mm512_set1_epi32(static_cast<int>(v[j * dv + r]));
      for (int c = 0; c < N; ++c) acc[r][c] = dot_pairs(acc[r][c], vb, pv[c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < N; ++c) _mm512_store_ps(ot + r * BQ + c * W, acc[r][c]);
}

template <int N>
void qk_block(const uint32_t* k, int64_t k_sw, const uint32_t* qt, int64_t dpairs, __m512 scale,
              float* st, int64_t nk) {
  constexpr int BQ = N * W;
  int64_t r = 0;
  for (; r + MR <= nk; r += MR) qk_micro<MR, N>(k + r * k_sw, k_sw, qt, dpairs, scale, st + r * BQ);
  const uint32_t* kr = k + r * k_sw;
  float* sr = st + r * BQ;
  switch (nk - r) {
    case 5:
      qk_micro<5, N>(kr, k_sw, qt, dpairs, scale, sr);
      break;
    case 4:
      qk_micro<4, N>(kr, k_sw, qt, dpairs, scale, sr);
      break;
    case 3:
      qk_micro<3, N>(kr, k_sw, qt, dpairs, scale, sr);
      break;
    case 2:
      qk_micro<2, N>(kr, k_sw, qt, dpairs, scale, sr);
      break;
    case 1:
      qk_micro<1, N>(kr, k_sw, qt, dpairs, scale, sr);
      break;
    default:
      break;
  }
}

template <int N>
void pv_block(const uint32_t* v, const uint32_t* pt, int64_t npairs, int64_t dv,
              const __m512* alpha, float* ot) {
  constexpr int BQ = N * W;
  int64_t c = 0;
  for (; c + MR <= dv; c += MR) pv_micro<MR, N>(v + c, dv, pt, npairs, alpha, ot + c * BQ);
  const uint32_t* vc = v + c;
  float* oc = ot + c * BQ;
  switch (dv - c) {
    case 5:
      pv_micro<5, N>(vc, dv, pt, npairs, alpha, oc);
      break;
    case 4:
      pv_micro<4, N>(vc, dv, pt, npairs, alpha, oc);
      break;
    case 3:
      pv_micro<3, N>(vc, dv, pt, npairs, alpha, oc);
      break;
    case 2:
      pv_micro<2, N>(vc, dv, pt, npairs, alpha, oc);
      break;
    case 1:
      pv_micro<1, N>(vc, dv, pt, npairs, alpha, oc);
      break;
    default:
      break;
  }
}

// ---- K and V in bf16 (once per call) ---------------------------------------------------------

struct Converted {
  const uint16_t* k;  // (batch, kv_heads, Lk, Dp) bf16, Dp = D rounded up to even
  const uint32_t* v;  // (batch, kv_heads, ceil(Lk / 2), Dv) words of two keys' values
  int64_t dp;
};

// dst[0 : 2 * ceil(n / 2)] = bf16(src[0 : n]) (and a zero past an odd n).
inline void convert_row(const float* src, int64_t n, uint16_t* dst) {
  for (int64_t x = 0; x < n; x += 2 * W) {
    const __m512 lo = _mm512_maskz_loadu_ps(first_lanes(n - x), src + x);
    const __m512 hi = n > x + W ? _mm512_maskz_loadu_ps(first_lanes(n - x - W), src + x + W)
                                : _mm512_setzero_ps();
    const __m512i runs = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);  // x .. x + 31 in order
    const int64_t words = ((n - x + 1) / 2) < W ? (n - x + 1) / 2 : W;
    _mm512_mask_storeu_epi32(dst + x, first_lanes(words), runs);
  }
}

// dst[c] = (bf16 r0[c], bf16 r1[c]) for c < n (r1 null: zeros).
inline void convert_pair_rows(const float* r0, const float* r1, int64_t n, uint32_t* dst) {
  for (int64_t c = 0; c < n; c += W) {
    const __mmask16 m = first_lanes(n - c);
    const __m512 lo = _mm512_maskz_loadu_ps(m, r0 + c);
    const __m512 hi = r1 ? _mm512_maskz_loadu_ps(m, r1 + c) : _mm512_setzero_ps();
    _mm512_mask_storeu_epi32(dst + c, m, pack_pairs(lo, hi));
  }
}

Converted convert_kv(const AttentionParams& p, void* workspace) {
  Converted cv;
  cv.dp = (p.head_dim + 1) / 2 * 2;
  const int64_t heads = p.batch * p.kv_heads, lk = p.kv_len, kp = (lk + 1) / 2;
  uint16_t* kb = static_cast<uint16_t*>(workspace);
  const size_t k_bytes = static_cast<size_t>(heads * lk * cv.dp) * 2;
  uint32_t* vb =
      reinterpret_cast<uint32_t*>(static_cast<char*>(workspace) + (k_bytes + 63) / 64 * 64);
  cv.k = kb;
  cv.v = vb;
  // Tasks: (head, chunk of 64 key pairs).
  constexpr int64_t kChunk = 64;
  const int64_t chunks = (kp + kChunk - 1) / kChunk;
  const int64_t dp = cv.dp;
  parallel_for(heads * chunks, 1, [&p, kb, vb, lk, kp, chunks, dp](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t hh = t / chunks, j0 = (t % chunks) * kChunk;
      const int64_t b = hh / p.kv_heads, h = hh % p.kv_heads;
      const float* k = f32(p.k) + b * p.k_stride.batch + h * p.k_stride.head;
      const float* v = f32(p.v) + b * p.v_stride.batch + h * p.v_stride.head;
      const int64_t j1 = j0 + kChunk < kp ? j0 + kChunk : kp;
      for (int64_t jp = j0; jp < j1; ++jp) {
        for (int64_t j = 2 * jp; j < 2 * jp + 2 && j < lk; ++j)
          convert_row(k + j * p.k_stride.row, p.head_dim, kb + (hh * lk + j) * dp);
        const float* r1 = 2 * jp + 1 < lk ? v + (2 * jp + 1) * p.v_stride.row : nullptr;
        convert_pair_rows(v + 2 * jp * p.v_stride.row, r1, p.v_head_dim,
                          vb + (hh * kp + jp) * p.v_head_dim);
      }
    }
  });
  return cv;
}

// ---- one block of queries ---------------------------------------------------------------------

struct Workspace {
  uint32_t* qrows;  // BQ x Dp/2 words: the block's query rows in bf16
  uint32_t* qt;     // Dp/2 x BQ words
  float* st;        // BK x BQ
  uint32_t* pt;     // BK/2 x BQ words
  float* ot;        // Dv x BQ
  float* m;         // BQ
  float* l;         // BQ
  float* iota;      // BQ: 0, 1, 2, ...
};

template <int N>
void attention_block(const AttentionParams& p, const Converted& cv, const Workspace& ws, int64_t b,
                     int64_t h, int64_t i0) {
  constexpr int BQ = N * W;
  const int64_t nq = p.q_len - i0 < BQ ? p.q_len - i0 : BQ;
  const int64_t hk = h / (p.q_heads / p.kv_heads);
  const int64_t hh = b * p.kv_heads + hk;
  const float* q = f32(p.q) + b * p.q_stride.batch + h * p.q_stride.head + i0 * p.q_stride.row;
  const int64_t dpairs = cv.dp / 2, dv = p.v_head_dim, kp = (p.kv_len + 1) / 2;
  const uint32_t* k = reinterpret_cast<const uint32_t*>(cv.k + hh * p.kv_len * cv.dp);
  const uint32_t* v = cv.v + hh * kp * dv;

  // Q^T in pairs of head dims, unscaled (bf16(q) exactly; the scale multiplies S in float32):
  // each row converted in order (its words are its pairs), then the words transposed.
  for (int64_t i = 0; i < nq; ++i)
    convert_row(q + i * p.q_stride.row, p.head_dim,
                reinterpret_cast<uint16_t*>(ws.qrows + i * dpairs));
  for (int64_t x = 0; x < dpairs; ++x) {
    uint32_t* row = ws.qt + x * BQ;
    for (int64_t i = 0; i < nq; ++i) row[i] = ws.qrows[i * dpairs + x];
    for (int64_t i = nq; i < BQ; ++i) row[i] = 0;
  }
  for (int64_t i = 0; i < dv * BQ; ++i) ws.ot[i] = 0.0f;
  __m512 m[N], l[N];
  for (int c = 0; c < N; ++c) {
    m[c] = _mm512_set1_ps(-kInf);
    l[c] = _mm512_setzero_ps();
  }
  int64_t kend = p.kv_len;
  if (p.causal) {
    const int64_t last = i0 + nq - 1 + p.causal_offset + 1;
    kend = last < kend ? (last > 0 ? last : 0) : kend;
  }
  // Scores in base 2 (log2 e folded into the scale), or natural ones under a softcap (whose
  // outer factor takes log2 e), as attention_cpu.cpp.
  const bool capped = p.softcap > 0.0f;
  const __m512 qscale = _mm512_set1_ps(capped ? p.scale : p.scale * kLog2e);
  const __m512 cap2 = _mm512_set1_ps(p.softcap * kLog2e),
               inv_cap = _mm512_set1_ps(1.0f / p.softcap);
  const __m512 ninf = _mm512_set1_ps(-kInf);

  for (int64_t j0 = 0; j0 < kend; j0 += BK) {
    const int64_t nk = kend - j0 < BK ? kend - j0 : BK;
    float* st = ws.st;
    qk_block<N>(k + j0 * dpairs, dpairs, ws.qt, dpairs, qscale, st, nk);
    if (capped)
      for (int64_t r = 0; r < nk; ++r)
        for (int c = 0; c < N; ++c) {
          float* s = st + r * BQ + c * W;
          _mm512_store_ps(s,
                          _mm512_mul_ps(cap2, tanh_ps(_mm512_mul_ps(_mm512_load_ps(s), inv_cap))));
        }
    if (p.mask_kind != MaskKind::none) {
      const int64_t off = b * p.mask_stride.batch + h * p.mask_stride.head +
                          i0 * p.mask_stride.query + j0 * p.mask_stride.key;
      if (p.mask_kind == MaskKind::additive) {
        for (int64_t i = 0; i < nq; ++i) {
          const float* mrow = f32(p.mask) + off + i * p.mask_stride.query;
          for (int64_t r = 0; r < nk; ++r) st[r * BQ + i] += kLog2e * mrow[r * p.mask_stride.key];
        }
      } else {
        for (int64_t i = 0; i < nq; ++i) {
          const uint8_t* mrow = static_cast<const uint8_t*>(p.mask) + off + i * p.mask_stride.query;
          for (int64_t r = 0; r < nk; ++r)
            if (!mrow[r * p.mask_stride.key]) st[r * BQ + i] = -kInf;
        }
      }
    }
    const bool diagonal = p.causal && j0 + nk - 1 > i0 + p.causal_offset;
    if (diagonal) {
      for (int64_t r = 0; r < nk; ++r) {
        int64_t t = j0 + r - p.causal_offset - i0;  // first local query that sees key j0 + r
        if (t <= 0) continue;
        t = t > BQ ? BQ : t;
        const __m512 vt = _mm512_set1_ps(static_cast<float>(t));
        for (int c = 0; c < N; ++c) {
          float* s = st + r * BQ + c * W;
          const __mmask16 hide =
              _mm512_cmp_ps_mask(_mm512_load_ps(ws.iota + c * W), vt, _CMP_LT_OQ);
          _mm512_store_ps(s, _mm512_mask_blend_ps(hide, _mm512_load_ps(s), ninf));
        }
      }
    }
    // Online softmax (base 2), as attention_cpu.cpp: reference 0 while every key is masked.
    // P = 2^(S - m) goes straight into P^T's key pairs (an odd last key pairs with a zero);
    // the row sum l takes the float32 values.
    const bool masked = diagonal || p.mask_kind != MaskKind::none;
    const int64_t npairs = (nk + 1) / 2;
    __m512 alpha[N];
    for (int c = 0; c < N; ++c) {
      __m512 mx = m[c];
      for (int64_t r = 0; r < nk; ++r) mx = _mm512_max_ps(mx, _mm512_load_ps(st + r * BQ + c * W));
      const __m512 ref = _mm512_mask_blend_ps(
          _mm512_cmp_ps_mask(mx, _mm512_set1_ps(-3.4e38f), _CMP_LT_OQ), mx, _mm512_setzero_ps());
      alpha[c] = exp2_nonpos<true>(_mm512_sub_ps(m[c], ref));
      __m512 sum = _mm512_setzero_ps();
      const float* s = st + c * W;
      uint32_t* pw = ws.pt + c * W;
      const int64_t full = nk / 2;
      if (masked) {
        for (int64_t jp = 0; jp < full; ++jp, s += 2 * BQ, pw += BQ) {
          const __m512 e0 = exp2_nonpos<true>(_mm512_sub_ps(_mm512_load_ps(s), ref));
          const __m512 e1 = exp2_nonpos<true>(_mm512_sub_ps(_mm512_load_ps(s + BQ), ref));
          sum = _mm512_add_ps(sum, _mm512_add_ps(e0, e1));
          _mm512_store_si512(pw, pack_pairs(e0, e1));
        }
      } else {
        for (int64_t jp = 0; jp < full; ++jp, s += 2 * BQ, pw += BQ) {
          const __m512 e0 = exp2_nonpos<false>(_mm512_sub_ps(_mm512_load_ps(s), ref));
          const __m512 e1 = exp2_nonpos<false>(_mm512_sub_ps(_mm512_load_ps(s + BQ), ref));
          sum = _mm512_add_ps(sum, _mm512_add_ps(e0, e1));
          _mm512_store_si512(pw, pack_pairs(e0, e1));
        }
      }
      if (nk % 2) {
        const __m512 e0 = exp2_nonpos<true>(_mm512_sub_ps(_mm512_load_ps(s), ref));
        sum = _mm512_add_ps(sum, e0);
        _mm512_store_si512(pw, pack_pairs(e0, _mm512_setzero_ps()));
      }
      l[c] = _mm512_fmadd_ps(l[c], alpha[c], sum);
      m[c] = ref;
    }
    // O = alpha O + P.V.
    pv_block<N>(v + (j0 / 2) * dv, ws.pt, npairs, dv, alpha, ws.ot);
  }

  // out = O / l (0 where l = 0: every key masked), lse = ln(2) m + ln(l), as attention_cpu.cpp.
  for (int c = 0; c < N; ++c) {
    _mm512_store_ps(ws.l + c * W, l[c]);
    _mm512_store_ps(ws.m + c * W, m[c]);
  }
  float* lse = p.lse ? p.lse + (b * p.q_heads + h) * p.q_len + i0 : nullptr;
  for (int64_t i = 0; i < nq; ++i) {
    const float li = ws.l[i];
    if (lse) lse[i] = li > 0.0f ? kLn2 * ws.m[i] + __builtin_logf(li) : (li == 0.0f ? -kInf : li);
    ws.l[i] = li > 0.0f ? 1.0f / li : 0.0f;
  }
  float* out = static_cast<float*>(p.out) + b * p.out_stride.batch + h * p.out_stride.head +
               i0 * p.out_stride.row;
  // O^T back to rows: 16 value columns of query i at once (a gather down a column of O^T).
  const __m512i down =
      _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                         _mm512_set1_epi32(BQ));
  for (int64_t i = 0; i < nq; ++i) {
    float* orow = out + i * p.out_stride.row;
    const __m512 sc = _mm512_set1_ps(ws.l[i]);
    for (int64_t c = 0; c < dv; c += W) {
      const __mmask16 cols = first_lanes(dv - c);
      const __m512 o =
          _mm512_mask_i32gather_ps(_mm512_setzero_ps(), cols, down, ws.ot + c * BQ + i, 4);
      _mm512_mask_storeu_ps(orow + c, cols, _mm512_mul_ps(o, sc));
    }
  }
}

void fill_nan(const AttentionParams& p, int64_t nqb, int64_t bh, int64_t t) {
  const int64_t i0 = (nqb - 1 - t / bh) * kBQ, r = t % bh, b = r / p.q_heads, h = r % p.q_heads;
  const int64_t nq = p.q_len - i0 < kBQ ? p.q_len - i0 : kBQ;
  for (int64_t i = 0; i < nq; ++i) {
    float* orow = static_cast<float*>(p.out) + b * p.out_stride.batch + h * p.out_stride.head +
                  (i0 + i) * p.out_stride.row;
    for (int64_t c = 0; c < p.v_head_dim; ++c) orow[c] = __builtin_nanf("");
    if (p.lse) p.lse[(b * p.q_heads + h) * p.q_len + i0 + i] = __builtin_nanf("");
  }
}

}  // namespace

void attention_bf16(const AttentionParams& p, void* workspace) {
  if (p.batch <= 0 || p.q_heads <= 0 || p.q_len <= 0) return;
  const Converted cv = convert_kv(p, workspace);
  const int64_t nqb = (p.q_len + kBQ - 1) / kBQ;
  const int64_t bh = p.batch * p.q_heads;
  // Tasks and grain as attention_cpu.cpp (last query blocks first, >= ~4 MFLOP per chunk).
  const double task_flops = 2.0 * static_cast<double>(p.q_len < kBQ ? p.q_len : kBQ) *
                                static_cast<double>(p.kv_len) *
                                static_cast<double>(p.head_dim + p.v_head_dim) +
                            2e4;
  const int64_t grain = static_cast<int64_t>(4e6 / task_flops) + 1;
  parallel_for(bh * nqb, grain, [&p, &cv, nqb, bh](int64_t begin, int64_t end) {
    const int64_t words = (2 * (cv.dp / 2) + BK / 2) * kBQ;
    const int64_t floats = (BK + p.v_head_dim + 3) * kBQ;
    const size_t bytes = (static_cast<size_t>(words + floats) * 4 + 63) / 64 * 64;
    char* buf = static_cast<char*>(std::aligned_alloc(64, bytes));
    if (!buf) {
      for (int64_t t = begin; t < end; ++t) fill_nan(p, nqb, bh, t);
      return;
    }
    Workspace ws;
    ws.qrows = reinterpret_cast<uint32_t*>(buf);
    ws.qt = ws.qrows + (cv.dp / 2) * kBQ;
    ws.pt = ws.qt + (cv.dp / 2) * kBQ;
    ws.st = reinterpret_cast<float*>(ws.pt + (BK / 2) * kBQ);
    ws.ot = ws.st + BK * kBQ;
    ws.m = ws.ot + p.v_head_dim * kBQ;
    ws.l = ws.m + kBQ;
    ws.iota = ws.l + kBQ;
    for (int i = 0; i < kBQ; ++i) ws.iota[i] = static_cast<float>(i);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t qb = nqb - 1 - t / bh, r = t % bh;
      const int64_t nq = p.q_len - qb * kBQ < kBQ ? p.q_len - qb * kBQ : kBQ;
      if (nq <= W)
        attention_block<1>(p, cv, ws, r / p.q_heads, r % p.q_heads, qb * kBQ);
      else
        attention_block<kN>(p, cv, ws, r / p.q_heads, r % p.q_heads, qb * kBQ);
    }
    std::free(buf);
  });
}

}  // namespace MMFAST_VARIANT
}  // namespace mmfast
