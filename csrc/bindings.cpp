// The only file of mmfast._C that knows Python: converts and checks arguments, releases the
// GIL, calls the kernels through the run-time dispatch table. Kernel code never sees pybind11.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "common/cpu_features.h"
#include "common/parallel.h"
#include "dispatch.h"

namespace py = pybind11;

namespace {

// Throws ValueError naming the argument (std::invalid_argument maps to ValueError).
#define MMFAST_CHECK(cond, msg)                                 \
  do {                                                          \
    if (!(cond)) throw std::invalid_argument(std::string(msg)); \
  } while (0)

// A 2-D float32 array whose last dimension is contiguous: rows may be strided.
void check_rows(const py::array& a, const char* name, bool writable) {
  const std::string n(name);
  MMFAST_CHECK(a.dtype().equal(py::dtype::of<float>()),
               n + ": expected float32, got " + std::string(py::str(a.dtype())));
  MMFAST_CHECK(a.ndim() == 2, n + ": expected 2 dimensions, got " + std::to_string(a.ndim()));
  MMFAST_CHECK(a.shape(1) <= 1 || a.strides(1) == static_cast<py::ssize_t>(sizeof(float)),
               n + ": the last dimension must be contiguous");
  MMFAST_CHECK(a.shape(0) <= 1 || a.strides(0) % static_cast<py::ssize_t>(sizeof(float)) == 0,
               n + ": row stride is not a multiple of 4 bytes");
  if (writable) MMFAST_CHECK(a.writeable(), n + ": array is read-only");
}

void softmax(const py::array& x, py::array out, bool log) {
  check_rows(x, "x", false);
  check_rows(out, "out", true);
  MMFAST_CHECK(out.shape(0) == x.shape(0) && out.shape(1) == x.shape(1),
               "out: shape does not match x");
  mmfast::SoftmaxParams p;
  p.x = static_cast<const float*>(x.data());
  p.y = static_cast<float*>(out.mutable_data());
  p.rows = x.shape(0);
  p.cols = x.shape(1);
  p.x_row_stride = x.shape(0) > 1 ? x.strides(0) / static_cast<py::ssize_t>(sizeof(float)) : 0;
  p.y_row_stride = out.shape(0) > 1 ? out.strides(0) / static_cast<py::ssize_t>(sizeof(float)) : 0;
  p.log = log;
  const mmfast::KernelTable& k = mmfast::kernels();
  py::gil_scoped_release release;
  k.softmax(p);
}

py::dict cpu_features_dict() {
  const mmfast::CpuFeatures& f = mmfast::cpu_features();
  py::dict d;
  d["sse2"] = f.sse2;
  d["avx"] = f.avx && f.os_avx;
  d["fma"] = f.fma;
  d["f16c"] = f.f16c;
  d["avx2"] = f.avx2 && f.os_avx;
  d["avx512f"] = f.avx512f && f.os_avx512;
  d["avx512bw"] = f.avx512bw && f.os_avx512;
  d["avx512dq"] = f.avx512dq && f.os_avx512;
  d["avx512vl"] = f.avx512vl && f.os_avx512;
  d["avx512_bf16"] = f.avx512_bf16 && f.os_avx512;
  d["avx512_vnni"] = f.avx512_vnni && f.os_avx512;
  d["amx_tile"] = f.amx_tile && f.os_amx;
  d["amx_bf16"] = f.amx_bf16 && f.os_amx;
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "mmfast native CPU kernels (use mmfast.ops, which checks and converts arguments)";

  m.def("softmax", &softmax, py::arg("x"), py::arg("out"), py::arg("log") = false,
        "Row-wise softmax (or log-softmax) of a 2-D float32 array into `out` (same shape).");

  m.def("cpu_features", &cpu_features_dict, "CPU features usable by this process.");
  m.def("compiled_variants", &mmfast::compiled_variants, "Kernel variants in this build.");
  m.def("runnable_variants", &mmfast::runnable_variants, "Compiled variants this CPU can run.");
  m.def(
      "active_variant", [] { return std::string(mmfast::kernels().name); },
      "The kernel variant in use.");
  m.def("set_variant", &mmfast::set_variant, py::arg("name"),
        "Use another compiled variant (ValueError if unknown or unsupported by this CPU).");
  m.def("get_num_threads", &mmfast::get_num_threads, "Threads the CPU kernels use.");
  m.def(
      "set_num_threads",
      [](int n) {
        MMFAST_CHECK(n >= 1, "n: must be >= 1, got " + std::to_string(n));
        mmfast::set_num_threads(n);
      },
      py::arg("n"), "Set the number of threads the CPU kernels use (n >= 1).");

#ifdef MMFAST_WITH_CUDA
  m.attr("cuda_built") = true;
#else
  m.attr("cuda_built") = false;
#endif
#if defined(__clang__)
  m.attr("compiler") = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  m.attr("compiler") = std::string("gcc ") + __VERSION__;
#else
  m.attr("compiler") = "unknown";
#endif
}
