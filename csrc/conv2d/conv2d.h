// 2-D convolution, ONNX Conv semantics (cross-correlation), NCHW: the one parameter struct
// shared by the CPU kernel (conv2d_cpu.cpp), the CUDA launcher (conv2d_cuda.cu) and both
// bindings, its limits, and the check every caller runs before a kernel reads the struct.
//
//   y[n, g*Mg + m, oh, ow] = bias[g*Mg + m]
//       + sum_{c < Cg, kh, kw} w[g*Mg + m, c, kh, kw]
//                              * xpad[n, g*Cg + c, oh*stride_h + kh*dilation_h,
//                                     ow*stride_w + kw*dilation_w]
//   (Cg = C / groups, Mg = M / groups; xpad is x with the pads of zeros; then ReLU if asked)
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/device.h"

namespace mmfast {

// Filters of up to this many taps (KH * KW: a 16x16 kernel) are supported on every device; the
// CPU plan keeps a fixed table of tap offsets.
constexpr int64_t kConvMaxTaps = 256;

struct Conv2dShape {
  int64_t N = 0, C = 0, H = 0, W = 0;  // input x (N, C, H, W)
  int64_t M = 0, KH = 0, KW = 0;       // weight (M, C / groups, KH, KW)
  int64_t stride_h = 1, stride_w = 1;
  int64_t dilation_h = 1, dilation_w = 1;
  int64_t pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;  // ONNX pads (begin, end)
  int64_t groups = 1;
  int64_t OH = 0, OW = 0;  // output y (N, M, OH, OW), from conv2d_output_size()
};

// OH = (H + pad_top + pad_bottom - dilation_h * (KH - 1) - 1) / stride_h + 1, likewise OW.
// Fills s.OH and s.OW and returns true; false (and OH = OW = 0) if the dilated kernel is larger
// than the padded input, i.e. the output would be empty. Expects a shape check_conv2d_shape()
// accepts (no overflow).
bool conv2d_output_size(Conv2dShape& s);

// Element strides of an (N, C, H, W) tensor.
struct NchwStrides {
  int64_t n = 0, c = 0, h = 0, w = 0;
};

struct Conv2dParams {
  Conv2dShape shape;
  DType dtype = DType::f32;  // of x, weight, bias, y (the CPU kernel takes f32 only)
  const void* x = nullptr;   // (N, C, H, W); any strides on the CPU, C-contiguous on CUDA
  NchwStrides x_stride;
  // CUDA: (M, C / groups, KH, KW), C-contiguous. CPU: packed once into panels ("rows" layout,
  // see conv2d_cpu.h), and optionally also the "cols" layout in weight_cols.
  const void* weight = nullptr;
  const void* weight_cols = nullptr;
  const void* bias = nullptr;  // (M,) or null
  void* y = nullptr;           // (N, M, OH, OW); any strides on the CPU, C-contiguous on CUDA
  NchwStrides y_stride;
  bool relu = false;  // fused ReLU after the bias (NaN stays NaN)
  // Scratch the caller provides, null when none: on CUDA cuda::conv2d_workspace_bytes() bytes
  // (256-byte aligned; the launcher checks workspace_bytes); on the CPU the plan's
  // workspace_floats (64-byte aligned; the binding allocates it from the plan it passes along).
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// Throws std::invalid_argument (ValueError in Python) naming the argument unless the shape is
// one the kernels can index without overflow: sizes >= 0, kernel, stride and dilation >= 1,
// pads >= 0, groups dividing C and M, at most kConvMaxTaps taps, the padded and dilated extents
// within int64. Does not require a non-empty output.
void check_conv2d_shape(const Conv2dShape& s);

// check_conv2d_shape(), then: OH, OW as conv2d_output_size() gives them and positive; the CPU
// kernel's float32; on CUDA C-contiguous x and y (the launcher adds its int32 index limits);
// non-null pointers where the sizes say something is read or written.
void check_conv2d(const Conv2dParams& p, Device device);

}  // namespace mmfast
