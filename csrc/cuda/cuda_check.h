// Error checking for every CUDA runtime call and kernel launch. Failures throw
// std::runtime_error (pybind11 turns it into RuntimeError) naming the call, file and line:
// native code never exits or aborts the interpreter.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace mmfast::cuda {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* what, const char* file,
                                          int line) {
  throw std::runtime_error(std::string("CUDA error ") + cudaGetErrorName(err) + " (" +
                           cudaGetErrorString(err) + ") in " + what + " at " + file + ":" +
                           std::to_string(line));
}

}  // namespace mmfast::cuda

#define MMFAST_CUDA_CHECK(expr)                                                 \
  do {                                                                          \
    const cudaError_t mmfast_err_ = (expr);                                     \
    if (mmfast_err_ != cudaSuccess)                                             \
      ::mmfast::cuda::throw_cuda_error(mmfast_err_, #expr, __FILE__, __LINE__); \
  } while (0)

// After a <<<...>>> launch: configuration errors show up here (asynchronous faults surface at
// the caller's next synchronising call, as with every CUDA library).
#define MMFAST_CUDA_CHECK_LAUNCH(name) ::mmfast::cuda::check_launch_((name), __FILE__, __LINE__)

namespace mmfast::cuda {
inline void check_launch_(const char* name, const char* file, int line) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw_cuda_error(err, name, file, line);
}
}  // namespace mmfast::cuda
