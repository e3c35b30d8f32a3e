// Python bindings of the CUDA module mmfast._C_cuda, imported lazily by mmfast._cuda so a
// GPU-less process never loads it unless asked. (The CPU module's bindings are csrc/bindings.cpp.)
//
// The kernels take raw device pointers: mmfast/_cuda_ops.py checks the arrays (torch CUDA
// tensors or CuPy arrays), allocates outputs and workspaces with the caller's framework and
// passes the caller's current stream, so the work is ordered with the caller's own.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/attention_cuda.h"
#include "cuda/conv2d_cuda.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_status.h"

namespace py = pybind11;
using mmfast::cuda::DType;

namespace {

// Makes `device` current for the scope (kernels launch on the current device) and restores the
// caller's device after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    MMFAST_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) MMFAST_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() {
    if (previous_ >= 0) cudaSetDevice(previous_);  // best effort: destructors must not throw
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

DType dtype_from_code(int code) {
  if (code < 0 || code > 2) throw py::value_error("dtype: unknown code " + std::to_string(code));
  return static_cast<DType>(code);
}

template <typename T>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);  // NOLINT: addresses arrive as Python ints
}

mmfast::cuda::Conv2dArgs conv_args(std::uintptr_t x, std::uintptr_t w, std::uintptr_t bias,
                                   std::uintptr_t y, const std::vector<int>& geom, bool relu,
                                   int dtype) {
  // geom: N, C, H, W, M, KH, KW, OH, OW, stride_h, stride_w, dil_h, dil_w, pad_top, pad_left,
  // groups
  if (geom.size() != 16) throw py::value_error("geom: expected 16 integers");
  mmfast::cuda::Conv2dArgs a;
  a.x = ptr<const void>(x);
  a.w = ptr<const void>(w);
  a.bias = ptr<const void>(bias);
  a.y = ptr<void>(y);
  a.N = geom[0];
  a.C = geom[1];
  a.H = geom[2];
  a.W = geom[3];
  a.M = geom[4];
  a.KH = geom[5];
  a.KW = geom[6];
  a.OH = geom[7];
  a.OW = geom[8];
  a.stride_h = geom[9];
  a.stride_w = geom[10];
  a.dil_h = geom[11];
  a.dil_w = geom[12];
  a.pad_top = geom[13];
  a.pad_left = geom[14];
  a.groups = geom[15];
  a.relu = relu;
  a.dtype = dtype_from_code(dtype);
  return a;
}

}  // namespace

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

  m.def(
      "attention",
      [](std::uintptr_t q, std::uintptr_t k, std::uintptr_t v, std::uintptr_t o, std::uintptr_t lse,
         std::uintptr_t mask, int mask_kind, std::array<int64_t, 3> q_stride,
         std::array<int64_t, 3> k_stride, std::array<int64_t, 3> v_stride,
         std::array<int64_t, 3> o_stride, std::array<int64_t, 4> mask_stride,
         std::array<int, 7> dims, bool causal, int64_t causal_offset, float scale, float softcap,
         int dtype, int device, std::uintptr_t stream) {
        if (mask_kind < 0 || mask_kind > 2) throw py::value_error("mask_kind: expected 0, 1 or 2");
        mmfast::cuda::AttentionArgs a;
        a.q = ptr<const void>(q);
        a.k = ptr<const void>(k);
        a.v = ptr<const void>(v);
        a.o = ptr<void>(o);
        a.lse = ptr<float>(lse);
        a.mask = ptr<const void>(mask);
        a.mask_kind = static_cast<mmfast::cuda::MaskKind>(mask_kind);
        for (int i = 0; i < 3; ++i) {
          a.q_stride[i] = q_stride[i];
          a.k_stride[i] = k_stride[i];
          a.v_stride[i] = v_stride[i];
          a.o_stride[i] = o_stride[i];
        }
        for (int i = 0; i < 4; ++i) a.mask_stride[i] = mask_stride[i];
        a.B = dims[0];
        a.Hq = dims[1];
        a.Hkv = dims[2];
        a.Lq = dims[3];
        a.Lk = dims[4];
        a.D = dims[5];
        a.Dv = dims[6];
        a.causal = causal;
        a.causal_offset = causal_offset;
        a.scale = scale;
        a.softcap = softcap;
        a.dtype = dtype_from_code(dtype);
        py::gil_scoped_release release;
        DeviceGuard guard(device);
        mmfast::cuda::attention(a, ptr<CUstream_st>(stream));
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("o"), py::arg("lse"), py::arg("mask"),
      py::arg("mask_kind"), py::arg("q_stride"), py::arg("k_stride"), py::arg("v_stride"),
      py::arg("o_stride"), py::arg("mask_stride"), py::arg("dims"), py::arg("causal"),
      py::arg("causal_offset"), py::arg("scale"), py::arg("softcap"), py::arg("dtype"),
      py::arg("device"), py::arg("stream"),
      "Enqueue fused attention on `stream` (device pointers; dims = B, Hq, Hkv, Lq, Lk, D, Dv).");

  m.def(
      "conv2d_workspace_bytes",
      [](const std::vector<int>& geom, int dtype, int device) {
        const mmfast::cuda::Conv2dArgs a = conv_args(0, 0, 0, 0, geom, false, dtype);
        DeviceGuard guard(device);  // the plan (split-K or not) depends on the device's SMs
        return mmfast::cuda::conv2d_workspace_bytes(a);
      },
      py::arg("geom"), py::arg("dtype"), py::arg("device"),
      "Scratch bytes conv2d needs for this geometry on `device`.");
  m.def(
      "conv2d",
      [](std::uintptr_t x, std::uintptr_t w, std::uintptr_t bias, std::uintptr_t y,
         std::uintptr_t workspace, std::size_t workspace_bytes, const std::vector<int>& geom,
         bool relu, int dtype, int device, std::uintptr_t stream) {
        mmfast::cuda::Conv2dArgs a = conv_args(x, w, bias, y, geom, relu, dtype);
        a.workspace = ptr<void>(workspace);
        py::gil_scoped_release release;
        DeviceGuard guard(device);
        // A workspace sized elsewhere (another device, another geometry) must not be overrun.
        const std::size_t need = mmfast::cuda::conv2d_workspace_bytes(a);
        if (workspace_bytes < need || (need > 0 && workspace == 0))
          throw std::invalid_argument("workspace: " + std::to_string(workspace_bytes) +
                                      " bytes given, " + std::to_string(need) + " needed");
        mmfast::cuda::conv2d(a, ptr<CUstream_st>(stream));
      },
      py::arg("x"), py::arg("w"), py::arg("bias"), py::arg("y"), py::arg("workspace"),
      py::arg("workspace_bytes"), py::arg("geom"), py::arg("relu"), py::arg("dtype"),
      py::arg("device"), py::arg("stream"),
      "Enqueue a 2-D convolution on `stream` (device pointers, NCHW; geom as in "
      "conv2d_workspace_bytes: N, C, H, W, M, KH, KW, OH, OW, stride_h, stride_w, dil_h, dil_w, "
      "pad_top, pad_left, groups).");
}
