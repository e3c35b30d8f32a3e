// 2-D convolution (ONNX Conv semantics, NCHW, float32) as an implicit GEMM without im2col.
//
// The padded input of one image is laid out as "phase planes" (only the phases some tap reads
// are stored): for strides (sh, sw), plane
// (a, b) of channel c holds xpad[c, i*sh + a, j*sw + b] at [i, j], on a grid of Hq x Wq. Tap
// (kh, kw) of the filter then reads plane ((kh*dh) % sh, (kw*dw) % sw) shifted by
// ((kh*dh) / sh, (kw*dw) / sw): a *constant offset* in the flattened plane. So for a run of
// flattened "virtual" output positions p' = oh*Wq + ow, every GEMM operand row
// B[(c, kh, kw), p'] = planes[c*plane_stride + tap_offset[kh, kw] + p'] is contiguous: the
// microkernel loads it straight from the planes (no im2col matrix), and the columns with
// ow >= OW (the Wq - OW "garbage" columns) are computed and dropped. With stride 1 the planes
// are just the zero-padded image.
//
//   out[n, g*Mg + m, oh, ow] = bias[g*Mg + m]
//       + sum_{c < Cg, kh, kw} W[g*Mg + m, c, kh, kw] * xpad[n, g*Cg + c, oh*sh + kh*dh, ow*sw +
//       kw*dw]
#pragma once

#include <cstddef>
#include <cstdint>

namespace mmfast {

// Output channels per packed weight panel (the microkernel's register rows); the same for
// every variant so that packed weights do not depend on the CPU variant.
constexpr int kConvMR = 8;
// Upper bound of the microkernel's columns (AVX-512: 3 vectors of 16); sizes the slack.
constexpr int kConvMaxNR = 48;
// Taps up to this many are handled (a 16x16 kernel); larger filters are rejected up front.
constexpr int kConvMaxTaps = 256;
// Output channels per panel of the channel-vectorised layout (AVX-512 path for small images:
// 8 output positions x 3 vectors of 16 channels), see conv2d.cpp.
constexpr int kConvNC = 48;

struct Conv2dShape {
  int64_t N = 0, C = 0, H = 0, W = 0;  // input
  int64_t M = 0;                       // output channels
  int64_t KH = 0, KW = 0;
  int64_t SH = 1, SW = 1, DH = 1, DW = 1;
  int64_t PT = 0, PL = 0, PB = 0, PR = 0;  // pads: top, left, bottom, right (ONNX begin/end)
  int64_t groups = 1;
};

// Derived sizes; computed once by conv2d_geometry() (a single TU compiled for the baseline).
struct Conv2dGeometry {
  int64_t Cg = 0, Mg = 0;  // channels per group: input, output
  int64_t OH = 0, OW = 0;
  int64_t Hq = 0, Wq = 0;    // phase-plane grid
  int64_t phase_stride = 0;  // Hq * Wq
  int64_t nphases = 0;       // phases some tap reads (1x1 stride 2: only (0, 0))
  int64_t phase_a[kConvMaxTaps] = {}, phase_b[kConvMaxTaps] = {};  // slot -> (row, col) phase
  int64_t plane_stride = 0;               // floats between channels in the planes (nphases*Hq*Wq)
  int64_t virtual_cols = 0;               // OH * Wq: flattened virtual output positions
  int64_t planes_floats = 0;              // floats for one image's planes, slack included
  int64_t channel_floats = 0;             // floats for one channel's planes + slack, 64B-rounded
  int64_t ntaps = 0;                      // KH * KW
  int64_t tap_offset[kConvMaxTaps] = {};  // (kh, kw) -> offset in a channel's planes
  int64_t m_blocks = 0;                   // ceil(Mg / kConvMR) panels per group
  bool depthwise = false;                 // Cg == 1: per-channel stencil instead of a GEMM
};

// Fills `g` from `s`; returns false (and leaves `g` partial) if the output would be empty.
bool conv2d_geometry(const Conv2dShape& s, Conv2dGeometry& g);

// Packed weights, two layouts (both CPU-independent; k = (c, kh, kw) in that order, output
// channels past Mg zero):
//  - rows: per group, per panel of kConvMR output channels, K = Cg*KH*KW rows of kConvMR
//    floats ([k][m]) — broadcast operand of the spatially vectorised GEMM;
//  - cols: per group, per panel of kConvNC output channels, K rows of kConvNC floats — vector
//    operand of the channel-vectorised GEMM (AVX-512, small images).
int64_t conv2d_packed_floats(const Conv2dShape& s, int panel);
void conv2d_pack_weights(const Conv2dShape& s, int panel,
                         const float* w /* (M, Cg, KH, KW) contiguous */, float* packed);

// Images whose planes the channel-vectorised GEMM fills and multiplies in one go (one GEMM
// with the positions of all of them: whole position blocks, every weight block reused across
// images, more tasks to balance the threads); capped so the planes stay ~8 MB.
int64_t conv2d_batch_images(const Conv2dGeometry& g, int64_t n);

// Workspace floats conv2d needs with `nthreads` threads and `batch_images` images batched
// (planes of that many images, or one channel's planes per thread for depthwise convolution).
int64_t conv2d_workspace_floats(const Conv2dGeometry& g, int64_t nthreads, int64_t batch_images);

struct Conv2dParams {
  Conv2dShape shape;
  Conv2dGeometry geom;
  const float* x = nullptr;  // (N, C, H, W) with strides in elements
  int64_t xs_n = 0, xs_c = 0, xs_h = 0, xs_w = 0;
  const float* packed_w = nullptr;       // "rows" layout (panel kConvMR)
  const float* packed_w_cols = nullptr;  // "cols" layout (panel kConvNC)
  const float* bias = nullptr;           // (M,) or null
  float* y = nullptr;                    // (N, M, OH, OW) with strides in elements
  int64_t ys_n = 0, ys_c = 0, ys_h = 0, ys_w = 0;
  bool relu = false;
  float* workspace = nullptr;  // conv2d_workspace_floats() floats, 64-byte aligned
  int64_t nthreads = 1;        // threads the workspace was sized for
  int64_t batch_images = 1;    // images the workspace holds planes for (channel GEMM path)
  int path = 0;                // 0: pick by lane use; 1: spatial GEMM; 2: channel GEMM (tests)
};

}  // namespace mmfast
