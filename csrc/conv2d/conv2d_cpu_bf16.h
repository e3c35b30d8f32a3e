// conv2d with bfloat16 inputs and float32 accumulation on the CPU (mmfast.ops.conv2d with
// precision="bf16"): x and the weights rounded to bf16 (round to nearest even), products exact
// in float32, sums in float32, bias, ReLU and the output in float32.
//
// The fast kernel (conv2d_cpu_bf16.cpp, AVX512-BF16, compiled on its own with -mavx512bf16 and
// picked at run time) is the implicit GEMM of conv2d_cpu.h (spatial path, channel path for small
// images, direct 1x1 mode) with K = (channel, tap) taken in *channel pairs*: VDPBF16PS multiplies
// two bf16 pairs per 32-bit lane and adds both products to a float32 accumulator, so both operands
// hold K pairs in one 32-bit word:
//  - the phase planes (same geometry as the float32 plan: Conv2dCpuPlan's Hq, Wq, tap offsets)
//    are stored per channel pair, word [pair][pos] = (bf16(x[2c'][pos]), bf16(x[2c'+1][pos]));
//    a tap still reads a contiguous run of positions, now 16 per 64-byte vector;
//  - the weights are packed per panel of kConvBf16MR output channels, per (pair, tap), as
//    kConvBf16MR words (w[m, 2c'], w[m, 2c'+1]) that the microkernel broadcasts.
// A group with an odd channel count pairs its last channel with zeros. Where channel pairs fit
// badly the K pairs are *taps* of one channel instead, read from planes of paired input
// elements (same microkernels, same products and sums):
//  - depthwise (one channel per group), stride 1: taps (kw, kw + 1) of a filter row, through a
//    ring of paired input rows (conv2d_bf16_dw_pairs, below); other depthwise strides run
//    float32 FMAs on bf16-rounded planes and weights (exact products as well);
//  - 3 to 15 channels a group, an odd count, with wide filters (the RGB stem): tap-pair mode
//    (conv2d_bf16_tap_mode, below).
// 1x1 stride-1 unpadded convolutions skip the planes ("direct mode"): the input is converted to
// channel pairs per chunk of positions, reused by every weight panel (conv2d_bf16_direct_chunk).
//
// Error bound (per output element, against the float64 convolution of the float32 inputs):
//   |y - y64| <= (2u + u^2 + gamma_{K+1}) * (sum_k |x_k| |w_k| + |b|)
//                + K * 2^-126 * (max|x| + max|w| + 1)
// with u = 2^-8 (bf16's unit roundoff: each input is bf16(v) = v(1 + d), |d| <= u), products of
// two bf16 numbers exact in float32 (8 + 8 significant bits <= 24), gamma_n = n*2^-24 / (1 -
// n*2^-24) for the chain of float32 additions of one accumulator lane (each VDPBF16PS adds its two
// products one after the other, each rounded to nearest even) and the bias, and the last term for
// DAZ/FTZ: an input below 2^-126 in magnitude may be read as zero (an error of at most 2^-126
// times the other factor) and a partial sum below it flushed to zero (2^-126). ReLU is
// 1-Lipschitz and keeps the bound. K counts the pairs' halves, zero partners included; which
// products share a VDPBF16PS (two channels or two taps) does not enter the bound, so pairing taps
// leaves it as it is (K = 2 ceil(Cg/2) KH KW bounds the tap pairs' count too). The portable
// fallback (inputs rounded by bf16_round, then the float32 kernels) obeys the same bound.
#pragma once

#include <cstdint>

#include "conv2d/conv2d.h"
#include "conv2d/conv2d_cpu.h"

namespace mmfast {

// Output channels per packed bf16 weight panel (the microkernel's broadcast rows).
constexpr int kConvBf16MR = 8;
// Positions per spatial-GEMM tile (the microkernel's 3 vectors of 16).
constexpr int kConvBf16NR = 48;

// Tap-pair mode (an odd channel count of 3 or more with wide filters, the RGB stem: 3 channels
// pair as 2, a third of the K pairs' halves zero): the K pairs are taps of one channel instead,
// whichever wastes fewer halves (conv2d_bf16_tap_mode, from Cg, KH, KW only, so the packing
// agrees). Per channel, in this order:
//  - P (kh, kw), kw = 0, 2, .. < KW - 1: taps (kh, kw) and (kh, kw + 1);
//  - for an odd KW, the last column paired down the rows: R (kh, KW - 1), kh = 0, 2, ..: taps
//    (kh, KW - 1) and (kh + 1, KW - 1), and for an odd KH the last one alone, L (KH - 1, KW - 1),
//    paired with a zero (the 7x7 stem: 21 + 3 + 1 = 25 pairs a channel, 75 in all, where channel
//    pairs take 2 x 49 = 98).
// Each kind reads its own "pair planes", per channel and phase slot (a, b) of the float32 plan,
// word [i][j] = (bf16 xpad[R, C], bf16 second), R = i*SH + a, C = j*SW + b, second =
// xpad[R, C + dilation_w] (P), xpad[R + dilation_h, C] (R) or 0 (L): a pair's word is then at the
// first tap's offset (Conv2dCpuPlan::tap_offset) in its kind's planes. The weights pack as
// (w[kh, kw], w[second tap]) words per (channel, pair), in the order above. Products and sums
// are the same as with channel pairs, so the error bound below holds unchanged (K counts the
// pairs' halves, zeros included). The channel path (weight_cols) is not used in this mode.
constexpr int kConvBf16TapKinds = 3;  // P, R, L
bool conv2d_bf16_tap_mode(const Conv2dShape& s);
// Pairs per channel and their (kind, kh, kw) of the first tap, in packing order.
int64_t conv2d_bf16_tap_pair_list(const Conv2dShape& s, int* kind, int64_t* kh, int64_t* kw);
struct Conv2dBf16TapPairs {
  int64_t npairs = 0;                 // K pairs per channel
  int64_t offset[kConvMaxTaps] = {};  // pair -> word offset in its channel's planes
  int64_t plane_stride = 0;           // words per channel: kConvBf16TapKinds x nphases planes
  bool used[kConvBf16TapKinds][kConvMaxTaps] = {};  // (kind, phase slot) planes read
  int64_t words = 0;  // every channel's planes of one image, slack included
};
void conv2d_bf16_tap_pairs(const Conv2dShape& s, const Conv2dCpuPlan& g, Conv2dBf16TapPairs& t);

// 32-bit words of packed bf16 weights for the shape (only C, M, KH, KW, groups are read), in
// panels of `panel` output channels: kConvBf16MR (the spatial GEMM's broadcast rows) or kConvNC
// (the channel path's vectors, "cols"): per group, ceil(Mg / panel) panels of
// ceil(Cg / 2) * KH * KW * panel words, [pair][tap][m] (tap-pair mode: Cg * pairs * panel
// words, [channel][pair][m]).
int64_t conv2d_bf16_packed_words(const Conv2dShape& s, int panel);
// w: (M, Cg, KH, KW) float32, C-contiguous; each value rounded to bf16 (round to nearest even).
void conv2d_bf16_pack_weights(const Conv2dShape& s, int panel, const float* w, uint32_t* packed);

// Direct mode: a 1x1, stride-1, unpadded convolution of an input with contiguous rows, whose
// positions are the input's own: no planes, B converted per chunk of positions from x (a chunk
// of every pair, per thread).
bool conv2d_bf16_direct(const Conv2dShape& s, const NchwStrides& x_stride);
// Positions per direct-mode chunk for `pairs` channel pairs: whole 48-position tiles, up to 16,
// fewer when the pairs are many, so that a chunk (pairs x positions words) stays within ~256 KB,
// in L2 while every weight panel runs over it.
int64_t conv2d_bf16_direct_chunk(int64_t pairs);

// Depthwise, stride 1, no row dilation, at most kConvBf16DwMaxKH filter rows: the "tap pairs"
// kernel (conv2d_cpu_bf16.cpp), whose K pairs are taps (kw, kw + 1) of one filter row instead
// of channels. Per thread, a ring of kConvBf16DwRows + KH - 1 padded input rows, each stored as
// words q[j] = (bf16 xpad[j], bf16 xpad[j + dilation_w]): tap pair (kw, kw + 1) of output
// position ow reads q[ow + kw * dilation_w], and the pair's weight word is (w[kw], w[kw + 1]).
// An odd KW leaves its last tap alone: that word's second half is masked to zero (the product
// with the zero weight then is 0 * 0, never 0 * inf), as a zero partner channel is.
constexpr int kConvBf16DwRows = 4;        // output rows per register block
constexpr int64_t kConvBf16DwMaxKH = 16;  // filter rows the tap-pairs kernel takes
bool conv2d_bf16_dw_pairs(const Conv2dShape& s);
// Words of one thread's depthwise workspace slice: the tap-pairs ring and a float32 staging row
// of W floats, or otherwise a float32 channel's planes (g.channel_floats).
int64_t conv2d_bf16_dw_thread_words(const Conv2dShape& s, const Conv2dCpuPlan& g);
// Ring geometry shared by the plan and the kernel: row stride (Wq rounded up to 16 words); the
// staging row (a strided input row gathered) holds W floats, rounded up to 16.
inline int64_t conv2d_bf16_dw_row_words(const Conv2dCpuPlan& g) { return (g.Wq + 15) / 16 * 16; }

// Words of workspace the fast kernel needs for a plan made by conv2d_cpu_plan(): the channel
// pairs' planes of one image (g.batch_images on the channel path, possible when `have_cols`)
// plus the slack the last tiles read, and in direct mode at least a chunk of every pair per
// thread; for a depthwise one a float32 channel plane per thread. Throws std::invalid_argument
// when absurdly large (as conv2d_cpu_plan).
int64_t conv2d_bf16_workspace_words(const Conv2dShape& s, const Conv2dCpuPlan& g, bool direct,
                                    bool have_cols);

// The kernel's inputs: Conv2dParams with p.weight = the bf16 kConvBf16MR packing (uint32 words),
// p.weight_cols the kConvNC one or null (then no channel path), p.x float32
// (any strides), p.workspace 64-byte aligned, conv2d_bf16_workspace_words() words; g from
// conv2d_cpu_plan().
namespace avx512bf16 {
void conv2d_bf16(const Conv2dParams& p, const Conv2dCpuPlan& g);
}

}  // namespace mmfast
