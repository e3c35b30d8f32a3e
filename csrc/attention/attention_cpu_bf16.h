// Attention with bfloat16 inputs and float32 accumulation on the CPU (mmfast.ops.attention with
// precision="bf16"): q, k, v rounded to bf16 (round to nearest even), S = Q.K^T accumulated in
// float32, the online softmax in float32, P rounded to bf16 for P.V (accumulated in float32),
// the normalisation and the output in float32. Same semantics as AttentionParams (masks, causal,
// softcap, GQA, lse).
//
// The fast kernel (attention_cpu_bf16.cpp, AVX512-BF16) keeps attention_cpu.cpp's transposed
// layout (vector lanes over queries) with both products in K pairs for VDPBF16PS:
//   Q^T  qt[x'][i]  = (bf16 q[i][2x'], bf16 q[i][2x'+1])       (D/2 words x BQ)
//   K    k[j][x']   = (bf16 k[j][2x'], bf16 k[j][2x'+1])       (row-major bf16: broadcast word)
//   P^T  pt[j'][i]  = (bf16 P[2j'][i], bf16 P[2j'+1][i])       (packed after the softmax)
//   V    v[j'][c]   = (bf16 v[2j'][c], bf16 v[2j'+1][c])       (broadcast word)
// K and V are converted once per call into the caller's workspace (attention_bf16_workspace).
//
// Error bound (per output element, against the float64 attention of the float32 inputs), with
// u = 2^-8 (bf16 unit roundoff), u32 = 2^-24, gamma_n = n*u32 / (1 - n*u32):
//  - scores: s_ij = scale * sum_x q_ix k_jx is computed with
//      |s^_ij - s_ij| <= delta_ij = |scale| (2u + u^2 + gamma_D) sum_x |q_ix||k_jx|
//                                   + 8 u32 (|s_ij| + |mask_ij| + max_j' |s_ij'|)
//    (bf16 inputs, exact products, a float32 chain of D additions per lane; the last term covers
//    the scale (with log2 e folded in), the mask addition and s - max in float32), plus DAZ/FTZ:
//    inputs below 2^-126 may read as zero, negligible next to these for normal data.
//  - softmax: with delta_i = max_j delta_ij over the keys query i sees, every probability is
//    within a factor exp(+-2 delta_i) of the exact one: |p^_ij - p_ij| <= (e^(2 delta_i) - 1) p_ij.
//  - P.V and the normalisation: exp2 (< 2^-22 relative), P and v rounded to bf16 (u each), the
//    float32 chains of Lk additions (plus one rescale per key block) for the numerator and the
//    row sum, 1/l and the product: out = sum_j p^_ij v_jc (1 + eta_ij) with
//      |eta_ij| <= eta = 2u + u^2 + 2 gamma_(Lk + Lk/96 + 2) + 2^-20.
//  Together: |out_ic - out64_ic| <= (e^(2 delta_i) (1 + eta) - 1) * sum_j p_ij |v_jc|.
// The portable fallback (inputs rounded by bf16_round, then the float32 kernel, P not rounded)
// obeys the same bound.
#pragma once

#include <cstddef>
#include <cstdint>

#include "attention/attention.h"

namespace mmfast {

// Bytes of workspace the fast kernel needs for p (its bf16 copies of K and V, 64-byte aligned
// parts): the caller passes it 64-byte aligned.
size_t attention_bf16_workspace_bytes(const AttentionParams& p);

namespace avx512bf16 {
// p as check_attention() accepts it with float32 q, k, v (any row strides); `workspace` of
// attention_bf16_workspace_bytes(p) bytes, 64-byte aligned.
void attention_bf16(const AttentionParams& p, void* workspace);
}  // namespace avx512bf16

}  // namespace mmfast
