#include <cuda_runtime.h>

#include "cuda/cuda_status.h"

namespace mmfast::cuda {

CudaStatus query_status() {
  CudaStatus s;
  cudaRuntimeGetVersion(&s.runtime_version);
  if (cudaDriverGetVersion(&s.driver_version) != cudaSuccess) s.driver_version = 0;
  const cudaError_t err = cudaGetDeviceCount(&s.device_count);
  if (err != cudaSuccess) {
    s.device_count = 0;
    s.error = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return s;
  }
  if (s.device_count == 0) {
    s.error = "no CUDA device found";
    return s;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) {
    s.device0_name = prop.name;
    s.device0_cc_major = prop.major;
    s.device0_cc_minor = prop.minor;
  }
  return s;
}

}  // namespace mmfast::cuda
