// What the CUDA runtime sees on this machine. Linked against the static CUDA runtime, which
// loads the driver (libcuda.so.1) only on the first call: the module imports on machines with
// no GPU, no driver and no CUDA libraries, and then reports why CUDA is unavailable.
#pragma once

#include <string>

namespace mmfast::cuda {

struct CudaStatus {
  int runtime_version = 0;  // e.g. 13000
  int driver_version = 0;   // 0 when no driver is installed
  int device_count = 0;
  std::string error;         // empty when at least one device is usable
  std::string device0_name;  // "" without a device
  int device0_cc_major = 0;
  int device0_cc_minor = 0;
};

CudaStatus query_status();

}  // namespace mmfast::cuda
