// CUDA 2-D convolution over the shared Conv2dParams (conv2d/conv2d.h): x, weight, bias, y are
// C-contiguous device buffers of params.dtype (f32: exact SIMT; f16/bf16: tensor cores; float32
// accumulation everywhere, one rounding of the output).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "conv2d/conv2d.h"

namespace mmfast::cuda {

// Scratch bytes conv2d() needs for this shape and dtype on the current device (the split-K plan
// depends on its SM count); 0 when none. Throws std::invalid_argument for a shape
// check_conv2d_shape() refuses.
std::size_t conv2d_workspace_bytes(const Conv2dShape& shape, DType dtype);

// Checks `params` (check_conv2d with Device::cuda, and a workspace of at least
// conv2d_workspace_bytes(): std::invalid_argument naming the argument) and enqueues the
// convolution on `stream` (asynchronous). Throws std::runtime_error on a CUDA error.
void conv2d(const Conv2dParams& params, cudaStream_t stream);

}  // namespace mmfast::cuda
