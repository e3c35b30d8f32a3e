// Element types the CUDA kernels take (the codes travel through the Python binding).
#pragma once

namespace mmfast::cuda {

enum class DType : int { f32 = 0, f16 = 1, bf16 = 2 };

}  // namespace mmfast::cuda
