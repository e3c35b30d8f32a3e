// Python bindings of the CUDA module mmfast._C_cuda, imported lazily by mmfast._cuda so a
// GPU-less process never loads it unless asked. (The CPU module's bindings are csrc/bindings.cpp.)
#include <pybind11/pybind11.h>

#include "cuda/cuda_status.h"

namespace py = pybind11;

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "mmfast CUDA kernels (static CUDA runtime; imports without a GPU or driver)";
  m.def(
      "status",
      [] {
        mmfast::cuda::CudaStatus s;
        {
          py::gil_scoped_release release;  // the first call loads the driver: can take seconds
          s = mmfast::cuda::query_status();
        }
        py::dict d;
        d["runtime_version"] = s.runtime_version;
        d["driver_version"] = s.driver_version;
        d["device_count"] = s.device_count;
        d["error"] = s.error;
        d["device0_name"] = s.device0_name;
        d["device0_capability"] = py::make_tuple(s.device0_cc_major, s.device0_cc_minor);
        return d;
      },
      "CUDA runtime/driver versions, device count and, when unusable, why.");
}
