// Python bindings of the CUDA module mmfast._C_cuda, imported lazily by mmfast._cuda so a
// GPU-less process never loads it unless asked. (The CPU module's bindings are csrc/bindings.cpp.)
//
// The kernels take raw device pointers: mmfast/ops/ checks the arrays (torch CUDA
// tensors or CuPy arrays), allocates outputs and workspaces with the caller's framework and
// passes the caller's current stream, so the work is ordered with the caller's own.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "attention/attention_cuda.h"
#include "conv2d/conv2d_cuda.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_status.h"

namespace py = pybind11;

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

template <typename T>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);  // NOLINT: addresses arrive as Python ints
}

using Int3 = std::array<int64_t, 3>;
using Int4 = std::array<int64_t, 4>;

mmfast::RowStrides row_strides(const Int3& s) { return {s[0], s[1], s[2]}; }
mmfast::NchwStrides nchw_strides(const Int4& s) { return {s[0], s[1], s[2], s[3]}; }

// The shape as Python names it, checked (check_conv2d_shape): x (N, C, H, W), weight (M, C/groups,
// KH, KW), out (N, M, OH, OW), stride / dilation (h, w), pads (top, left, bottom, right).
mmfast::Conv2dShape conv_shape(const Int4& x_shape, const Int4& weight_shape, const Int4& out_shape,
                               const std::array<int64_t, 2>& stride,
                               const std::array<int64_t, 2>& dilation, const Int4& pads,
                               int64_t groups) {
  mmfast::Conv2dShape s;
  s.N = x_shape[0], s.C = x_shape[1], s.H = x_shape[2], s.W = x_shape[3];
  s.M = weight_shape[0], s.KH = weight_shape[2], s.KW = weight_shape[3];
  s.OH = out_shape[2], s.OW = out_shape[3];
  s.stride_h = stride[0], s.stride_w = stride[1];
  s.dilation_h = dilation[0], s.dilation_w = dilation[1];
  s.pad_top = pads[0], s.pad_left = pads[1], s.pad_bottom = pads[2], s.pad_right = pads[3];
  s.groups = groups;
  mmfast::check_conv2d_shape(s);
  // The shapes of the three tensors must agree with the one shape the struct holds.
  if (weight_shape[1] != s.C / groups)
    throw std::invalid_argument("weight: (M, C/groups, KH, KW) does not match x's channels");
  mmfast::Conv2dShape want = s;
  if (!mmfast::conv2d_output_size(want) || out_shape[0] != s.N || out_shape[1] != s.M ||
      want.OH != s.OH || want.OW != s.OW)
    throw std::invalid_argument("out: shape does not match (N, M, OH, OW) = (" +
                                std::to_string(s.N) + ", " + std::to_string(s.M) + ", " +
                                std::to_string(want.OH) + ", " + std::to_string(want.OW) + ")");
  return s;
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

  py::enum_<mmfast::DType>(m, "DType", "Element type of an op's tensors.")
      .value("f32", mmfast::DType::f32)
      .value("f16", mmfast::DType::f16)
      .value("bf16", mmfast::DType::bf16);
  py::enum_<mmfast::MaskKind>(m, "MaskKind", "What attention's mask holds.")
      .value("none", mmfast::MaskKind::none)
      .value("boolean", mmfast::MaskKind::boolean)
      .value("additive", mmfast::MaskKind::additive);

  // The fields of mmfast::AttentionParams (attention/attention.h), by name; device pointers as
  // ints. The checks are check_attention's.
  m.def(
      "attention",
      [](std::uintptr_t q, std::uintptr_t k, std::uintptr_t v, std::uintptr_t out,
         std::uintptr_t lse, std::uintptr_t mask, mmfast::MaskKind mask_kind, mmfast::DType dtype,
         int64_t batch, int64_t q_heads, int64_t kv_heads, int64_t q_len, int64_t kv_len,
         int64_t head_dim, int64_t v_head_dim, const Int3& q_stride, const Int3& k_stride,
         const Int3& v_stride, const Int3& out_stride, const Int4& mask_stride, float scale,
         float softcap, bool causal, int64_t causal_offset, int device, std::uintptr_t stream) {
        mmfast::AttentionParams p;
        p.q = ptr<const void>(q);
        p.k = ptr<const void>(k);
        p.v = ptr<const void>(v);
        p.out = ptr<void>(out);
        p.lse = ptr<float>(lse);
        p.mask = ptr<const void>(mask);
        p.mask_kind = mask_kind;
        p.dtype = dtype;
        p.batch = batch, p.q_heads = q_heads, p.kv_heads = kv_heads;
        p.q_len = q_len, p.kv_len = kv_len, p.head_dim = head_dim, p.v_head_dim = v_head_dim;
        p.q_stride = row_strides(q_stride);
        p.k_stride = row_strides(k_stride);
        p.v_stride = row_strides(v_stride);
        p.out_stride = row_strides(out_stride);
        p.mask_stride = {mask_stride[0], mask_stride[1], mask_stride[2], mask_stride[3]};
        p.scale = scale;
        p.softcap = softcap;
        p.causal = causal;
        p.causal_offset = causal_offset;
        // Bad arguments are reported before the device is touched (the launcher checks again).
        mmfast::check_attention(p, mmfast::Device::cuda);
        py::gil_scoped_release release;
        DeviceGuard guard(device);
        mmfast::cuda::attention(p, ptr<CUstream_st>(stream));
      },
      py::kw_only(), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"),
      py::arg("mask"), py::arg("mask_kind"), py::arg("dtype"), py::arg("batch"), py::arg("q_heads"),
      py::arg("kv_heads"), py::arg("q_len"), py::arg("kv_len"), py::arg("head_dim"),
      py::arg("v_head_dim"), py::arg("q_stride"), py::arg("k_stride"), py::arg("v_stride"),
      py::arg("out_stride"), py::arg("mask_stride"), py::arg("scale"), py::arg("softcap"),
      py::arg("causal"), py::arg("causal_offset"), py::arg("device"), py::arg("stream"),
      "Enqueue fused attention on `stream` (device pointers as ints; the fields of "
      "AttentionParams; strides in elements over (batch, head, row), the mask's over (batch, "
      "head, query, key)).");

  m.def(
      "conv2d_workspace_bytes",
      [](const Int4& x_shape, const Int4& weight_shape, const Int4& out_shape,
         const std::array<int64_t, 2>& stride, const std::array<int64_t, 2>& dilation,
         const Int4& pads, int64_t groups, mmfast::DType dtype, int device) {
        const mmfast::Conv2dShape s =
            conv_shape(x_shape, weight_shape, out_shape, stride, dilation, pads, groups);
        DeviceGuard guard(device);  // the plan (split-K or not) depends on the device's SMs
        return mmfast::cuda::conv2d_workspace_bytes(s, dtype);
      },
      py::kw_only(), py::arg("x_shape"), py::arg("weight_shape"), py::arg("out_shape"),
      py::arg("stride"), py::arg("dilation"), py::arg("pads"), py::arg("groups"), py::arg("dtype"),
      py::arg("device"), "Scratch bytes conv2d needs for this shape on `device`.");

  // The fields of mmfast::Conv2dParams (conv2d/conv2d.h), by name; device pointers as ints.
  m.def(
      "conv2d",
      [](std::uintptr_t x, std::uintptr_t weight, std::uintptr_t bias, std::uintptr_t out,
         std::uintptr_t workspace, std::size_t workspace_bytes, const Int4& x_shape,
         const Int4& weight_shape, const Int4& out_shape, const Int4& x_stride,
         const Int4& out_stride, const std::array<int64_t, 2>& stride,
         const std::array<int64_t, 2>& dilation, const Int4& pads, int64_t groups, bool relu,
         mmfast::DType dtype, int device, std::uintptr_t stream) {
        mmfast::Conv2dParams p;
        p.shape = conv_shape(x_shape, weight_shape, out_shape, stride, dilation, pads, groups);
        p.dtype = dtype;
        p.x = ptr<const void>(x);
        p.x_stride = nchw_strides(x_stride);
        p.weight = ptr<const void>(weight);
        p.bias = ptr<const void>(bias);
        p.y = ptr<void>(out);
        p.y_stride = nchw_strides(out_stride);
        p.relu = relu;
        p.workspace = ptr<void>(workspace);
        p.workspace_bytes = workspace_bytes;
        // Bad arguments are reported before the device is touched (the launcher checks again).
        mmfast::check_conv2d(p, mmfast::Device::cuda);
        py::gil_scoped_release release;
        DeviceGuard guard(device);
        mmfast::cuda::conv2d(p, ptr<CUstream_st>(stream));
      },
      py::kw_only(), py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("out"),
      py::arg("workspace"), py::arg("workspace_bytes"), py::arg("x_shape"), py::arg("weight_shape"),
      py::arg("out_shape"), py::arg("x_stride"), py::arg("out_stride"), py::arg("stride"),
      py::arg("dilation"), py::arg("pads"), py::arg("groups"), py::arg("relu"), py::arg("dtype"),
      py::arg("device"), py::arg("stream"),
      "Enqueue a 2-D convolution on `stream` (device pointers as ints, NCHW, C-contiguous; "
      "shapes as Python gives them; pads (top, left, bottom, right)).");
}
