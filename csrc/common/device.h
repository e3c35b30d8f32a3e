// What every op's parameter struct says about where it runs: the element types the kernels
// take, the device, and the CUDA limit the launchers' grids obey.
#pragma once

#include <cstdint>

namespace mmfast {

// Element types of the tensors an op reads and writes (the codes cross the Python binding as
// the enum mmfast._C_cuda.DType).
enum class DType : int { f32 = 0, f16 = 1, bf16 = 2 };

enum class Device : int { cpu = 0, cuda = 1 };

// gridDim.y and gridDim.z are at most this on every CUDA GPU: attention puts heads and batch
// there (so each must fit), the convolution splits its groups into launches of this many.
constexpr int64_t kCudaMaxGridYZ = 65535;

}  // namespace mmfast
