// CUDA 2-D convolution (ONNX Conv semantics, cross-correlation), NCHW in and out.
//
// x (N, C, H, W), w (M, C/groups, KH, KW), bias (M,) or null, y (N, M, OH, OW): all dense
// (C-contiguous) device buffers of one dtype (f32, f16 or bf16); accumulation in float32.
// OH = (H + pad_top + pad_bottom - dil_h*(KH-1) - 1) / stride_h + 1 (likewise OW); the caller
// passes OH/OW and has checked them (> 0) and every other argument.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda/dtype.h"

namespace mmfast::cuda {

struct Conv2dArgs {
  const void* x = nullptr;
  const void* w = nullptr;
  const void* bias = nullptr;  // may be null
  void* y = nullptr;
  int N = 0, C = 0, H = 0, W = 0;
  int M = 0, KH = 0, KW = 0;
  int OH = 0, OW = 0;
  int stride_h = 1, stride_w = 1;
  int dil_h = 1, dil_w = 1;
  int pad_top = 0, pad_left = 0;  // bottom/right pads are implied by OH/OW
  int groups = 1;
  bool relu = false;
  DType dtype = DType::f32;
  // Scratch space the caller allocates (with its own allocator, on the same device) of at
  // least conv2d_workspace_bytes(args) bytes, 256-byte aligned; null when that is 0.
  void* workspace = nullptr;
};

std::size_t conv2d_workspace_bytes(const Conv2dArgs& a);

// Enqueues the convolution on `stream` (asynchronous). Throws std::runtime_error on a CUDA
// error or an argument the kernels cannot take.
void conv2d(const Conv2dArgs& a, cudaStream_t stream);

}  // namespace mmfast::cuda
