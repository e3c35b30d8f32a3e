// The CPU convolution: an implicit GEMM without im2col (conv2d_cpu.cpp), and the plan and weight
// packing it runs with (conv2d_cpu_plan.cpp, compiled once for the baseline ISA). The op's
// parameters and semantics are in conv2d/conv2d.h.
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
// are just the zero-padded image. Where whole vectors along each output row waste fewer lanes
// than the garbage columns (OW = 112, Wq = 115: 7 full vectors a row), the kernel takes its
// tiles that way instead (conv2d_cpu.cpp, "row tiles"): each vector's B row is still one
// contiguous run of a plane, at its own offset.
#pragma once

#include <cstdint>

#include "conv2d/conv2d.h"

namespace mmfast {

// Output channels per packed weight panel (the microkernel's register rows); the same for
// every variant so that packed weights do not depend on the CPU variant.
constexpr int kConvMR = 8;
// Upper bound of the microkernel's columns (AVX-512: 3 vectors of 16); sizes the slack.
constexpr int kConvMaxNR = 48;
// Output channels per panel of the channel-vectorised layout (AVX-512 path for small images:
// 6 output positions x 4 vectors of 16 channels; 64 divides the usual channel counts, where
// 48 left a 2-vector tail panel on 128, 256, 512), see conv2d_cpu.cpp.
constexpr int kConvNC = 64;

// The CPU workspace (the padded input's phase planes) may be this many times the images' own
// floats, or kConvMinWorkspaceCap bytes, whichever is more; conv2d_cpu_plan() refuses more.
constexpr int64_t kConvWorkspaceRatio = 16;
constexpr int64_t kConvMinWorkspaceCap = int64_t{1} << 30;

// How one call runs on the CPU: the phase-plane geometry, the threads and images the workspace
// is sized for, the GEMM path. Made once per call by conv2d_cpu_plan() (baseline TU).
struct Conv2dCpuPlan {
  int64_t Cg = 0, Mg = 0;    // channels per group: input, output
  int64_t Hq = 0, Wq = 0;    // phase-plane grid
  int64_t phase_stride = 0;  // Hq * Wq
  int64_t nphases = 0;       // phases some tap reads (1x1 stride 2: only (0, 0))
  int64_t phase_a[kConvMaxTaps] = {}, phase_b[kConvMaxTaps] = {};  // slot -> (row, col) phase
  // slot -> the plane columns [j0, j1) that read the input (column j reads input column
  // j*stride_w + b - pad_left); the others are padding.
  int64_t phase_j0[kConvMaxTaps] = {}, phase_j1[kConvMaxTaps] = {};
  int64_t plane_stride = 0;               // floats between channels in the planes (nphases*Hq*Wq)
  int64_t virtual_cols = 0;               // OH * Wq: flattened virtual output positions
  int64_t planes_floats = 0;              // floats for one image's planes, slack included
  int64_t channel_floats = 0;             // floats for one channel's planes + slack, 64B-rounded
  int64_t ntaps = 0;                      // KH * KW
  int64_t tap_offset[kConvMaxTaps] = {};  // (kh, kw) -> offset in a channel's planes
  int64_t m_blocks = 0;                   // ceil(Mg / kConvMR) panels per group
  bool depthwise = false;                 // Cg == 1: per-channel stencil instead of a GEMM
  int64_t nthreads = 1;                   // threads the workspace is sized for
  int64_t batch_images = 1;      // images the workspace holds planes for (channel GEMM path)
  int path = 0;                  // 0: pick by lane use; 1: spatial GEMM; 2: channel GEMM (tests)
  int64_t workspace_floats = 0;  // what the kernel needs in Conv2dParams::workspace
};

// The plan of a call with `nthreads` threads, for a shape check_conv2d() accepted (so
// OH, OW >= 1); `have_cols`: the "cols" packing is there (the channel GEMM path is possible).
// Throws std::invalid_argument if the workspace would not fit in memory (an absurd padding or
// dilation).
void conv2d_cpu_plan(const Conv2dShape& s, int64_t nthreads, bool have_cols, int path,
                     Conv2dCpuPlan& g);

// Packed weights, two layouts (both CPU-independent; k = (c, kh, kw) in that order, output
// channels past Mg zero):
//  - rows: per group, per panel of kConvMR output channels, K = Cg*KH*KW rows of kConvMR
//    floats ([k][m]) — broadcast operand of the spatially vectorised GEMM;
//  - cols: per group, per panel of kConvNC output channels, K rows of kConvNC floats — vector
//    operand of the channel-vectorised GEMM (AVX-512, small images).
// Only the shape's C, M, KH, KW and groups are read.
int64_t conv2d_packed_floats(const Conv2dShape& s, int panel);
void conv2d_pack_weights(const Conv2dShape& s, int panel,
                         const float* w /* (M, Cg, KH, KW) contiguous */, float* packed);

}  // namespace mmfast
