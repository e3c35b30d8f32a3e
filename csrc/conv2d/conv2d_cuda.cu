// CUDA 2-D convolution (ONNX Conv / torch conv2d), NCHW in and out. Three paths:
//
//   f16/bf16, Cg > 1   tensor-core implicit GEMM (mma.sync m16n8k16, ldmatrix, cp.async
//                      multi-stage pipeline) on a workspace copy of x in [N][H][W][G][Cp] and of
//                      w in [M][KH][KW][Cp] (Cp = Cg rounded up to 8, zero padded), so every
//                      8-element K vector is one 16-byte cp.async.
//   f32, Cg > 1        exact-fp32 SIMT implicit GEMM straight on NCHW (no tf32).
//   Cg == 1            direct depthwise kernel for all dtypes.
//
// GEMM view (per group g): rows = output pixels p = (n, oh, ow), P = N*OH*OW; columns = output
// channels m of the group, Mg = M/G; K = (kh, kw, c) for the tensor-core path and (c, kh, kw)
// (the layout of w) for the fp32 path. Accumulation is float32 everywhere; the output is rounded
// to the dtype once, after bias and ReLU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "conv2d/conv2d_cuda.h"
#include "cuda/cuda_check.h"
#include "cuda/device_common.cuh"

namespace mmfast::cuda {
namespace {

using namespace dev;  // NOLINT: the shared device helpers

// The kernels' view of Conv2dShape (conv2d/conv2d.h), passed by value to every kernel: the same
// names, narrowed to int (make_shape checks they fit), plus what the kernels derive from them.
// The bottom and right pads are implied by OH and OW.
struct ConvShape {
  int N, C, H, W, M, KH, KW, OH, OW;
  int stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left;
  int groups, Cg, Mg;  // groups, input / output channels per group
  int OHW, P;          // OH*OW, N*OH*OW
  bool relu;
};

// ReLU that keeps NaN (as torch.relu does).
__device__ __forceinline__ float apply_relu(float v, bool relu) {
  return (relu && v < 0.f) ? 0.f : v;
}

// ---------------------------------------------------------------------------------------------
// Workspace producers for the tensor-core path (memory-bound, 16-bit elements moved as raw bits).

// x (N, C, H, W) -> xt (N, H*W, G*Cp): channel cd = g*Cp + c' holds x channel g*Cg + c' when
// c' < Cg, else 0. One TC (cd) x THW (hw) tile per block of 256 threads: reads are warp rows
// of 32 consecutive hw of one channel (TC*THW/256 independent loads per thread), writes are 16-byte
// vectors of 8 channels (Ctot and the tile origin are multiples of 8, the workspace is 256-byte
// aligned).
template <int THW, int TC>
__global__ void __launch_bounds__(256)
    nchw_to_nhwc_kernel(const uint16_t* __restrict__ x, uint16_t* __restrict__ xt, int C, int HW,
                        int Cg, int Cp, int Ctot, int hw_tiles) {
  static_assert(256 % THW == 0 && THW % 32 == 0 && 256 % (TC / 8) == 0 && TC % 8 == 0, "tile");
  __shared__ uint16_t tile[TC][THW + 2];  // [cd][hw]; +2: conflict-free column reads
  const int n = blockIdx.x / hw_tiles;
  const int hw0 = (blockIdx.x - n * hw_tiles) * THW;
  const int cd0 = blockIdx.y * TC;
  const int t = threadIdx.x;
  {
    const int hw_l = t % THW, hw = hw0 + hw_l;
#pragma unroll
    for (int i = 0; i < TC * THW / 256; ++i) {
      const int cd_l = t / THW + (256 / THW) * i, cd = cd0 + cd_l;
      uint16_t v = 0;
      if (cd < Ctot && hw < HW) {
        const int g = cd / Cp, c = cd - g * Cp;
        if (c < Cg) v = x[(static_cast<int64_t>(n) * C + g * Cg + c) * HW + hw];
      }
      tile[cd_l][hw_l] = v;
    }
  }
  __syncthreads();
  constexpr int VPR = TC / 8;  // 16-byte vectors per hw row of the tile
  const int v8 = (t % VPR) * 8, cd = cd0 + v8;
#pragma unroll
  for (int j = 0; j < THW * VPR / 256; ++j) {
    const int hw_l = t / VPR + (256 / VPR) * j, hw = hw0 + hw_l;
    if (hw < HW && cd < Ctot) {
      uint32_t q[4];
#pragma unroll
      for (int e = 0; e < 4; ++e)
        q[e] = tile[v8 + 2 * e][hw_l] | (static_cast<uint32_t>(tile[v8 + 2 * e + 1][hw_l]) << 16);
      *reinterpret_cast<uint4*>(xt + (static_cast<int64_t>(n) * HW + hw) * Ctot + cd) =
          make_uint4(q[0], q[1], q[2], q[3]);
    }
  }
}

// w (M, Cg, KH, KW) -> wt (M, Cp/(8*CW), KH, KW, 8*CW), zero for c >= Cg: row m of the GEMM's
// B operand in the K order of the A loader (channel chunk of 8*CW outermost, then the taps).
// One thread per (m, c); a warp writes 32 consecutive channels of a chunk, and re-reads the
// same KH*KW-element source rows through L1 across its r loop.
__global__ void __launch_bounds__(256)
    reorder_weights_kernel(const uint16_t* __restrict__ w, uint16_t* __restrict__ wt, int64_t total,
                           int Cg, int Cp, int KHW, int CW) {
  const int chunk = 8 * CW;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(i % Cp);
    const int64_t m = i / Cp;
    const int cc = c / chunk, ci = c - cc * chunk;
    uint16_t* dst = wt + m * KHW * Cp + static_cast<int64_t>(cc) * KHW * chunk + ci;
    const uint16_t* src = w + (m * Cg + c) * KHW;
    for (int r = 0; r < KHW; ++r) dst[r * chunk] = c < Cg ? src[r] : uint16_t{0};
  }
}

// Split-K: y = sum over splits of part[split] (N, M, OH, OW) fp32, + bias, ReLU, rounded once.
template <typename T>
__global__ void __launch_bounds__(256)
    splitk_finalize_kernel(const float* __restrict__ part, const T* __restrict__ bias,
                           T* __restrict__ y, int64_t total, int splits, int M, int OHW,
                           bool relu) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v = 0.f;
    for (int s = 0; s < splits; ++s) v += part[s * total + i];
    if (bias != nullptr) v += to_f32(bias[(i / OHW) % M]);
    y[i] = from_f32<T>(apply_relu(v, relu));
  }
}

// ---------------------------------------------------------------------------------------------
// Tensor-core implicit GEMM.
//
// Block tile BM (pixels) x BN (channels) x 32 (K), WARPS_M x WARPS_N warps, each a
// (BM/WARPS_M) x (BN/WARPS_N) warp tile of 16x8 mma tiles. Shared memory per stage:
//   sA [BM][40]  row = pixel, 32 K elements + 8 pad (80-byte rows: the 8 rows one ldmatrix
//                phase reads start at 8 distinct 16-byte bank groups)
//   sB [BN][40]  row = output channel (B stored "col": K contiguous)
// K is walked in 8-element vectors kv = ((cc*KH + kh)*KW + kw)*CW + cw, channel vector
// cc*CW + cw (CW = 4, 2 or 1 vectors per chunk, dividing Cp/8): with CW = 4 a K tile is one
// tap of one 32-channel chunk, and consecutive K tiles are neighbouring taps whose A rows
// overlap in L1. Vectors past Kp (cc >= Cp/(8*CW)) are zero-filled.
// Grid: x = pixel tile * mtiles + channel tile (consecutive blocks share the im2col rows in
// L2), y = K split, z = group. With splits > 1 each block sums its K range into the fp32
// partial buffer `part` (split, N, M, OH, OW); splitk_finalize_kernel adds bias and rounds.

constexpr int kBK = 32;
constexpr int kLds = kBK + 8;

template <int BM, int BN, int STAGES>
__host__ __device__ constexpr int mma_smem_bytes() {
  return STAGES * (BM + BN) * kLds * 2;
}

struct MmaParams {
  int Cp, CW, Kp;
  int mtiles;
  int kt_per_split;  // K tiles per blockIdx.y
  int g_base;        // first group of this launch (grid z is at most 65535)
  float* part;       // split-K partials (splits, N, M, OH, OW), null without split
};

template <typename T, int BM, int BN, int WARPS_M, int WARPS_N, int STAGES, int MIN_BLOCKS>
__global__ void __launch_bounds__(WARPS_M * WARPS_N * 32, MIN_BLOCKS)
    conv2d_mma_kernel(const T* __restrict__ xt,    // (N, H, W, G*Cp)
                      const T* __restrict__ wt,    // (M, Kp), K order as above
                      const T* __restrict__ bias,  // (M,) or null
                      T* __restrict__ y,           // (N, M, OH, OW)
                      const ConvShape s, const MmaParams q) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr int NT = WARPS_M * WARPS_N * 32;
  constexpr int WTM = BM / WARPS_M, WTN = BN / WARPS_N;  // warp tile
  constexpr int MI = WTM / 16, NI = WTN / 8;             // mma tiles per warp
  constexpr int ROW_STEP = NT / 4;                       // 4 vectors per 32-wide K row
  constexpr int AR = BM / ROW_STEP, BR = BN / ROW_STEP;  // rows each thread loads
  static_assert(MI >= 1 && NI >= 2 && NI % 2 == 0, "warp tile");
  static_assert(AR >= 1 && BR >= 1 && AR * ROW_STEP == BM && BR * ROW_STEP == BN, "loader");
  static_assert(NT % BM == 0, "epilogue: one pixel per thread");
  static_assert(BN * (BM + 4) * 4 <= mma_smem_bytes<BM, BN, STAGES>(), "epilogue tile");

  extern __shared__ __align__(16) unsigned char smem[];
  T* sA = reinterpret_cast<T*>(smem);  // [STAGES][BM][kLds]
  T* sB = sA + STAGES * BM * kLds;     // [STAGES][BN][kLds]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = q.g_base + static_cast<int>(blockIdx.z);
  const int p0 = (static_cast<int>(blockIdx.x) / q.mtiles) * BM;
  const int m0 = (static_cast<int>(blockIdx.x) % q.mtiles) * BN;
  const int Ctot = s.groups * q.Cp, CW = q.CW, NCC = q.Cp / (8 * CW);
  const int kt_begin = static_cast<int>(blockIdx.y) * q.kt_per_split;
  const int ktiles = min((q.Kp + kBK - 1) / kBK - kt_begin, q.kt_per_split);  // >= 1

  // Loader: thread loads K vector `vcol` of rows (tid / 4) + i * ROW_STEP.
  const int vcol = tid & 3;
  const int row0 = tid >> 2;
  int64_t a_base[AR];  // element offset of (n, 0, 0, g*Cp) in xt
  int a_ih0[AR], a_iw0[AR];
#pragma unroll
  for (int i = 0; i < AR; ++i) {
    const int p = p0 + row0 + i * ROW_STEP;
    if (p < s.P) {
      const int n = p / s.OHW, rem = p - n * s.OHW;
      const int oh = rem / s.OW, ow = rem - oh * s.OW;
      a_base[i] = static_cast<int64_t>(n) * s.H * s.W * Ctot + static_cast<int64_t>(g) * q.Cp;
      a_ih0[i] = oh * s.stride_h - s.pad_top;
      a_iw0[i] = ow * s.stride_w - s.pad_left;
    } else {
      a_base[i] = 0;
      a_ih0[i] = INT_MIN / 2;  // fails every bounds check
      a_iw0[i] = 0;
    }
  }
  // This thread's next K vector, decomposed as kv = ((kc*KH + kh)*KW + kw)*CW + cw.
  int k_cw, k_w, k_h, k_c;
  {
    int r = kt_begin * 4 + vcol;
    k_cw = r % CW;
    r /= CW;
    k_w = r % s.KW;
    r /= s.KW;
    k_h = r % s.KH;
    k_c = r / s.KH;
  }
  int64_t b_off[BR];  // element offset of (g*Mg + m, vcol*8) in wt
  bool b_ok[BR];
#pragma unroll
  for (int j = 0; j < BR; ++j) {
    const int m = m0 + row0 + j * ROW_STEP;
    b_ok[j] = m < s.Mg;
    b_off[j] = static_cast<int64_t>(g * s.Mg + (b_ok[j] ? m : 0)) * q.Kp + vcol * 8;
  }

  // Issues K tile kt into stage `stage`; must be called for kt = kt_begin, kt_begin + 1, ... in
  // order (the A-side K decomposition advances by one tile per call).
  auto load_tile = [&](int stage, int kt) {
    const uint32_t a_dst = smem_u32(sA + stage * BM * kLds + row0 * kLds + vcol * 8);
    const int64_t c_off = (k_c * CW + k_cw) * 8;
#pragma unroll
    for (int i = 0; i < AR; ++i) {
      const int ih = a_ih0[i] + k_h * s.dilation_h, iw = a_iw0[i] + k_w * s.dilation_w;
      const bool ok = k_c < NCC && static_cast<unsigned>(ih) < static_cast<unsigned>(s.H) &&
                      static_cast<unsigned>(iw) < static_cast<unsigned>(s.W);
      const T* src =
          ok ? xt + a_base[i] + (static_cast<int64_t>(ih) * s.W + iw) * Ctot + c_off : xt;
      cp_async_16_ca(a_dst + i * ROW_STEP * kLds * 2, src, ok);
    }
    k_cw += 4;
    while (k_cw >= CW) {  // at most 4 turns (CW = 1)
      k_cw -= CW;
      if (++k_w == s.KW) {
        k_w = 0;
        if (++k_h == s.KH) {
          k_h = 0;
          ++k_c;
        }
      }
    }
    const uint32_t b_dst = smem_u32(sB + stage * BN * kLds + row0 * kLds + vcol * 8);
    const int k = kt * kBK + vcol * 8;
#pragma unroll
    for (int j = 0; j < BR; ++j) {
      const bool ok = b_ok[j] && k < q.Kp;
      cp_async_16_cg(b_dst + j * ROW_STEP * kLds * 2, ok ? wt + b_off[j] + kt * kBK : wt, ok);
    }
  };

  const int warp_m = warp % WARPS_M, warp_n = warp / WARPS_M;
  const int wm0 = warp_m * WTM, wn0 = warp_n * WTN;
  float acc[MI][NI][4];
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < NI; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.f;

  // ldmatrix source rows, per lane (see ldmatrix_x4):
  //   A x4 = {rows 0-7 k 0-7, rows 8-15 k 0-7, rows 0-7 k 8-15, rows 8-15 k 8-15} = a[0..3]
  //     -> lane gives row (lane % 16), k offset 8 * (lane / 16)
  //   B x4 = {n 0-7 k 0-7, n 0-7 k 8-15, n 8-15 k 0-7, n 8-15 k 8-15}
  //        = {b[j][0], b[j][1], b[j+1][0], b[j+1][1]}
  //     -> lane gives n (lane % 8) + 8 * (lane / 16), k offset 8 * ((lane / 8) % 2)
  const int a_ld_row = wm0 + (lane & 15), a_ld_k = (lane >> 4) * 8;
  const int b_ld_row = wn0 + (lane & 7) + ((lane >> 4) << 3), b_ld_k = ((lane >> 3) & 1) * 8;
  const uint32_t sA_u = smem_u32(sA), sB_u = smem_u32(sB);

  // Pipeline: STAGES-1 tiles in flight; every iteration waits for tile kt, then refills the
  // stage consumed at kt-1 (free: all warps passed this iteration's barrier).
#pragma unroll
  for (int st = 0; st < STAGES - 1; ++st) {
    if (st < ktiles) load_tile(st, kt_begin + st);
    cp_async_commit();
  }
  for (int kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    const int nk = kt + STAGES - 1;
    if (nk < ktiles) load_tile(nk % STAGES, kt_begin + nk);
    cp_async_commit();

    const int stage = kt % STAGES;
    const uint32_t a_s = sA_u + stage * BM * kLds * 2, b_s = sB_u + stage * BN * kLds * 2;
#pragma unroll
    for (int ks = 0; ks < kBK / 16; ++ks) {
      uint32_t af[MI][4], bf[NI][2];
#pragma unroll
      for (int i = 0; i < MI; ++i)
        ldmatrix_x4(af[i], a_s + ((a_ld_row + i * 16) * kLds + ks * 16 + a_ld_k) * 2);
#pragma unroll
      for (int j = 0; j < NI; j += 2) {
        uint32_t r[4];
        ldmatrix_x4(r, b_s + ((b_ld_row + j * 8) * kLds + ks * 16 + b_ld_k) * 2);
        bf[j][0] = r[0];
        bf[j][1] = r[1];
        bf[j + 1][0] = r[2];
        bf[j + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j) Mma<T>::run(acc[i][j], af[i], bf[j][0], bf[j][1]);
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // pipeline smem is reused below

  // Epilogue through smem, channel-major so the global stores are pixel-contiguous. Fragment
  // d[r] of tile (i, j): pixel wm0+16i+grp (+8 for r >= 2), channel wn0+8j+2tig (+1 for odd r).
  // Row pads (+8 halves / +4 floats) put the 4 tig values of one store 8 banks apart.
  const int grp = lane >> 2, tig = lane & 3;
  const int pl = tid % BM;  // pixel this thread stores; a warp stores 32 consecutive pixels
  const int p = p0 + pl;
  int n = 0, rem = 0;
  if (p < s.P) {
    n = p / s.OHW;
    rem = p - n * s.OHW;
  }
  if (q.part == nullptr) {
    // bias + ReLU + rounding, sOut [BN][BM+8] in T.
    constexpr int LDO = BM + 8;
    T* sOut = reinterpret_cast<T*>(smem);
#pragma unroll
    for (int j = 0; j < NI; ++j) {
      const int ml = wn0 + j * 8 + tig * 2;
      float b0 = 0.f, b1 = 0.f;
      if (bias != nullptr) {
        if (m0 + ml < s.Mg) b0 = to_f32(bias[g * s.Mg + m0 + ml]);
        if (m0 + ml + 1 < s.Mg) b1 = to_f32(bias[g * s.Mg + m0 + ml + 1]);
      }
#pragma unroll
      for (int i = 0; i < MI; ++i) {
        const int r = wm0 + i * 16 + grp;
        sOut[ml * LDO + r] = from_f32<T>(apply_relu(acc[i][j][0] + b0, s.relu));
        sOut[(ml + 1) * LDO + r] = from_f32<T>(apply_relu(acc[i][j][1] + b1, s.relu));
        sOut[ml * LDO + r + 8] = from_f32<T>(apply_relu(acc[i][j][2] + b0, s.relu));
        sOut[(ml + 1) * LDO + r + 8] = from_f32<T>(apply_relu(acc[i][j][3] + b1, s.relu));
      }
    }
    __syncthreads();
    if (p < s.P) {
      T* yp = y + (static_cast<int64_t>(n) * s.M + g * s.Mg) * s.OHW + rem;
      for (int ml = tid / BM; ml < BN && m0 + ml < s.Mg; ml += NT / BM)
        yp[static_cast<int64_t>(m0 + ml) * s.OHW] = sOut[ml * LDO + pl];
    }
  } else {
    // Raw fp32 partial sums, sOutF [BN][BM+4].
    constexpr int LDO = BM + 4;
    float* sOutF = reinterpret_cast<float*>(smem);
#pragma unroll
    for (int j = 0; j < NI; ++j) {
      const int ml = wn0 + j * 8 + tig * 2;
#pragma unroll
      for (int i = 0; i < MI; ++i) {
        const int r = wm0 + i * 16 + grp;
        sOutF[ml * LDO + r] = acc[i][j][0];
        sOutF[(ml + 1) * LDO + r] = acc[i][j][1];
        sOutF[ml * LDO + r + 8] = acc[i][j][2];
        sOutF[(ml + 1) * LDO + r + 8] = acc[i][j][3];
      }
    }
    __syncthreads();
    if (p < s.P) {
      float* pp = q.part + static_cast<int64_t>(blockIdx.y) * s.P * s.M +
                  (static_cast<int64_t>(n) * s.M + g * s.Mg) * s.OHW + rem;
      for (int ml = tid / BM; ml < BN && m0 + ml < s.Mg; ml += NT / BM)
        pp[static_cast<int64_t>(m0 + ml) * s.OHW] = sOutF[ml * LDO + pl];
    }
  }
#endif
}

// ---------------------------------------------------------------------------------------------
// Exact fp32 SIMT implicit GEMM on NCHW. Block tile 128 (pixels) x 64 (channels) x 8 (K),
// 256 threads, each an 8x4 register tile: pixels {4tx..4tx+3, 64+4tx..64+4tx+3}, channels
// 4ty..4ty+3 (tx = tid % 16, ty = tid / 16), so the smem reads are float4. K = (c, kh, kw) in
// w's own order; register-staged double buffer.

constexpr int kFBM = 128, kFBN = 64, kFBK = 8, kFNT = 256;

__global__ void __launch_bounds__(kFNT, 2)
    conv2d_f32_kernel(const float* __restrict__ x,     // (N, C, H, W)
                      const float* __restrict__ w,     // (M, Cg, KH, KW)
                      const float* __restrict__ bias,  // (M,) or null
                      float* __restrict__ y,           // (N, M, OH, OW)
                      const ConvShape s, const int mtiles, const int g_base) {
  __shared__ __align__(16) float As[2][kFBK][kFBM];      // [k][pixel]
  __shared__ __align__(16) float Bs[2][kFBK][kFBN + 4];  // [k][channel]; +4: conflict-free stores

  const int tid = threadIdx.x, lane = tid & 31;
  const int g = g_base + static_cast<int>(blockIdx.z);
  const int m0 = (static_cast<int>(blockIdx.x) % mtiles) * kFBN;
  const int p0 = (static_cast<int>(blockIdx.x) / mtiles) * kFBM;
  const int KHW = s.KH * s.KW, K = s.Cg * KHW, HW = s.H * s.W;
  const int ktiles = (K + kFBK - 1) / kFBK;

  // A loader: K row tid / 32, pixels lane + 32 i (a warp reads 32 neighbouring pixels).
  const int a_k = tid >> 5;
  int64_t a_base[4];  // offset of (n, g*Cg, 0, 0) in x
  int a_ih0[4], a_iw0[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int p = p0 + lane + 32 * i;
    if (p < s.P) {
      const int n = p / s.OHW, rem = p - n * s.OHW;
      const int oh = rem / s.OW, ow = rem - oh * s.OW;
      a_base[i] = (static_cast<int64_t>(n) * s.C + static_cast<int64_t>(g) * s.Cg) * HW;
      a_ih0[i] = oh * s.stride_h - s.pad_top;
      a_iw0[i] = ow * s.stride_w - s.pad_left;
    } else {
      a_base[i] = 0;
      a_ih0[i] = INT_MIN / 2;
      a_iw0[i] = 0;
    }
  }
  // B loader: K column tid % 8, channels tid / 8 + 32 j.
  const int b_k = tid & 7, b_row = tid >> 3;
  int64_t b_off[2];
  bool b_ok[2];
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const int m = m0 + b_row + 32 * j;
    b_ok[j] = m < s.Mg;
    b_off[j] = static_cast<int64_t>(g * s.Mg + (b_ok[j] ? m : 0)) * K;
  }

  float a_reg[4], b_reg[2];
  auto load_global = [&](int kt) {
    const int k = kt * kFBK + a_k;
#pragma unroll
    for (int i = 0; i < 4; ++i) a_reg[i] = 0.f;
    if (k < K) {
      const int c = k / KHW, r = k - c * KHW;
      const int kh = r / s.KW, kw = r - kh * s.KW;
      const int64_t coff = static_cast<int64_t>(c) * HW;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int ih = a_ih0[i] + kh * s.dilation_h, iw = a_iw0[i] + kw * s.dilation_w;
        if (static_cast<unsigned>(ih) < static_cast<unsigned>(s.H) &&
            static_cast<unsigned>(iw) < static_cast<unsigned>(s.W))
          a_reg[i] = __ldg(x + a_base[i] + coff + ih * s.W + iw);
      }
    }
    const int kb = kt * kFBK + b_k;
#pragma unroll
    for (int j = 0; j < 2; ++j) b_reg[j] = (b_ok[j] && kb < K) ? __ldg(w + b_off[j] + kb) : 0.f;
  };
  auto store_smem = [&](int buf) {
#pragma unroll
    for (int i = 0; i < 4; ++i) As[buf][a_k][lane + 32 * i] = a_reg[i];
#pragma unroll
    for (int j = 0; j < 2; ++j) Bs[buf][b_k][b_row + 32 * j] = b_reg[j];
  };

  const int tx = tid & 15, ty = tid >> 4;
  float acc[8][4];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;

  load_global(0);
  store_smem(0);
  __syncthreads();
  for (int kt = 0; kt < ktiles; ++kt) {
    const int buf = kt & 1;
    const bool more = kt + 1 < ktiles;
    if (more) load_global(kt + 1);  // in flight during the FMAs below
#pragma unroll
    for (int kk = 0; kk < kFBK; ++kk) {
      const float4 a0 = *reinterpret_cast<const float4*>(&As[buf][kk][4 * tx]);
      const float4 a1 = *reinterpret_cast<const float4*>(&As[buf][kk][64 + 4 * tx]);
      const float4 b = *reinterpret_cast<const float4*>(&Bs[buf][kk][4 * ty]);
      const float av[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      const float bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    // The other buffer was last read in iteration kt-1, before this iteration's barrier.
    if (more) store_smem(buf ^ 1);
    __syncthreads();
  }

  float bv[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int m = m0 + 4 * ty + j;
    bv[j] = (bias != nullptr && m < s.Mg) ? bias[g * s.Mg + m] : 0.f;
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int p = p0 + (i < 4 ? 4 * tx + i : 64 + 4 * tx + (i - 4));
    if (p >= s.P) continue;
    const int n = p / s.OHW, rem = p - n * s.OHW;
    float* yp = y + (static_cast<int64_t>(n) * s.M + g * s.Mg) * s.OHW + rem;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int m = m0 + 4 * ty + j;
      if (m < s.Mg) yp[static_cast<int64_t>(m) * s.OHW] = apply_relu(acc[i][j] + bv[j], s.relu);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Depthwise (Cg == 1, any multiplier Mg): one output pixel per thread, 256 pixels of one
// (n, m) plane per block; x through the read-only cache (neighbouring threads share rows).

constexpr int kDwThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kDwThreads)
    conv2d_depthwise_kernel(const T* __restrict__ x,     // (N, C, H, W)
                            const T* __restrict__ w,     // (M, 1, KH, KW)
                            const T* __restrict__ bias,  // (M,) or null
                            T* __restrict__ y,           // (N, M, OH, OW)
                            const ConvShape s, const int tiles) {
  const int plane = static_cast<int>(blockIdx.x) / tiles;  // n*M + m
  const int pix = (static_cast<int>(blockIdx.x) - plane * tiles) * kDwThreads + threadIdx.x;
  if (pix >= s.OHW) return;
  const int n = plane / s.M, m = plane - n * s.M;
  const int c = m / s.Mg;  // input channel = group
  const T* xp = x + (static_cast<int64_t>(n) * s.C + c) * s.H * s.W;
  const T* wp = w + static_cast<int64_t>(m) * s.KH * s.KW;
  const int oh = pix / s.OW, ow = pix - oh * s.OW;
  const int ih0 = oh * s.stride_h - s.pad_top, iw0 = ow * s.stride_w - s.pad_left;
  float acc = 0.f;
  for (int kh = 0; kh < s.KH; ++kh) {
    const int ih = ih0 + kh * s.dilation_h;
    if (static_cast<unsigned>(ih) >= static_cast<unsigned>(s.H)) continue;
    const T* xr = xp + static_cast<int64_t>(ih) * s.W;
    for (int kw = 0; kw < s.KW; ++kw) {
      const int iw = iw0 + kw * s.dilation_w;
      if (static_cast<unsigned>(iw) < static_cast<unsigned>(s.W))
        acc = fmaf(to_f32(xr[iw]), to_f32(wp[kh * s.KW + kw]), acc);
    }
  }
  if (bias != nullptr) acc += to_f32(bias[m]);
  y[static_cast<int64_t>(plane) * s.OHW + pix] = from_f32<T>(apply_relu(acc, s.relu));
}

// ---------------------------------------------------------------------------------------------
// Host side.

// Shapes past what the kernels index: the caller's argument, so ValueError in Python.
[[noreturn]] void fail(const std::string& what) {
  throw std::invalid_argument("conv2d (CUDA): " + what);
}
void require(bool ok, const char* what) {
  if (!ok) fail(what);
}

constexpr int kMaxGridYZ = static_cast<int>(kCudaMaxGridYZ);

std::size_t align256(std::size_t b) { return (b + 255) / 256 * 256; }

// Narrows a checked Conv2dShape to the kernels' int view. Pixel and per-plane indices are int in
// the kernels; element offsets are int64.
ConvShape make_shape(const Conv2dShape& a, bool relu) {
  for (int64_t v : {a.N, a.C, a.H, a.W, a.M, a.KH, a.KW, a.OH, a.OW, a.stride_h, a.stride_w,
                    a.dilation_h, a.dilation_w, a.pad_top, a.pad_left, a.groups})
    require(v <= INT_MAX, "a size, stride, dilation or pad exceeds 2^31 - 1");
  // Every factor is below 2^31 now, so each product of two fits in int64.
  const int64_t P = a.N * a.OH <= INT_MAX ? a.N * a.OH * a.OW : INT64_MAX;
  require(P <= INT_MAX - 256, "N*OH*OW exceeds 2^31 - 257");
  require(a.H * a.W <= INT_MAX, "H*W exceeds 2^31 - 1");
  require(a.C / a.groups * a.KH <= INT_MAX && a.C / a.groups * a.KH * a.KW <= INT_MAX - 64,
          "C/groups*KH*KW exceeds 2^31 - 65");
  require(P * a.M <= (int64_t{1} << 62) / 4, "output too large");
  // The kernels compute input rows and columns as oh * stride - pad + kh * dilation in int.
  require((a.OH - 1) * a.stride_h + (a.KH - 1) * a.dilation_h <= INT_MAX &&
              (a.OW - 1) * a.stride_w + (a.KW - 1) * a.dilation_w <= INT_MAX,
          "the strided and dilated extent of the output exceeds 2^31 - 1");
  ConvShape s{};
  s.N = static_cast<int>(a.N), s.C = static_cast<int>(a.C), s.H = static_cast<int>(a.H);
  s.W = static_cast<int>(a.W), s.M = static_cast<int>(a.M);
  s.KH = static_cast<int>(a.KH), s.KW = static_cast<int>(a.KW);
  s.OH = static_cast<int>(a.OH), s.OW = static_cast<int>(a.OW);
  s.stride_h = static_cast<int>(a.stride_h), s.stride_w = static_cast<int>(a.stride_w);
  s.dilation_h = static_cast<int>(a.dilation_h), s.dilation_w = static_cast<int>(a.dilation_w);
  s.pad_top = static_cast<int>(a.pad_top), s.pad_left = static_cast<int>(a.pad_left);
  s.groups = static_cast<int>(a.groups);
  s.Cg = s.C / s.groups, s.Mg = s.M / s.groups;
  s.OHW = s.OH * s.OW;
  s.P = static_cast<int>(P);
  s.relu = relu;
  return s;
}

int grid_x(int64_t blocks) {
  require(blocks <= INT_MAX, "grid too large (more than 2^31 - 1 blocks)");
  return static_cast<int>(blocks);
}

bool uses_mma(DType dtype, const ConvShape& s) { return dtype != DType::f32 && s.Cg > 1; }

// Workspace layout of the tensor-core path: xt (N, H, W, G, Cp), then wt (M, Kp), then with
// split-K the fp32 partials (splits, N, M, OH, OW); each part 256-byte aligned.
struct MmaLayout {
  int Cp, CW;
  int64_t Kp, xt_elems, wt_elems;
};
MmaLayout mma_layout(const ConvShape& s) {
  MmaLayout l{};
  l.Cp = (s.Cg + 7) / 8 * 8;
  const int vecs = l.Cp / 8;
  l.CW = vecs % 4 == 0 ? 4 : (vecs % 2 == 0 ? 2 : 1);
  l.Kp = static_cast<int64_t>(s.KH) * s.KW * l.Cp;
  l.xt_elems = static_cast<int64_t>(s.N) * s.H * s.W * s.groups * l.Cp;
  l.wt_elems = static_cast<int64_t>(s.M) * l.Kp;
  return l;
}
std::size_t mma_workspace_bytes(const ConvShape& s, int splits) {
  const MmaLayout l = mma_layout(s);
  std::size_t bytes = align256(static_cast<std::size_t>(l.xt_elems) * 2) +
                      align256(static_cast<std::size_t>(l.wt_elems) * 2);
  if (splits > 1) bytes += align256(static_cast<std::size_t>(splits) * s.N * s.M * s.OH * s.OW * 4);
  return bytes;
}

// Tile configurations: BM x BN, warps, and the per-SM throughput (TFLOP/s) fitted to H100
// timings of the ResNet-50 3x3 layers, for the cost model below.
struct MmaConfig {
  int bm, bn, warps;
  double tflops_per_sm;
};
constexpr int kStages = 4;
constexpr int kNumMmaConfigs = 3;
constexpr MmaConfig kMmaConfigs[kNumMmaConfigs] = {
    {128, 128, 8, 1.8},  // 8 warps of 64x32
    {128, 64, 4, 1.8},   // 4 warps of 64x32
    {64, 64, 4, 1.55},   // 4 warps of 32x32
};
constexpr int kMaxSplits = 4;

struct MmaPlan {
  int config, splits, kt_per_split;
};

// Picks the tile and K split with the least estimated time: tiles on the busiest SM times one
// tile's time (its FLOPs at the tile's throughput, scaled down when the SM holds few warps,
// plus ~1 us of prologue/epilogue), plus the fp32 partials' round trip and the finalize launch
// when K is split. Large tiles waste rows/columns and leave SMs idle on small layers; small
// tiles re-read more operand bytes per FLOP from L2 (so only the large tiles split K).
// Measured picks (batch 32): 64@56 and 128@28 -> 128x64; 256@14 -> 64x64; 512@7 -> 128x128
// split 4.
MmaPlan plan_mma(const ConvShape& s, int64_t Kp, int sms) {
  const int ktiles = static_cast<int>((Kp + kBK - 1) / kBK);
  MmaPlan best{0, 1, ktiles};
  double best_us = 0.0;
  for (int c = 0; c < kNumMmaConfigs; ++c) {
    const MmaConfig& cfg = kMmaConfigs[c];
    const int64_t tiles = static_cast<int64_t>((s.P + cfg.bm - 1) / cfg.bm) *
                          ((s.Mg + cfg.bn - 1) / cfg.bn) * s.groups;
    for (int sp = 1; sp <= (cfg.bm * cfg.bn >= 128 * 64 ? kMaxSplits : 1); ++sp) {
      const int per = (ktiles + sp - 1) / sp;
      const int splits = (ktiles + per - 1) / per;  // no empty split
      if (splits != sp || (sp > 1 && per < 8)) continue;
      const int64_t per_sm = (tiles * splits + sms - 1) / sms;
      const double fill = std::min(1.0, 0.5 + static_cast<double>(per_sm) * cfg.warps / 32.0);
      const double tile_us =
          2.0 * cfg.bm * cfg.bn * per * kBK / (cfg.tflops_per_sm * fill * 1e6) + 1.0;
      double us = static_cast<double>(per_sm) * tile_us;
      if (splits > 1)  // partials written and read once at ~3 TB/s, plus one more launch
        us += 4.0 + static_cast<double>(splits) * s.P * s.M * 8 / 3e6;
      if ((c == 0 && sp == 1) || us < best_us) {
        best = {c, splits, per};
        best_us = us;
      }
    }
  }
  return best;
}

int device_sms() {
  int dev = 0, sms = 0;
  MMFAST_CUDA_CHECK(cudaGetDevice(&dev));
  MMFAST_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return sms;
}

template <typename T, int BM, int BN, int WARPS_M, int WARPS_N, int MIN_BLOCKS>
void launch_mma(const T* xt, const T* wt, const T* bias, T* y, const ConvShape& s, MmaParams q,
                int splits, cudaStream_t stream) {
  auto kernel = conv2d_mma_kernel<T, BM, BN, WARPS_M, WARPS_N, kStages, MIN_BLOCKS>;
  constexpr int smem = mma_smem_bytes<BM, BN, kStages>();
  MMFAST_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  q.mtiles = (s.Mg + BN - 1) / BN;
  const int blocks = grid_x(static_cast<int64_t>((s.P + BM - 1) / BM) * q.mtiles);
  for (int g0 = 0; g0 < s.groups; g0 += kMaxGridYZ) {
    const int gz = std::min(kMaxGridYZ, s.groups - g0);
    q.g_base = g0;
    kernel<<<dim3(blocks, splits, gz), WARPS_M * WARPS_N * 32, smem, stream>>>(xt, wt, bias, y, s,
                                                                               q);
    MMFAST_CUDA_CHECK_LAUNCH("conv2d_mma_kernel");
  }
}

template <typename T>
void run_mma_plan(const Conv2dParams& a, const ConvShape& s, const MmaPlan& plan,
                  cudaStream_t stream) {
  int dev = 0, cc_major = 0;
  MMFAST_CUDA_CHECK(cudaGetDevice(&dev));
  MMFAST_CUDA_CHECK(cudaDeviceGetAttribute(&cc_major, cudaDevAttrComputeCapabilityMajor, dev));
  require(cc_major >= 8, "f16/bf16 convolution needs a GPU of compute capability 8.0 or newer");

  const MmaLayout l = mma_layout(s);
  require(l.Kp <= INT_MAX - kBK, "KH*KW*C/groups too large");
  require(static_cast<int64_t>(s.groups) * l.Cp <= static_cast<int64_t>(kMaxGridYZ) * 64,
          "C too large for the NHWC transpose grid");
  require(a.workspace != nullptr, "workspace is null (conv2d_workspace_bytes > 0)");
  auto* ws = static_cast<unsigned char*>(a.workspace);
  auto* xt = reinterpret_cast<uint16_t*>(ws);
  auto* wt = reinterpret_cast<uint16_t*>(ws + align256(l.xt_elems * sizeof(uint16_t)));
  float* part = nullptr;
  if (plan.splits > 1)
    part = reinterpret_cast<float*>(ws + align256(l.xt_elems * sizeof(uint16_t)) +
                                    align256(l.wt_elems * sizeof(uint16_t)));

  // x (N, C, H, W) -> xt (N, H, W, G*Cp)
  const int HW = s.H * s.W, Ctot = s.groups * l.Cp;
  // 64x64 tiles: a 256-wide hw tile (512-byte row reads) measured slower on the H100.
  const int hw_tiles = (HW + 63) / 64;
  if (HW > 0) {  // an empty image (all of its output is padding) has nothing to move
    nchw_to_nhwc_kernel<64, 64>
        <<<dim3(grid_x(static_cast<int64_t>(hw_tiles) * s.N), (Ctot + 63) / 64), 256, 0, stream>>>(
            static_cast<const uint16_t*>(a.x), xt, s.C, HW, s.Cg, l.Cp, Ctot, hw_tiles);
    MMFAST_CUDA_CHECK_LAUNCH("nchw_to_nhwc_kernel");
  }
  // w (M, Cg, KH, KW) -> wt (M, Kp)
  const int64_t wthreads = static_cast<int64_t>(s.M) * l.Cp;
  reorder_weights_kernel<<<static_cast<int>(std::min<int64_t>((wthreads + 255) / 256, 65536)), 256,
                           0, stream>>>(static_cast<const uint16_t*>(a.weight), wt, wthreads, s.Cg,
                                        l.Cp, s.KH * s.KW, l.CW);
  MMFAST_CUDA_CHECK_LAUNCH("reorder_weights_kernel");

  const T* xtt = reinterpret_cast<const T*>(xt);
  const T* wtt = reinterpret_cast<const T*>(wt);
  const T* bias = static_cast<const T*>(a.bias);
  T* y = static_cast<T*>(a.y);
  MmaParams q{};
  q.Cp = l.Cp;
  q.CW = l.CW;
  q.Kp = static_cast<int>(l.Kp);
  q.kt_per_split = plan.kt_per_split;
  q.part = part;
  switch (plan.config) {
    case 0:
      launch_mma<T, 128, 128, 2, 4, 2>(xtt, wtt, bias, y, s, q, plan.splits, stream);
      break;
    case 1:
      launch_mma<T, 128, 64, 2, 2, 3>(xtt, wtt, bias, y, s, q, plan.splits, stream);
      break;
    default:
      launch_mma<T, 64, 64, 2, 2, 4>(xtt, wtt, bias, y, s, q, plan.splits, stream);
      break;
  }
  if (plan.splits > 1) {
    const int64_t total = static_cast<int64_t>(s.P) * s.M;
    splitk_finalize_kernel<T>
        <<<static_cast<int>(std::min<int64_t>((total + 255) / 256, 65536)), 256, 0, stream>>>(
            part, bias, y, total, plan.splits, s.M, s.OHW, s.relu);
    MMFAST_CUDA_CHECK_LAUNCH("splitk_finalize_kernel");
  }
}

template <typename T>
void run_mma_path(const Conv2dParams& a, const ConvShape& s, cudaStream_t stream) {
  run_mma_plan<T>(a, s, plan_mma(s, mma_layout(s).Kp, device_sms()), stream);
}

// ---- fp32 and depthwise paths

void run_f32_path(const Conv2dParams& a, const ConvShape& s, cudaStream_t stream) {
  const int mtiles = (s.Mg + kFBN - 1) / kFBN;
  const int blocks = grid_x(static_cast<int64_t>((s.P + kFBM - 1) / kFBM) * mtiles);
  for (int g0 = 0; g0 < s.groups; g0 += kMaxGridYZ) {
    const int gz = std::min(kMaxGridYZ, s.groups - g0);
    conv2d_f32_kernel<<<dim3(blocks, 1, gz), kFNT, 0, stream>>>(
        static_cast<const float*>(a.x), static_cast<const float*>(a.weight),
        static_cast<const float*>(a.bias), static_cast<float*>(a.y), s, mtiles, g0);
    MMFAST_CUDA_CHECK_LAUNCH("conv2d_f32_kernel");
  }
}

template <typename T>
void run_depthwise_path(const Conv2dParams& a, const ConvShape& s, cudaStream_t stream) {
  const int tiles = (s.OHW + kDwThreads - 1) / kDwThreads;
  const int blocks = grid_x(static_cast<int64_t>(s.N) * s.M * tiles);
  conv2d_depthwise_kernel<T><<<blocks, kDwThreads, 0, stream>>>(
      static_cast<const T*>(a.x), static_cast<const T*>(a.weight), static_cast<const T*>(a.bias),
      static_cast<T*>(a.y), s, tiles);
  MMFAST_CUDA_CHECK_LAUNCH("conv2d_depthwise_kernel");
}

}  // namespace

std::size_t conv2d_workspace_bytes(const Conv2dShape& shape, DType dtype) {
  check_conv2d_shape(shape);
  const ConvShape s = make_shape(shape, false);
  if (!uses_mma(dtype, s)) return 0;
  return mma_workspace_bytes(s, plan_mma(s, mma_layout(s).Kp, device_sms()).splits);
}

void conv2d(const Conv2dParams& a, cudaStream_t stream) {
  check_conv2d(a, Device::cuda);
  if (a.shape.N == 0 || a.shape.M == 0) return;  // nothing to write (OH, OW >= 1: checked)
  const ConvShape s = make_shape(a.shape, a.relu);
  // A workspace sized elsewhere (another device, another geometry) must not be overrun.
  const std::size_t need = conv2d_workspace_bytes(a.shape, a.dtype);
  if (a.workspace_bytes < need || (need > 0 && a.workspace == nullptr))
    throw std::invalid_argument("workspace: " + std::to_string(a.workspace_bytes) +
                                " bytes given, " + std::to_string(need) + " needed");
  if (s.Cg == 1) {
    switch (a.dtype) {
      case DType::f32:
        return run_depthwise_path<float>(a, s, stream);
      case DType::f16:
        return run_depthwise_path<__half>(a, s, stream);
      case DType::bf16:
        return run_depthwise_path<__nv_bfloat16>(a, s, stream);
    }
    fail("unknown dtype");
  }
  switch (a.dtype) {
    case DType::f32:
      return run_f32_path(a, s, stream);
    case DType::f16:
      return run_mma_path<__half>(a, s, stream);
    case DType::bf16:
      return run_mma_path<__nv_bfloat16>(a, s, stream);
  }
  fail("unknown dtype");
}

}  // namespace mmfast::cuda
