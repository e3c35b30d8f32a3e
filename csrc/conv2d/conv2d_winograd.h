// 3x3 convolutions (stride 1, dilation 1, one group) by Winograd's minimal filtering F(2x2, 3x3)
// (Lavin & Gray 2016): each 2x2 block of outputs ("tile") of output channel m is
//   Y = A^T [ sum_c (G g_{m,c} G^T) ⊙ (B^T d_c B) ] A
// with d_c the 4x4 input patch under the tile and g the 3x3 filter, so the 36 multiplies per
// tile and channel pair of the direct convolution become 16 (2.25x fewer), done as 16 GEMMs
//   M_xi[t, m] = sum_c V_xi[t, c] * U_xi[c, m]      (xi = 4*i + j, the 16 points of the 4x4)
// over all the tiles t at once. F(2x2, 3x3) and not the larger F(4x4, 3x3): its transforms hold
// only 0, ±1 and ±1/2, which are exact in float32, so its error stays within ~2x the direct
// convolution's (F(4x4, 3x3)'s 1/6, 1/12, 1/24 and 8s measured ~9x in float32).
//
//   B^T = [1  0 -1  0]   G = [ 1    0    0 ]   A^T = [1  1  1  0]
//         [0  1  1  0]       [1/2  1/2  1/2]         [0  1 -1 -1]
//         [0 -1  1  0]       [1/2 -1/2  1/2]
//         [0  1  0 -1]       [ 0    0    1 ]
//
// Layouts (floats; Cp = C rounded up to kWinoCB, Mb = ceil(M / kWinoMB) panels):
//  - packed weights U (made once, in double, rounded once to float32; CPU-independent):
//    [xi 16][panel Mb][c Cp][kWinoMB], zero past C and M — the GEMM's vector operand;
//  - the input of a group of images, zero-padded and channel-blocked ("xb"):
//    [image][c-block Cp/16][Hp][Wp][16], Hp = 2*tiles_h + 2, Wp = 2*tiles_w + 2, where row r of
//    the padded image is input row r - pad_top (zero outside the input), likewise columns;
//  - transformed input V of one block of tiles: [xi 16][c-block][tile T][16] — the GEMM
//    broadcasts V[xi][cb][t][c % 16] (tiles 64 bytes apart: constant offsets);
//  - per thread, M of its chunk of tiles for one output panel: [xi 16][tile][kWinoMB] (a K
//    chunk's partial sums wait there), consumed by the output transform, which adds the bias,
//    applies ReLU and writes y (N, M, OH, OW).
//
// Error bound (per output element, against the float64 convolution of the float32 inputs; u =
// 2^-24, gamma_n = n u / (1 - n u)). Every rounding multiplies one term of a sum of products by
// (1 + delta), |delta| <= u, and each term of y meets at most C + 9 of them: U = G g G^T made in
// double (error < 2^-50 relative) and rounded once (2), V = B^T d B in two passes of one addition
// each (2), the GEMM's chain of C fused multiply-adds per lane (C), the output transform's two
// passes of two additions each (4), the bias (1). So
//   |y - y64| <= gamma_{C+9} * ( |A^T| [ sum_c (|G| |g_c| |G^T|) ⊙ (|B^T| |d_c| |B|) ] |A|
//                                + |bias| )
//                + 2^-149 * |A^T| [ sum_c |B^T| |d_c| |B| ] |A|  +  20 (C + 9) * 2^-150
// (the last two for underflow: sums and differences that land among the denormals are exact,
// but a transformed weight rounded to a denormal errs by up to 2^-150 absolute, times its V,
// and each fused multiply-add by up to 2^-150, at most 9 C of them per output).
// |B^T||B| and |A^T||A| have entries <= 2 and G's abs-sum is <= 1.5 per row, so the bracket is a
// small multiple of the direct convolution's sum_k |x_k||w_k|, and the chain is C + 9 long
// instead of 9C: the bound is 0.2-0.7x the direct kernel's for C >= 16, and the measured error
// 0.3-0.6x the direct kernel's on layers of 64-512 channels (up to 1.6x on 3-16 channels).
// tests/test_conv2d_winograd.py checks the bound, and that it catches wrong results.
#pragma once

#include <cstdint>

#include "conv2d/conv2d.h"

namespace mmfast {

constexpr int kWinoPoints = 16;  // the 4x4 transformed tile
constexpr int kWinoMB = 64;      // output channels per packed panel (the GEMM's vector operand)
constexpr int kWinoCB = 16;      // channels per block of the padded input and of V

// Whether F(2x2, 3x3) computes this convolution: 3x3, stride 1, dilation 1, one group (any
// padding, any N, C, M, H, W).
bool conv2d_winograd_applies(const Conv2dShape& s);

// How one call runs: the tile grid, the images per group, the tiles per block (sized from the
// L2 cache read at run time), and the workspace.
struct Conv2dWinogradPlan {
  int64_t Cp = 0, Mb = 0;            // channels rounded to kWinoCB; output panels
  int64_t tiles_h = 0, tiles_w = 0;  // ceil(OH / 2), ceil(OW / 2)
  int64_t Hp = 0, Wp = 0;            // padded input rows, columns
  int64_t image_floats = 0;          // one image's padded, channel-blocked input
  int64_t group_images = 1;          // images whose tiles are transformed and multiplied together
  int64_t block_tiles = 0;           // tiles per block (a multiple of kWinoTileGroup)
  int64_t nthreads = 1;              // threads the per-thread buffers are sized for
  int64_t chunk_tiles = 0;           // at most this many tiles per GEMM task
  int64_t xb_floats = 0, v_floats = 0;  // the workspace's parts (64-byte multiples)
  int64_t m_floats = 0;                 // per thread
  int64_t workspace_floats = 0;         // xb + V + nthreads * M
};

// Tiles per register block of the GEMM microkernel, for every variant (the AVX-512 kernel's 6
// tiles x 4 vectors of 16 channels; the 8-lane variants run it as 2 x 3 tiles x 4 vectors of 8).
constexpr int kWinoTileGroup = 6;

// The plan for a shape conv2d_winograd_applies() to, run on `nthreads` threads. Throws
// std::invalid_argument if the workspace would not fit in memory.
void conv2d_winograd_plan(const Conv2dShape& s, int64_t nthreads, Conv2dWinogradPlan& g);

// Packed weights (see above): their float count, and the packing of (M, C, 3, 3) contiguous
// float32 weights.
int64_t conv2d_winograd_packed_floats(const Conv2dShape& s);
void conv2d_winograd_pack(const Conv2dShape& s, const float* w, float* packed);

// Testing hook: tiles per block (rounded up to kWinoTileGroup) instead of the L2-sized count;
// 0 restores it. Lets tests run the many-block and many-chunk paths at small sizes.
void set_winograd_block_tiles(int64_t tiles);

// The L2 cache per core in bytes (sysconf, else 1 MiB), read once.
int64_t l2_cache_bytes();

}  // namespace mmfast
