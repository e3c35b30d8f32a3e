// CUDA fused attention forward (FlashAttention-2 scheme): one block owns BM query rows of one
// (batch, head), streams the keys/values through shared memory in BN-row tiles and keeps an
// online softmax, so the (Lq, Lk) score matrix never exists in memory.
//
// fp16/bf16: tensor cores (mma.sync m16n8k16, fp32 accumulators), each warp 16 query rows, the
// probabilities stay in registers between the two products (the S accumulator layout is the A
// operand layout of the next mma). fp32: a SIMT kernel (exact fp32 products, one thread a query
// row), for accuracy rather than speed. Semantics: csrc/attention/attention.h.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "attention/attention_cuda.h"
#include "cuda/cuda_check.h"
#include "cuda/device_common.cuh"

namespace mmfast::cuda {
namespace {

using namespace dev;  // NOLINT: the shared device helpers

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// The kernels' view of AttentionParams (attention/attention.h), passed by value in kernel
// parameter space: the same fields under the same names, the sizes narrowed to int (the
// launcher checks they fit), the GQA group and the 16-byte-copy flag derived once on the host.
struct KernelParams {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;
  const void* mask;
  MaskKind mask_kind;
  RowStrides q_stride, k_stride, v_stride, out_stride;
  MaskStrides mask_stride;
  int q_heads, group, q_len, kv_len, head_dim, v_head_dim;
  int causal;  // 0 or 1
  int64_t causal_offset;
  float scale;
  float softcap;
  int vec_ok;  // rows may be fetched with 16-byte copies
};

// ---- score transform shared by both kernels: raw q.k -> log2-domain score (or -inf) ----------
__device__ __forceinline__ float score_log2(const KernelParams& p, float acc, int64_t b, int h,
                                            int row, int col) {
  float s = acc * p.scale;
  if (p.softcap > 0.f) s = p.softcap * tanhf(s / p.softcap);
  if (p.mask_kind != MaskKind::none) {
    const int64_t off = b * p.mask_stride.batch + h * p.mask_stride.head +
                        row * p.mask_stride.query + col * p.mask_stride.key;
    if (p.mask_kind == MaskKind::boolean) {
      if (!static_cast<const uint8_t*>(p.mask)[off]) return -INFINITY;
    } else {
      s += static_cast<const float*>(p.mask)[off];
    }
  }
  return s * kLog2e;
}

__device__ __forceinline__ bool visible(const KernelParams& p, int row, int col) {
  return col < p.kv_len && (!p.causal || col <= row + p.causal_offset);
}

// Copies rows [0, ROWS) x columns [0, DP) of a (rows_valid, cols_valid) global tile into shared
// memory with row pitch DP + 8 elements (the 16-byte pad makes the 8 row addresses of every
// ldmatrix land in distinct banks). Everything outside the valid region is zero: garbage there
// could be NaN, and NaN * 0 is NaN.
template <typename T, int ROWS, int DP, int THREADS, bool VEC>
__device__ __forceinline__ void load_tile(T* smem, const T* g, int64_t row_stride, int rows_valid,
                                          int cols_valid) {
  constexpr int kPitch = DP + 8;
  if constexpr (VEC) {  // cols_valid % 8 == 0 and every row start 16-byte aligned
    constexpr int kChunks = DP / 8;
    for (int i = threadIdx.x; i < ROWS * kChunks; i += THREADS) {
      const int r = i / kChunks, c = (i % kChunks) * 8;
      const bool ok = r < rows_valid && c < cols_valid;
      cp_async_16_cg(smem_u32(smem + r * kPitch + c), ok ? g + r * row_stride + c : g, ok);
    }
  } else {
    for (int i = threadIdx.x; i < ROWS * DP; i += THREADS) {
      const int r = i / DP, c = i % DP;
      smem[r * kPitch + c] =
          (r < rows_valid && c < cols_valid) ? g[r * row_stride + c] : from_f32<T>(0.f);
    }
  }
}

// ---- tensor-core kernel ------------------------------------------------------------------------
// 2^x on the MUFU unit (ex2.approx: ~2 ulp, 2^-inf = +0). The probabilities it makes are rounded
// to 16 bits right after, so the approximation is invisible in the result.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// DP: head dim padded to a multiple of 16 (>= D, Dv). Each warp owns MT m16 tiles (16*MT query
// rows): every K/V fragment it reads from shared memory then feeds MT mma, so shared-memory
// traffic per flop falls by MT. BM = 16 * MT * WARPS query rows a block, BN keys a tile.
template <typename T, int DP, int BN, int WARPS, int MT, bool Q_IN_REGS, bool VEC>
__global__ void __launch_bounds__(WARPS * 32) attention_mma_kernel(const KernelParams p) {
  constexpr int kThreads = WARPS * 32, BM = 16 * MT * WARPS, kPitch = DP + 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sKV = sQ + BM * kPitch;  // stage s: K at sKV + 2*s*BN*kPitch, V right after it

  const int m_block = p.causal ? static_cast<int>(gridDim.x - 1 - blockIdx.x)  // longest first
                               : static_cast<int>(blockIdx.x);
  const int h = blockIdx.y;
  const int64_t b = blockIdx.z;
  const int hk = h / p.group;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int row0 = m_block * BM;

  const T* qg = static_cast<const T*>(p.q) + b * p.q_stride.batch + h * p.q_stride.head +
                row0 * p.q_stride.row;
  const T* kg = static_cast<const T*>(p.k) + b * p.k_stride.batch + hk * p.k_stride.head;
  const T* vg = static_cast<const T*>(p.v) + b * p.v_stride.batch + hk * p.v_stride.head;
  // Two stages: tile nb+1 (K and V) is in flight while tile nb is computed, so a whole
  // iteration hides each load's latency; one commit group per tile, empty past the end.
  auto load_kv = [&](int nb) {
    T* dst = sKV + (nb & 1) * 2 * BN * kPitch;
    const int n0 = nb * BN;
    load_tile<T, BN, DP, kThreads, VEC>(dst, kg + n0 * p.k_stride.row, p.k_stride.row,
                                        p.kv_len - n0, p.head_dim);
    load_tile<T, BN, DP, kThreads, VEC>(dst + BN * kPitch, vg + n0 * p.v_stride.row, p.v_stride.row,
                                        p.kv_len - n0, p.v_head_dim);
  };

  // Keys this block can see: the last row's causal limit bounds them.
  int n_max = p.kv_len;
  if (p.causal) {
    const int64_t last_row = (p.q_len < row0 + BM ? p.q_len : row0 + BM) - 1;
    const int64_t lim = last_row + p.causal_offset + 1;
    n_max = static_cast<int>(lim < 0 ? 0 : (lim < p.kv_len ? lim : p.kv_len));
  }
  const int n_blocks = (n_max + BN - 1) / BN;

  // Per thread and m16 tile mt: rows r[mt][0] = row0 + 16*(MT*warp + mt) + g and r[mt][1] =
  // that + 8; the accumulator elements e = 0, 1 belong to the first, e = 2, 3 to the second.
  int rows[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    rows[mt][0] = row0 + 16 * (MT * warp + mt) + g;
    rows[mt][1] = rows[mt][0] + 8;
  }
  float o_acc[MT][DP / 8][4];
  float m_run[MT][2], l_run[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int i = 0; i < DP / 8; ++i)
      o_acc[mt][i][0] = o_acc[mt][i][1] = o_acc[mt][i][2] = o_acc[mt][i][3] = 0.f;
    m_run[mt][0] = m_run[mt][1] = -INFINITY;
    l_run[mt][0] = l_run[mt][1] = 0.f;
  }
  uint32_t q_frag[Q_IN_REGS ? MT : 1][Q_IN_REGS ? DP / 16 : 1][4];

  if (n_blocks > 0) {
    load_tile<T, BM, DP, kThreads, VEC>(sQ, qg, p.q_stride.row, p.q_len - row0, p.head_dim);
    load_kv(0);
    cp_async_commit();
    if (n_blocks > 1) load_kv(1);
    cp_async_commit();
  }
  // ldmatrix lane addressing (see ldmatrix_x4): A operand rows (lane&7) + 8*((lane>>3)&1),
  // columns 8*(lane>>4); K as B operand: rows (lane&7) + 8*(lane>>4), columns 8*((lane>>3)&1);
  // V through .trans: rows (lane&7) + 8*((lane>>3)&1), columns 8*(lane>>4).
  const int a_row = (lane & 7) + ((lane >> 3) & 1) * 8, a_col = (lane >> 4) * 8;
  const int kb_row = (lane & 7) + (lane >> 4) * 8, kb_col = ((lane >> 3) & 1) * 8;
  const T* sQw = sQ + (warp * MT * 16 + a_row) * kPitch + a_col;  // + mt*16 rows, + kk*16 cols

  for (int nb = 0; nb < n_blocks; ++nb) {
    const int n0 = nb * BN;
    const T* sK = sKV + (nb & 1) * 2 * BN * kPitch;
    const T* sV = sK + BN * kPitch;
    cp_async_wait<1>();  // tile nb (and Q) landed; tile nb+1 may still be in flight
    __syncthreads();
    if constexpr (Q_IN_REGS) {
      if (nb == 0) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int kk = 0; kk < DP / 16; ++kk)
            ldmatrix_x4(q_frag[mt][kk], smem_u32(sQw + mt * 16 * kPitch + kk * 16));
      }
    }

    // S = Q K^T for this warp's 16*MT rows x BN keys.
    float s[MT][BN / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < BN / 8; ++i) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < DP / 16; ++kk) {
      uint32_t qa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        if constexpr (Q_IN_REGS) {
#pragma unroll
          for (int i = 0; i < 4; ++i) qa[mt][i] = q_frag[Q_IN_REGS ? mt : 0][Q_IN_REGS ? kk : 0][i];
        } else {
          ldmatrix_x4(qa[mt], smem_u32(sQw + mt * 16 * kPitch + kk * 16));
        }
      }
#pragma unroll
      for (int nt2 = 0; nt2 < BN / 16; ++nt2) {
        uint32_t kb[4];  // {b0,b1} for keys nt2*16 + 0..7, {b0,b1} for keys +8..15
        ldmatrix_x4(kb, smem_u32(sK + (nt2 * 16 + kb_row) * kPitch + kk * 16 + kb_col));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          Mma<T>::run(s[mt][2 * nt2], qa[mt], kb[0], kb[1]);
          Mma<T>::run(s[mt][2 * nt2 + 1], qa[mt], kb[2], kb[3]);
        }
      }
    }

    // Scores -> log2 domain with every exclusion applied. The per-element checks are needed
    // only where the tile crosses the causal diagonal, the end of the keys, or with a mask /
    // softcap; the two cases are separate loops so that the common one stays a short stretch
    // of code (interleaved, the rarely-run checks bloat the loop past the instruction cache).
    const bool edge = p.mask_kind != MaskKind::none || p.softcap != 0.f || n0 + BN > p.kv_len ||
                      (p.causal && n0 + BN - 1 > row0 + p.causal_offset);
    if (!edge) {
      const float fast_scale = p.scale * kLog2e;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[mt][nt][e] *= fast_scale;
    } else {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int row = rows[mt][e >> 1];
            const int col = n0 + nt * 8 + 2 * t + (e & 1);
            s[mt][nt][e] = (row < p.q_len && visible(p, row, col))
                               ? score_log2(p, s[mt][nt][e], b, h, row, col)
                               : -INFINITY;
          }
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
        mx[0] = fmaxf(mx[0], fmaxf(s[mt][nt][0], s[mt][nt][1]));
        mx[1] = fmaxf(mx[1], fmaxf(s[mt][nt][2], s[mt][nt][3]));
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        // A row's 8-column pieces are spread over the 4 lanes of a quad.
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        const float mn = fmaxf(m_run[mt][r], mx[r]);
        // A row with nothing visible yet keeps max -inf: subtract 0 instead (2^-inf = 0).
        const float base = mn == -INFINITY ? 0.f : mn;
        const float alpha = fast_exp2(m_run[mt][r] - base);
        m_run[mt][r] = mn;
        float sum = 0.f;
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt) {
          s[mt][nt][2 * r] = fast_exp2(s[mt][nt][2 * r] - base);
          s[mt][nt][2 * r + 1] = fast_exp2(s[mt][nt][2 * r + 1] - base);
          sum += s[mt][nt][2 * r] + s[mt][nt][2 * r + 1];
        }
        l_run[mt][r] = l_run[mt][r] * alpha + sum;  // per-lane partial; quad summed at the end
#pragma unroll
        for (int i = 0; i < DP / 8; ++i) {
          o_acc[mt][i][2 * r] *= alpha;
          o_acc[mt][i][2 * r + 1] *= alpha;
        }
      }
    }

    // O += P V: P's accumulator layout is the A operand layout (16 keys = two 8-key tiles).
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t pa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        pa[mt][0] = Mma<T>::pack(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        pa[mt][1] = Mma<T>::pack(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        pa[mt][2] = Mma<T>::pack(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        pa[mt][3] = Mma<T>::pack(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int dt2 = 0; dt2 < DP / 16; ++dt2) {
        uint32_t vb[4];  // {b0,b1} for columns dt2*16 + 0..7, then + 8..15
        ldmatrix_x4_trans(vb, smem_u32(sV + (kk * 16 + a_row) * kPitch + dt2 * 16 + a_col));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          Mma<T>::run(o_acc[mt][2 * dt2], pa[mt], vb[0], vb[1]);
          Mma<T>::run(o_acc[mt][2 * dt2 + 1], pa[mt], vb[2], vb[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with stage nb&1 before tile nb+2 overwrites it
    if (nb + 2 < n_blocks) load_kv(nb + 2);
    cp_async_commit();
  }

  T* og = static_cast<T*>(p.out) + b * p.out_stride.batch + h * p.out_stride.head;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float l = l_run[mt][r];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      l_run[mt][r] = l;
      inv[r] = l > 0.f ? 1.f / l : 0.f;  // no visible key: a row of zeros (NaN l: NaN acc * 0)
    }
#pragma unroll
    for (int dt = 0; dt < DP / 8; ++dt) {
      const int c = dt * 8 + 2 * t;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int row = rows[mt][e >> 1], col = c + (e & 1);
        if (row < p.q_len && col < p.v_head_dim)
          og[row * p.out_stride.row + col] = from_f32<T>(o_acc[mt][dt][e] * inv[e >> 1]);
      }
    }
    if (p.lse != nullptr && t == 0) {
      float* lg = p.lse + (b * p.q_heads + h) * p.q_len;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = rows[mt][r];
        const float l = l_run[mt][r];
        if (row < p.q_len)
          lg[row] = l > 0.f ? m_run[mt][r] * kLn2 + logf(l) : (l == 0.f ? -INFINITY : l);
      }
    }
  }
}

// ---- fp32 SIMT kernel
// ---------------------------------------------------------------------------- One thread a query
// row (32 a block); K/V tiles of 32 rows in shared memory, read as broadcasts; the thread's q row
// and output accumulator live in shared memory (pitch +1 float so the 32 threads' rows fall in
// distinct banks).
constexpr int kF32Rows = 32, kF32Keys = 32;

__global__ void __launch_bounds__(kF32Rows) attention_f32_kernel(const KernelParams p) {
  extern __shared__ float smem_f[];
  const int D = p.head_dim, Dv = p.v_head_dim;
  float* sQ = smem_f;                    // [32][D + 1]
  float* sO = sQ + kF32Rows * (D + 1);   // [32][Dv + 1]
  float* sK = sO + kF32Rows * (Dv + 1);  // [32][D]
  float* sV = sK + kF32Keys * D;         // [32][Dv]
  const int m_block =
      p.causal ? static_cast<int>(gridDim.x - 1 - blockIdx.x) : static_cast<int>(blockIdx.x);
  const int h = blockIdx.y;
  const int64_t b = blockIdx.z;
  const int hk = h / p.group;
  const int tid = threadIdx.x;
  const int row0 = m_block * kF32Rows, row = row0 + tid;
  const float* qg = static_cast<const float*>(p.q) + b * p.q_stride.batch + h * p.q_stride.head;
  const float* kg = static_cast<const float*>(p.k) + b * p.k_stride.batch + hk * p.k_stride.head;
  const float* vg = static_cast<const float*>(p.v) + b * p.v_stride.batch + hk * p.v_stride.head;

  for (int i = tid; i < kF32Rows * D; i += kF32Rows) {
    const int r = i / D, c = i % D;
    sQ[r * (D + 1) + c] = row0 + r < p.q_len ? qg[(row0 + r) * p.q_stride.row + c] : 0.f;
  }
  for (int c = 0; c < Dv; ++c) sO[tid * (Dv + 1) + c] = 0.f;

  int n_max = p.kv_len;
  if (p.causal) {
    const int64_t last_row = (p.q_len < row0 + kF32Rows ? p.q_len : row0 + kF32Rows) - 1;
    const int64_t lim = last_row + p.causal_offset + 1;
    n_max = static_cast<int>(lim < 0 ? 0 : (lim < p.kv_len ? lim : p.kv_len));
  }
  float m = -INFINITY, l = 0.f;
  for (int n0 = 0; n0 < n_max; n0 += kF32Keys) {
    __syncthreads();  // previous tile fully consumed (and sQ written, the first time)
    for (int i = tid; i < kF32Keys * D; i += kF32Rows) {
      const int r = i / D, c = i % D;
      sK[i] = n0 + r < p.kv_len ? kg[(n0 + r) * p.k_stride.row + c] : 0.f;
    }
    for (int i = tid; i < kF32Keys * Dv; i += kF32Rows) {
      const int r = i / Dv, c = i % Dv;
      sV[i] = n0 + r < p.kv_len ? vg[(n0 + r) * p.v_stride.row + c] : 0.f;
    }
    __syncthreads();
    float s[kF32Keys];
#pragma unroll
    for (int j = 0; j < kF32Keys; ++j) s[j] = 0.f;
    const float* qrow = sQ + tid * (D + 1);
    for (int d = 0; d < D; ++d) {
      const float qd = qrow[d];
#pragma unroll
      for (int j = 0; j < kF32Keys; ++j) s[j] = fmaf(qd, sK[j * D + d], s[j]);
    }
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < kF32Keys; ++j) {
      const int col = n0 + j;
      s[j] =
          (row < p.q_len && visible(p, row, col)) ? score_log2(p, s[j], b, h, row, col) : -INFINITY;
      mx = fmaxf(mx, s[j]);
    }
    const float mn = fmaxf(m, mx);
    const float base = mn == -INFINITY ? 0.f : mn;
    const float alpha = exp2f(m - base);
    m = mn;
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < kF32Keys; ++j) {
      s[j] = exp2f(s[j] - base);
      sum += s[j];
    }
    l = l * alpha + sum;
    float* orow = sO + tid * (Dv + 1);
    for (int c = 0; c < Dv; ++c) {
      float acc = orow[c] * alpha;
#pragma unroll
      for (int j = 0; j < kF32Keys; ++j) acc = fmaf(s[j], sV[j * Dv + c], acc);
      orow[c] = acc;
    }
  }
  __syncthreads();
  // Write out cooperatively (row-major, consecutive threads on consecutive columns).
  float* og = static_cast<float*>(p.out) + b * p.out_stride.batch + h * p.out_stride.head;
  const float inv = l > 0.f ? 1.f / l : 0.f;  // a NaN l: NaN sO * 0 stays NaN
  sQ[tid] = inv;                              // sQ is free now: publish each row's 1/l
  __syncthreads();
  for (int i = tid; i < kF32Rows * Dv; i += kF32Rows) {
    const int r = i / Dv, c = i % Dv;
    if (row0 + r < p.q_len) og[(row0 + r) * p.out_stride.row + c] = sO[r * (Dv + 1) + c] * sQ[r];
  }
  if (p.lse != nullptr && row < p.q_len)
    p.lse[(b * p.q_heads + h) * p.q_len + row] =
        l > 0.f ? m * kLn2 + logf(l) : (l == 0.f ? -INFINITY : l);
}

// ---- dispatch
// ------------------------------------------------------------------------------------
int device_attribute(cudaDeviceAttr attr) {
  int dev = 0, value = 0;
  MMFAST_CUDA_CHECK(cudaGetDevice(&dev));
  MMFAST_CUDA_CHECK(cudaDeviceGetAttribute(&value, attr, dev));
  return value;
}

// A kernel asking for more shared memory than this GPU gives one block would fail at launch
// with an opaque error: say which argument is too large instead.
void require_shared_memory(size_t bytes, const KernelParams& p) {
  const int limit = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin);
  if (bytes > static_cast<size_t>(limit))
    throw std::invalid_argument(
        "q: head dims D=" + std::to_string(p.head_dim) + ", Dv=" + std::to_string(p.v_head_dim) +
        " need " + std::to_string(bytes) +
        " bytes of shared memory a block in this dtype; this GPU allows " + std::to_string(limit) +
        " (use smaller head dims, or float16/bfloat16)");
}

template <typename T, int DP>
void launch_mma(const KernelParams& p, int batch, cudaStream_t stream) {
  // Up to D = 128 a warp takes 32 rows (MT = 2), 4 warps a block; key tiles of 32 from D = 80
  // keep the score registers small enough to avoid spills. At D = 256 the output accumulators
  // alone take 128 registers, so 16 rows a warp (MT = 1).
  constexpr bool kBig = DP > 128;
  constexpr int kBN = DP >= 80 ? 32 : 64, kWarps = 4, kMT = kBig ? 1 : 2;
  constexpr int kBM = 16 * kMT * kWarps;
  constexpr int kPitch = DP + 8;
  // 16-byte copies need 8-element rows and 16-byte aligned row starts; else element loads.
  auto kernel = p.vec_ok ? attention_mma_kernel<T, DP, kBN, kWarps, kMT, false, true>
                         : attention_mma_kernel<T, DP, kBN, kWarps, kMT, false, false>;
  const size_t smem = static_cast<size_t>(kBM + 4 * kBN) * kPitch * sizeof(T);  // Q, 2x(K, V)
  require_shared_memory(smem, p);
  MMFAST_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem)));
  const dim3 grid((p.q_len + kBM - 1) / kBM, p.q_heads, batch);
  kernel<<<grid, kWarps * 32, smem, stream>>>(p);
  MMFAST_CUDA_CHECK_LAUNCH("attention_mma_kernel");
}

template <typename T>
void dispatch_mma(const KernelParams& p, int batch, cudaStream_t stream) {
  // mma.sync with bf16 operands and cp.async need sm_80 (Ampere) or newer.
  if (device_attribute(cudaDevAttrComputeCapabilityMajor) < 8)
    throw std::runtime_error(
        "attention (CUDA): float16/bfloat16 need a GPU of compute capability 8.0 or newer");
  const int d = p.head_dim > p.v_head_dim ? p.head_dim : p.v_head_dim;
  if (d <= 32) return launch_mma<T, 32>(p, batch, stream);
  if (d <= 64) return launch_mma<T, 64>(p, batch, stream);
  if (d <= 80) return launch_mma<T, 80>(p, batch, stream);
  if (d <= 96) return launch_mma<T, 96>(p, batch, stream);
  if (d <= 128) return launch_mma<T, 128>(p, batch, stream);
  return launch_mma<T, 256>(p, batch, stream);
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// Row indices and lengths are int in the kernels (element offsets are int64).
int narrow(int64_t v, const char* what) {
  if (v > INT_MAX - 256)
    throw std::invalid_argument(std::string(what) + " exceeds 2^31 - 257 on CUDA");
  return static_cast<int>(v);
}

}  // namespace

void attention(const AttentionParams& a, cudaStream_t stream) {
  check_attention(a, Device::cuda);
  if (a.batch == 0 || a.q_heads == 0 || a.q_len == 0) return;  // nothing to write
  KernelParams p{};
  p.q = a.q;
  p.k = a.k;
  p.v = a.v;
  p.out = a.out;
  p.lse = a.lse;
  p.mask = a.mask;
  p.mask_kind = a.mask_kind;
  p.q_stride = a.q_stride;
  p.k_stride = a.k_stride;
  p.v_stride = a.v_stride;
  p.out_stride = a.out_stride;
  p.mask_stride = a.mask_stride;
  p.q_heads = static_cast<int>(a.q_heads);  // <= kCudaMaxGridYZ (check_attention)
  p.group = static_cast<int>(a.q_heads / a.kv_heads);
  p.q_len = narrow(a.q_len, "q: length");
  p.kv_len = narrow(a.kv_len, "k: length");
  p.head_dim = static_cast<int>(a.head_dim);  // <= kAttentionMaxHeadDim
  p.v_head_dim = static_cast<int>(a.v_head_dim);
  p.causal = a.causal ? 1 : 0;
  p.causal_offset = a.causal_offset;
  p.scale = a.scale;
  p.softcap = a.softcap;
  const int batch = static_cast<int>(a.batch);  // <= kCudaMaxGridYZ

  if (a.dtype == DType::f32) {
    const size_t smem =
        sizeof(float) * static_cast<size_t>(kF32Rows * (p.head_dim + 1 + p.v_head_dim + 1) +
                                            kF32Keys * (p.head_dim + p.v_head_dim));
    require_shared_memory(smem, p);
    MMFAST_CUDA_CHECK(cudaFuncSetAttribute(
        attention_f32_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    const dim3 grid((p.q_len + kF32Rows - 1) / kF32Rows, p.q_heads, batch);
    attention_f32_kernel<<<grid, kF32Rows, smem, stream>>>(p);
    MMFAST_CUDA_CHECK_LAUNCH("attention_f32_kernel");
    return;
  }
  // 16-byte copies need 8-element rows and 16-byte aligned row starts.
  bool vec = p.head_dim % 8 == 0 && p.v_head_dim % 8 == 0 && aligned16(a.q) && aligned16(a.k) &&
             aligned16(a.v);
  for (const RowStrides* st : {&a.q_stride, &a.k_stride, &a.v_stride})
    vec = vec && st->batch % 8 == 0 && st->head % 8 == 0 && st->row % 8 == 0;
  p.vec_ok = vec ? 1 : 0;
  if (a.dtype == DType::f16) return dispatch_mma<__half>(p, batch, stream);
  if (a.dtype == DType::bf16) return dispatch_mma<__nv_bfloat16>(p, batch, stream);
  throw std::invalid_argument("q: unknown dtype code " + std::to_string(static_cast<int>(a.dtype)));
}

}  // namespace mmfast::cuda
