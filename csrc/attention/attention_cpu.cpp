// Fused attention, FlashAttention-style (Dao et al. 2022, algorithm 1) on the CPU: for each
// block of BQ queries, stream the keys/values in blocks of BK, keep a running row max m, row
// sum l and unnormalised output O, and never form the Lq×Lk score matrix. Memory: one
// workspace of (D + BK + Dv + 3)·BQ floats (≤ 157 KiB) per chunk of tasks, so at most one per
// thread at a time; nothing proportional to Lq·Lk.
//
// Threads take tasks (batch, head, block of BQ queries), the last query blocks first. Causal
// key blocks above the diagonal are skipped, the diagonal one masked in registers. A block of
// ≤ W queries runs one vector wide; one of ≤ 4 (a decode step) row by row (attention_rows).
//
// Layout trick: everything is kept *transposed*, with the vector lanes running over queries.
//   Qᵀ tile   qt[x][i]  (D × BQ)   packed once per query block, pre-multiplied by the scale
//   Sᵀ tile   st[j][i]  (BK × BQ)  S = Q·Kᵀ, later P = exp(S - m) (computed as 2^(S' - m'))
//   Oᵀ acc    ot[c][i]  (Dv × BQ)
// so both products are rank-1 updates that broadcast one element of K or V straight from the
// caller's row-major memory (no packing of K or V): Sᵀ[j] += K[j][x]·Qᵀ[x], Oᵀ[c] += V[j][c]·Pᵀ[j]
// — and the online softmax (max over keys, rescale by exp(m_old - m_new), row sums) becomes
// plain element-wise vector arithmetic across the rows of Sᵀ, with no horizontal reductions.
#include <cstdlib>

#include "attention/attention.h"
#include "common/simd.h"

namespace mmfast {
namespace MMFAST_VARIANT {
namespace {

constexpr int W = VecF::kWidth;
#if defined(__AVX512F__)
// 32 zmm registers: a 6 × 4-vector accumulator block (24) + 4 operands + broadcasts.
constexpr int kNR = 4;
#else
// 16 ymm registers (AVX2): 6 × 2 accumulators (12) + 2 operands + a broadcast.
constexpr int kNR = 2;
#endif
constexpr int kBQ = kNR * W;  // queries per block: 64 (AVX-512) or 16
constexpr int MR = 6;         // keys (S = Q·Kᵀ) or value columns (O += P·V) per microkernel call
constexpr int BK = 96;        // keys per block: 16 microkernel rows; Sᵀ is 24 KiB (AVX-512)
constexpr float kInf = __builtin_inff();
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2 = 0.693147180559945309f;

// q, k, v, out and an additive mask are float32 here (check_attention refuses other dtypes).
inline const float* f32(const void* ptr) { return static_cast<const float*>(ptr); }

// 2^x for x <= 0: x = n + r with |r| <= 1/2, 2^r by Cephes exp2f's degree-6 polynomial (< 1 ulp
// on [-1/2, 1/2]), 2^n built in the exponent bits. The softmax works in base 2 (log2(e) is
// folded into the query scale), which saves exp's range reduction; its arguments s - max are
// never positive. x is clamped at -126 (2^-126: the smallest normal float, ~1e-38 next to the
// row maximum's 1); with kZero, x < -126 (a masked score, -inf) gives exactly 0 instead.
template <bool kZero>
inline VecF exp2_nonpos(VecF x) {
  const VecF lo = VecF::set1(-126.0f);
  const VecF xc = max(lo, x);
  const VecF n = xc.round();
  const VecF r = xc - n;
  VecF p = VecF::set1(1.535336188319500e-4f);
  p = fmadd(p, r, VecF::set1(1.339887440266574e-3f));
  p = fmadd(p, r, VecF::set1(9.618437357674640e-3f));
  p = fmadd(p, r, VecF::set1(5.550332471162809e-2f));
  p = fmadd(p, r, VecF::set1(2.402264791363012e-1f));
  p = fmadd(p, r, VecF::set1(6.931472028550421e-1f));
  p = fmadd(p, r, VecF::set1(1.0f));
#if defined(__AVX512F__)
  const VecF y = {_mm512_scalef_ps(p.v, n.v)};  // p·2^n in one instruction, same rounding
#else
  const VecF y = p * VecF::pow2i(n);
#endif
  return kZero ? y.where_less(x, lo, VecF::set1(0.0f)) : y;
}

// Sᵀ[r][:] = Σ_x K[r][x] · Qᵀ[x][:] for the R keys at `k` (row stride k_sl), all BQ queries.
template <int R, int N>
inline void qk_micro(const float* k, int64_t k_sl, const float* qt, int64_t d, float* st) {
  constexpr int BQ = N * W;  // the tile's row stride
  VecF acc[R][N];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < N; ++c) acc[r][c] = VecF::set1(0.0f);
#pragma GCC unroll 4  // 0.95-1.0x the time at D = 64 and 128 (GCC does not unroll by itself)
  for (int64_t x = 0; x < d; ++x) {
    VecF qv[N];
    for (int c = 0; c < N; ++c) qv[c] = VecF::load(qt + x * BQ + c * W);
    for (int r = 0; r < R; ++r) {
      const VecF kb = VecF::set1(k[r * k_sl + x]);
      for (int c = 0; c < N; ++c) acc[r][c] = fmadd(kb, qv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < N; ++c) acc[r][c].store(st + r * BQ + c * W);
}

// Oᵀ[r][:] = alpha · Oᵀ[r][:] + Σ_j V[j][r] · Pᵀ[j][:] for the R value columns at `v` (row
// stride v_sl) and the nk keys of the block: the online-softmax rescale is fused into the load.
template <int R, int N>
inline void pv_micro(const float* v, int64_t v_sl, const float* pt, int64_t nk, const VecF* alpha,
                     float* ot) {
  constexpr int BQ = N * W;  // the tile's row stride
  VecF acc[R][N];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < N; ++c) acc[r][c] = VecF::load(ot + r * BQ + c * W) * alpha[c];
#pragma GCC unroll 4  // as in qk_micro
  for (int64_t j = 0; j < nk; ++j) {
    VecF pv[N];
    for (int c = 0; c < N; ++c) pv[c] = VecF::load(pt + j * BQ + c * W);
    for (int r = 0; r < R; ++r) {
      const VecF vb = VecF::set1(v[j * v_sl + r]);
      for (int c = 0; c < N; ++c) acc[r][c] = fmadd(vb, pv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < N; ++c) acc[r][c].store(ot + r * BQ + c * W);
}

// Sᵀ for nk keys: full MR-row microkernels, then one for the remainder. No software prefetch of
// the next key block: K and V rows stream in order, which the hardware prefetchers follow.
// Prefetching the next block's K and V rows (prefetcht1, which on AMD also fills L1, 2 × 48 KiB
// at D = 128, next to the Qᵀ, Sᵀ and Oᵀ tiles) took 1.01-1.06x the time without it at L = 1024,
// 2048 and 4096, D = 64 and 128, contiguous or head-strided K/V (1 thread, Zen 5).
template <int N>
void qk_block(const float* k, int64_t k_sl, const float* qt, int64_t d, float* st, int64_t nk) {
  constexpr int BQ = N * W;  // the tile's row stride
  int64_t r = 0;
  for (; r + MR <= nk; r += MR) qk_micro<MR, N>(k + r * k_sl, k_sl, qt, d, st + r * BQ);
  const float* kr = k + r * k_sl;
  float* sr = st + r * BQ;
  switch (nk - r) {
    case 5:
      qk_micro<5, N>(kr, k_sl, qt, d, sr);
      break;
    case 4:
      qk_micro<4, N>(kr, k_sl, qt, d, sr);
      break;
    case 3:
      qk_micro<3, N>(kr, k_sl, qt, d, sr);
      break;
    case 2:
      qk_micro<2, N>(kr, k_sl, qt, d, sr);
      break;
    case 1:
      qk_micro<1, N>(kr, k_sl, qt, d, sr);
      break;
    default:
      break;
  }
}

// Oᵀ = alpha·Oᵀ + Vᵀ·Pᵀ over all dv value columns, MR at a time.
template <int N>
void pv_block(const float* v, int64_t v_sl, const float* pt, int64_t nk, int64_t dv,
              const VecF* alpha, float* ot) {
  constexpr int BQ = N * W;  // the tile's row stride
  int64_t c = 0;
  for (; c + MR <= dv; c += MR) pv_micro<MR, N>(v + c, v_sl, pt, nk, alpha, ot + c * BQ);
  const float* vc = v + c;
  float* oc = ot + c * BQ;
  switch (dv - c) {
    case 5:
      pv_micro<5, N>(vc, v_sl, pt, nk, alpha, oc);
      break;
    case 4:
      pv_micro<4, N>(vc, v_sl, pt, nk, alpha, oc);
      break;
    case 3:
      pv_micro<3, N>(vc, v_sl, pt, nk, alpha, oc);
      break;
    case 2:
      pv_micro<2, N>(vc, v_sl, pt, nk, alpha, oc);
      break;
    case 1:
      pv_micro<1, N>(vc, v_sl, pt, nk, alpha, oc);
      break;
    default:
      break;
  }
}

// Qᵀ tile (D × BQ): qt[x][i] = qscale · q[i][x] for the nq queries at `q` (row stride q_sl),
// 0 in the lanes past nq.
template <int BQ>
void pack_qt(const float* q, int64_t q_sl, int64_t nq, int64_t d, float qscale, float* qt) {
  int64_t x0 = 0;
#if defined(__AVX512F__)
  const __m512 s = _mm512_set1_ps(qscale);
  for (; x0 + 16 <= d; x0 += 16)
    for (int i0 = 0; i0 < BQ; i0 += 16) {
      __m512 r[16];
      for (int i = 0; i < 16; ++i)
        r[i] = i0 + i < nq ? _mm512_mul_ps(s, _mm512_loadu_ps(q + (i0 + i) * q_sl + x0))
                           : _mm512_setzero_ps();
      transpose16(r);
      for (int k = 0; k < 16; ++k) _mm512_store_ps(qt + (x0 + k) * BQ + i0, r[k]);
    }
#endif
  for (int64_t x = x0; x < d; ++x) {
    float* row = qt + x * BQ;
    for (int64_t i = 0; i < nq; ++i) row[i] = qscale * q[i * q_sl + x];
    for (int64_t i = nq; i < BQ; ++i) row[i] = 0.0f;
  }
}

// out[i][c] = Oᵀ[c][i] · linv[i] for the nq queries (out row stride o_sl) and dv columns.
template <int BQ>
void unpack_out(const float* ot, const float* linv, int64_t nq, int64_t dv, float* out,
                int64_t o_sl) {
  int64_t c0 = 0;
#if defined(__AVX512F__)
  for (; c0 + 16 <= dv; c0 += 16)
    for (int64_t i0 = 0; i0 < nq; i0 += 16) {  // BQ is a multiple of 16: i0 + 16 <= BQ
      __m512 r[16];
      for (int k = 0; k < 16; ++k) r[k] = _mm512_load_ps(ot + (c0 + k) * BQ + i0);
      transpose16(r);
      for (int64_t i = 0; i < 16 && i0 + i < nq; ++i)
        _mm512_storeu_ps(out + (i0 + i) * o_sl + c0,
                         _mm512_mul_ps(r[i], _mm512_set1_ps(linv[i0 + i])));
    }
#endif
  for (int64_t i = 0; i < nq; ++i) {
    float* orow = out + i * o_sl;
    const float s = linv[i];
    for (int64_t c = c0; c < dv; ++c) orow[c] = ot[c * BQ + i] * s;
  }
}

struct Workspace {
  float* qt;    // D × BQ
  float* st;    // BK × BQ
  float* ot;    // Dv × BQ
  float* m;     // BQ: running max (the reference the P values were taken against)
  float* l;     // BQ: running sum of P
  float* iota;  // BQ: 0, 1, 2, ... (query index within the block, for the causal mask)
};

// One block of up to BQ queries of one (batch, head): the whole FlashAttention forward pass.
template <int N>
void attention_block(const AttentionParams& p, const Workspace& ws, int64_t b, int64_t h,
                     int64_t i0) {
  constexpr int BQ = N * W;  // queries in this tile (N vectors)
  const int64_t nq = p.q_len - i0 < BQ ? p.q_len - i0 : BQ;
  const int64_t hk = h / (p.q_heads / p.kv_heads);  // GQA / MQA: the kv head this query head reads
  const float* q = f32(p.q) + b * p.q_stride.batch + h * p.q_stride.head + i0 * p.q_stride.row;
  const float* k = f32(p.k) + b * p.k_stride.batch + hk * p.k_stride.head;
  const float* v = f32(p.v) + b * p.v_stride.batch + hk * p.v_stride.head;
  const int64_t d = p.head_dim, dv = p.v_head_dim;

  // Qᵀ, scaled, lanes past nq zero. Scores are kept in base 2 (s·log2(e), so exp becomes exp2):
  // log2(e) is folded into the scale, or, with a softcap (which acts on the natural scores),
  // into the cap's outer factor.
  const bool capped = p.softcap > 0.0f;
  const float qscale = capped ? p.scale : p.scale * kLog2e;
  pack_qt<BQ>(q, p.q_stride.row, nq, d, qscale, ws.qt);
  for (int64_t i = 0; i < dv * BQ; ++i) ws.ot[i] = 0.0f;
  VecF m[N], l[N];
  for (int c = 0; c < N; ++c) {
    m[c] = VecF::set1(-kInf);
    l[c] = VecF::set1(0.0f);
  }

  // Causal: the last query of the block sees keys j <= i0 + nq - 1 + offset; later key blocks
  // are skipped entirely, earlier ones need no causal mask.
  int64_t kend = p.kv_len;
  if (p.causal) {
    const int64_t last = i0 + nq - 1 + p.causal_offset + 1;
    kend = last < kend ? (last > 0 ? last : 0) : kend;
  }
  const VecF cap2 = VecF::set1(p.softcap * kLog2e), inv_cap = VecF::set1(1.0f / p.softcap);
  const VecF ninf = VecF::set1(-kInf);

  for (int64_t j0 = 0; j0 < kend; j0 += BK) {
    const int64_t nk = kend - j0 < BK ? kend - j0 : BK;
    float* st = ws.st;
    // S = (scale·log2(e)·Q)·Kᵀ for this key block.
    qk_block<N>(k + j0 * p.k_stride.row, p.k_stride.row, ws.qt, d, st, nk);

    // S = softcap·tanh(S / softcap), before the mask (ONNX Attention / FlashAttention order).
    if (capped)
      for (int64_t r = 0; r < nk; ++r)
        for (int c = 0; c < N; ++c) {
          float* s = st + r * BQ + c * W;
          (cap2 * tanh(VecF::load(s) * inv_cap)).store(s);
        }

    // Masks: strided in the query direction, so element by element (rare path).
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

    // Causal mask inside the diagonal block: key j is masked for local queries i < j - offset - i0.
    const bool diagonal = p.causal && j0 + nk - 1 > i0 + p.causal_offset;
    if (diagonal) {
      for (int64_t r = 0; r < nk; ++r) {
        int64_t t = j0 + r - p.causal_offset - i0;  // first local query that sees key j0 + r
        if (t <= 0) continue;
        t = t > BQ ? BQ : t;
        const VecF vt = VecF::set1(static_cast<float>(t));
        for (int c = 0; c < N; ++c) {
          float* s = st + r * BQ + c * W;
          VecF::load(s).where_less(VecF::load(ws.iota + c * W), vt, ninf).store(s);
        }
      }
    }

    // Online softmax (base 2): m_new = max(m, max_j S), alpha = 2^(m - m_new),
    // P = 2^(S - m_new), l = alpha·l + Σ_j P. A lane with no unmasked key yet keeps m = -inf;
    // its reference is taken as 0 so that P = 2^-inf = 0 and alpha = 0, never NaN. Only blocks
    // that can hold -inf (a mask, the causal diagonal) pay for the exact zeros.
    const bool masked = diagonal || p.mask_kind != MaskKind::none;
    VecF alpha[N];
    for (int c = 0; c < N; ++c) {
      VecF mx = m[c];
      for (int64_t r = 0; r < nk; ++r) mx = max(mx, VecF::load(st + r * BQ + c * W));
      const VecF ref = mx.where_less(mx, VecF::set1(-3.4e38f), VecF::set1(0.0f));
      alpha[c] = exp2_nonpos<true>(m[c] - ref);
      VecF sum = VecF::set1(0.0f);
      float* s = st + c * W;
      if (masked) {
        for (int64_t r = 0; r < nk; ++r, s += BQ) {
          const VecF e = exp2_nonpos<true>(VecF::load(s) - ref);
          e.store(s);
          sum = sum + e;
        }
      } else {
        for (int64_t r = 0; r < nk; ++r, s += BQ) {
          const VecF e = exp2_nonpos<false>(VecF::load(s) - ref);
          e.store(s);
          sum = sum + e;
        }
      }
      l[c] = fmadd(l[c], alpha[c], sum);
      m[c] = ref;
    }

    // O = alpha·O + P·V.
    pv_block<N>(v + j0 * p.v_stride.row, p.v_stride.row, st, nk, dv, alpha, ws.ot);
  }

  // out = O / l (0 where l = 0: every key masked), lse = ln(2)·m + ln(l) (-inf there).
  float* linv = ws.l;
  for (int c = 0; c < N; ++c) {
    l[c].store(ws.l + c * W);
    m[c].store(ws.m + c * W);
  }
  float* lse = p.lse ? p.lse + (b * p.q_heads + h) * p.q_len + i0 : nullptr;
  for (int64_t i = 0; i < nq; ++i) {
    const float li = ws.l[i];
    // l = 0: every key masked (out 0, lse -inf). A NaN l (a NaN score) gives NaN lse, and NaN
    // out through O (NaN) * 0, as PyTorch does.
    if (lse) lse[i] = li > 0.0f ? kLn2 * ws.m[i] + __builtin_logf(li) : (li == 0.0f ? -kInf : li);
    linv[i] = li > 0.0f ? 1.0f / li : 0.0f;
  }
  float* out = static_cast<float*>(p.out) + b * p.out_stride.batch + h * p.out_stride.head +
               i0 * p.out_stride.row;
  unpack_out<BQ>(ws.ot, linv, nq, dv, out, p.out_stride.row);
}

// Query rows one at a time, vectorised along D and Dv instead of across queries: for blocks of
// at most kRowMax queries (a KV-cache decode step), where a tile would mostly compute padding.
// Same algorithm (base-2 online softmax over key blocks of BK), same results up to rounding.
constexpr int64_t kRowMax = 4;

// Σ_x a[x]·b[x] over n floats.
inline float dot(const float* a, const float* b, int64_t n) {
  VecF acc = VecF::set1(0.0f);
  int64_t x = 0;
  for (; x + W <= n; x += W) acc = fmadd(VecF::load(a + x), VecF::load(b + x), acc);
  if (x < n) {
    const int t = static_cast<int>(n - x);
    acc = fmadd(VecF::load_partial(a + x, t, 0.0f), VecF::load_partial(b + x, t, 0.0f), acc);
  }
  return acc.reduce_add();
}

void attention_rows(const AttentionParams& p, const Workspace& ws, int64_t b, int64_t h, int64_t i0,
                    int64_t nq) {
  const int64_t hk = h / (p.q_heads / p.kv_heads);
  const float* k = f32(p.k) + b * p.k_stride.batch + hk * p.k_stride.head;
  const float* v = f32(p.v) + b * p.v_stride.batch + hk * p.v_stride.head;
  const int64_t d = p.head_dim, dv = p.v_head_dim;
  const bool capped = p.softcap > 0.0f;
  const float qscale = capped ? p.scale : p.scale * kLog2e;
  const VecF cap2 = VecF::set1(p.softcap * kLog2e), inv_cap = VecF::set1(1.0f / p.softcap);
  float* qs = ws.qt;  // (D,) the scaled query row
  float* sc = ws.st;  // (BK,) scores, then P
  float* o = ws.ot;   // (Dv,) unnormalised output
  for (int64_t i = 0; i < nq; ++i) {
    const int64_t qi = i0 + i;
    const float* q = f32(p.q) + b * p.q_stride.batch + h * p.q_stride.head + qi * p.q_stride.row;
    for (int64_t x = 0; x < d; ++x) qs[x] = qscale * q[x];
    for (int64_t c = 0; c < dv; ++c) o[c] = 0.0f;
    int64_t kend = p.kv_len;  // causal: keys j <= qi + offset only
    if (p.causal) {
      const int64_t last = qi + p.causal_offset + 1;
      kend = last < kend ? (last > 0 ? last : 0) : kend;
    }
    float m = -kInf, l = 0.0f;
    for (int64_t j0 = 0; j0 < kend; j0 += BK) {
      const int64_t nk = kend - j0 < BK ? kend - j0 : BK;
      const float* kb = k + j0 * p.k_stride.row;
      for (int64_t r = 0; r < nk; ++r) sc[r] = dot(qs, kb + r * p.k_stride.row, d);  // S = q·Kᵀ
      if (capped)
        for (int64_t r = 0; r < nk; r += W) {
          const int t = nk - r < W ? static_cast<int>(nk - r) : W;
          (cap2 * tanh(VecF::load_partial(sc + r, t, 0.0f) * inv_cap)).store_partial(sc + r, t);
        }
      const int64_t off = b * p.mask_stride.batch + h * p.mask_stride.head +
                          qi * p.mask_stride.query + j0 * p.mask_stride.key;
      if (p.mask_kind == MaskKind::additive)
        for (int64_t r = 0; r < nk; ++r) sc[r] += kLog2e * f32(p.mask)[off + r * p.mask_stride.key];
      if (p.mask_kind == MaskKind::boolean)
        for (int64_t r = 0; r < nk; ++r)
          if (!static_cast<const uint8_t*>(p.mask)[off + r * p.mask_stride.key]) sc[r] = -kInf;
      // Online softmax, as in attention_block (reference 0 while every key is masked).
      VecF vmx = VecF::set1(m);
      for (int64_t r = 0; r < nk; r += W) {
        const int t = nk - r < W ? static_cast<int>(nk - r) : W;
        vmx = max(vmx, VecF::load_partial(sc + r, t, -kInf));
      }
      const float mx = vmx.reduce_max();
      const float ref = mx > -3.4e38f ? mx : 0.0f;
      const float alpha = __builtin_exp2f(m - ref);  // m = -inf: 0
      const VecF vref = VecF::set1(ref);
      VecF vsum = VecF::set1(0.0f);
      for (int64_t r = 0; r < nk; r += W) {
        const int t = nk - r < W ? static_cast<int>(nk - r) : W;
        const VecF e = exp2_nonpos<true>(VecF::load_partial(sc + r, t, -kInf) - vref);
        e.store_partial(sc + r, t);
        vsum = vsum + e;
      }
      l = l * alpha + vsum.reduce_add();
      m = ref;
      // o = alpha·o + P·V, along Dv.
      const float* vb = v + j0 * p.v_stride.row;
      const VecF va = VecF::set1(alpha);
      int64_t c = 0;
      for (; c + W <= dv; c += W) {
        VecF acc = VecF::load(o + c) * va;
        for (int64_t r = 0; r < nk; ++r)
          acc = fmadd(VecF::set1(sc[r]), VecF::load(vb + r * p.v_stride.row + c), acc);
        acc.store(o + c);
      }
      if (c < dv) {
        const int t = static_cast<int>(dv - c);
        VecF acc = VecF::load_partial(o + c, t, 0.0f) * va;
        for (int64_t r = 0; r < nk; ++r)
          acc = fmadd(VecF::set1(sc[r]), VecF::load_partial(vb + r * p.v_stride.row + c, t, 0.0f),
                      acc);
        acc.store_partial(o + c, t);
      }
    }
    float* orow = static_cast<float*>(p.out) + b * p.out_stride.batch + h * p.out_stride.head +
                  qi * p.out_stride.row;
    const float linv =
        l > 0.0f
            ? 1.0f / l
            : 0.0f;  // a NaN l: o is NaN, and so is o * 0  // as in attention_block (NaN stays)
    for (int64_t c = 0; c < dv; ++c) orow[c] = o[c] * linv;
    if (p.lse)
      p.lse[(b * p.q_heads + h) * p.q_len + qi] =
          l > 0.0f ? kLn2 * m + __builtin_logf(l) : (l == 0.0f ? -kInf : l);
  }
}

// The outputs of task t, set to NaN (only when the workspace cannot be allocated).
// Task t's query block qb and (batch * heads) index r. Causal: the last query blocks (the
// most keys) first, every head's, so the big tasks start first. Otherwise head by head: a
// thread's consecutive tasks share K and V, which then stay in L2 while they fit (L = 1024:
// 0.5-1 MB per head) instead of cycling through every head's.
inline void task_block(const AttentionParams& p, int64_t nqb, int64_t bh, int64_t t, int64_t& qb,
                       int64_t& r) {
  qb = p.causal ? nqb - 1 - t / bh : t % nqb;
  r = p.causal ? t % bh : t / nqb;
}

void fill_nan(const AttentionParams& p, int64_t nqb, int64_t bh, int64_t t) {
  int64_t qb = 0, r = 0;
  task_block(p, nqb, bh, t, qb, r);
  const int64_t i0 = qb * kBQ, b = r / p.q_heads, h = r % p.q_heads;
  const int64_t nq = p.q_len - i0 < kBQ ? p.q_len - i0 : kBQ;
  for (int64_t i = 0; i < nq; ++i) {
    float* orow = static_cast<float*>(p.out) + b * p.out_stride.batch + h * p.out_stride.head +
                  (i0 + i) * p.out_stride.row;
    for (int64_t c = 0; c < p.v_head_dim; ++c) orow[c] = __builtin_nanf("");
    if (p.lse) p.lse[(b * p.q_heads + h) * p.q_len + i0 + i] = __builtin_nanf("");
  }
}

}  // namespace

void attention(const AttentionParams& p) {
  if (p.batch <= 0 || p.q_heads <= 0 || p.q_len <= 0) return;
  const int64_t nqb = (p.q_len + kBQ - 1) / kBQ;
  const int64_t bh = p.batch * p.q_heads;
  // Task order: task_block(). Under a causal mask the last blocks see the most keys, and the
  // pool hands tasks out in order, so they go first.
  // A chunk of tasks is at least ~4 MFLOP (~40 µs): waking a worker for less costs more than it
  // saves (a one-token decode step over 8 heads runs inline).
  const double task_flops = 2.0 * static_cast<double>(p.q_len < kBQ ? p.q_len : kBQ) *
                                static_cast<double>(p.kv_len) *
                                static_cast<double>(p.head_dim + p.v_head_dim) +
                            2e4;
  const int64_t grain = static_cast<int64_t>(4e6 / task_flops) + 1;
  parallel_for(bh * nqb, grain, [&p, nqb, bh](int64_t begin, int64_t end) {
    // 64-byte aligned (a zmm load never splits a cache line); size rounded up for aligned_alloc.
    const int64_t floats = (p.head_dim + BK + p.v_head_dim + 3) * kBQ;
    const size_t bytes = (static_cast<size_t>(floats) * sizeof(float) + 63) / 64 * 64;
    float* buf = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (!buf) {
      // Out of memory (≤ 155 KiB asked): kernels never throw, so make the failure visible.
      for (int64_t t = begin; t < end; ++t) fill_nan(p, nqb, bh, t);
      return;
    }
    Workspace ws;
    ws.qt = buf;
    ws.st = ws.qt + p.head_dim * kBQ;
    ws.ot = ws.st + BK * kBQ;
    ws.m = ws.ot + p.v_head_dim * kBQ;
    ws.l = ws.m + kBQ;
    ws.iota = ws.l + kBQ;
    for (int i = 0; i < kBQ; ++i) ws.iota[i] = static_cast<float>(i);
    for (int64_t t = begin; t < end; ++t) {
      int64_t qb = 0, r = 0;
      task_block(p, nqb, bh, t, qb, r);
      // A block of a few queries (a decode step, a short tail) runs row by row; one of at most
      // W queries one vector wide; a full one kNR vectors wide.
      const int64_t nq = p.q_len - qb * kBQ < kBQ ? p.q_len - qb * kBQ : kBQ;
      if (nq <= kRowMax)
        attention_rows(p, ws, r / p.q_heads, r % p.q_heads, qb * kBQ, nq);
      else if (nq <= W)
        attention_block<1>(p, ws, r / p.q_heads, r % p.q_heads, qb * kBQ);
      else
        attention_block<kNR>(p, ws, r / p.q_heads, r % p.q_heads, qb * kBQ);
    }
    std::free(buf);
  });
}

}  // namespace MMFAST_VARIANT
}  // namespace mmfast
