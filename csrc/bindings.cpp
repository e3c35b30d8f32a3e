// The only file of mmfast._C that knows Python: converts and checks arguments, releases the
// GIL, calls the kernels through the run-time dispatch table. Kernel code never sees pybind11.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/cpu_features.h"
#include "common/parallel.h"
#include "common/workspace.h"
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

// conv2d's GEMM path: 0 auto, 1 spatial, 2 channel (a testing/benchmarking hook).
std::atomic<int> g_conv_path{0};

// Element strides of an array whose byte strides must be multiples of the item size.
int64_t elem_stride(const py::array& a, int dim, const std::string& name) {
  const py::ssize_t st = a.strides(dim);
  MMFAST_CHECK(st % static_cast<py::ssize_t>(sizeof(float)) == 0,
               name + ": strides must be multiples of 4 bytes");
  return static_cast<int64_t>(st / static_cast<py::ssize_t>(sizeof(float)));
}

void check_float32(const py::array& a, const std::string& name, py::ssize_t ndim) {
  MMFAST_CHECK(a.dtype().equal(py::dtype::of<float>()),
               name + ": expected float32, got " + std::string(py::str(a.dtype())));
  MMFAST_CHECK(a.ndim() == ndim, name + ": expected " + std::to_string(ndim) + " dimensions, got " +
                                     std::to_string(a.ndim()));
}

mmfast::Conv2dShape conv_shape(int64_t N, int64_t C, int64_t H, int64_t W, int64_t M, int64_t KH,
                               int64_t KW, const std::vector<int64_t>& stride,
                               const std::vector<int64_t>& dilation,
                               const std::vector<int64_t>& pads, int64_t groups) {
  MMFAST_CHECK(stride.size() == 2, "stride: expected 2 values");
  MMFAST_CHECK(dilation.size() == 2, "dilation: expected 2 values");
  MMFAST_CHECK(pads.size() == 4, "padding: expected 4 values (top, left, bottom, right)");
  MMFAST_CHECK(stride[0] >= 1 && stride[1] >= 1, "stride: must be positive");
  MMFAST_CHECK(dilation[0] >= 1 && dilation[1] >= 1, "dilation: must be positive");
  for (int64_t pd : pads) MMFAST_CHECK(pd >= 0, "padding: must be non-negative");
  MMFAST_CHECK(groups >= 1, "groups: must be positive");
  MMFAST_CHECK(C % groups == 0, "groups: must divide the input channels");
  MMFAST_CHECK(M % groups == 0, "groups: must divide the output channels");
  MMFAST_CHECK(KH >= 1 && KW >= 1, "weight: kernel size must be positive");
  MMFAST_CHECK(KH * KW <= mmfast::kConvMaxTaps, "weight: kernels of more than " +
                                                    std::to_string(mmfast::kConvMaxTaps) +
                                                    " taps are not supported");
  mmfast::Conv2dShape s;
  s.N = N, s.C = C, s.H = H, s.W = W, s.M = M, s.KH = KH, s.KW = KW;
  s.SH = stride[0], s.SW = stride[1], s.DH = dilation[0], s.DW = dilation[1];
  s.PT = pads[0], s.PL = pads[1], s.PB = pads[2], s.PR = pads[3];
  s.groups = groups;
  return s;
}

py::array conv2d_pack(const py::array& w, int64_t groups, int panel) {
  MMFAST_CHECK(panel == mmfast::kConvMR || panel == mmfast::kConvNC,
               "panel: expected " + std::to_string(mmfast::kConvMR) + " or " +
                   std::to_string(mmfast::kConvNC));
  check_float32(w, "weight", 4);
  MMFAST_CHECK(w.flags() & py::array::c_style, "weight: must be C-contiguous");
  MMFAST_CHECK(groups >= 1, "groups: must be positive");
  MMFAST_CHECK(w.shape(0) % groups == 0, "groups: must divide the output channels");
  const mmfast::Conv2dShape s = conv_shape(1, w.shape(1) * groups, 1, 1, w.shape(0), w.shape(2),
                                           w.shape(3), {1, 1}, {1, 1}, {0, 0, 0, 0}, groups);
  py::array_t<float> packed(static_cast<py::ssize_t>(mmfast::conv2d_packed_floats(s, panel)));
  const float* src = static_cast<const float*>(w.data());
  float* dst = packed.mutable_data();
  {
    py::gil_scoped_release release;
    mmfast::conv2d_pack_weights(s, panel, src, dst);
  }
  return packed;
}

void conv2d(const py::array& x, const py::array& packed, const py::object& packed_cols,
            const py::object& bias, py::array out, int64_t M, int64_t KH, int64_t KW,
            const std::vector<int64_t>& stride, const std::vector<int64_t>& dilation,
            const std::vector<int64_t>& pads, int64_t groups, bool relu) {
  check_float32(x, "x", 4);
  check_float32(out, "out", 4);
  MMFAST_CHECK(out.writeable(), "out: array is read-only");
  const mmfast::Conv2dShape s = conv_shape(x.shape(0), x.shape(1), x.shape(2), x.shape(3), M, KH,
                                           KW, stride, dilation, pads, groups);
  mmfast::Conv2dParams p;
  p.shape = s;
  MMFAST_CHECK(mmfast::conv2d_geometry(s, p.geom),
               "x: the (dilated) kernel is larger than the padded input: empty output");
  const mmfast::Conv2dGeometry& g = p.geom;
  MMFAST_CHECK(
      out.shape(0) == s.N && out.shape(1) == M && out.shape(2) == g.OH && out.shape(3) == g.OW,
      "out: shape does not match (N, M, OH, OW) = (" + std::to_string(s.N) + ", " +
          std::to_string(M) + ", " + std::to_string(g.OH) + ", " + std::to_string(g.OW) + ")");
  check_float32(packed, "packed", 1);
  MMFAST_CHECK(packed.flags() & py::array::c_style, "packed: must be contiguous");
  MMFAST_CHECK(packed.shape(0) == mmfast::conv2d_packed_floats(s, mmfast::kConvMR),
               "packed: size does not match the convolution's weights");
  if (!packed_cols.is_none()) {
    py::array pc = py::reinterpret_borrow<py::array>(packed_cols);
    check_float32(pc, "packed_cols", 1);
    MMFAST_CHECK(pc.flags() & py::array::c_style, "packed_cols: must be contiguous");
    MMFAST_CHECK(pc.shape(0) == mmfast::conv2d_packed_floats(s, mmfast::kConvNC),
                 "packed_cols: size does not match the convolution's weights");
    p.packed_w_cols = static_cast<const float*>(pc.data());
  }
  if (!bias.is_none()) {
    py::array b = py::reinterpret_borrow<py::array>(bias);
    check_float32(b, "bias", 1);
    MMFAST_CHECK(b.shape(0) == M, "bias: expected " + std::to_string(M) + " values");
    MMFAST_CHECK(b.shape(0) <= 1 || b.strides(0) == sizeof(float), "bias: must be contiguous");
    p.bias = static_cast<const float*>(b.data());
  }
  p.x = static_cast<const float*>(x.data());
  p.xs_n = elem_stride(x, 0, "x"), p.xs_c = elem_stride(x, 1, "x");
  p.xs_h = elem_stride(x, 2, "x"), p.xs_w = elem_stride(x, 3, "x");
  p.packed_w = static_cast<const float*>(packed.data());
  p.y = static_cast<float*>(out.mutable_data());
  p.ys_n = elem_stride(out, 0, "out"), p.ys_c = elem_stride(out, 1, "out");
  p.ys_h = elem_stride(out, 2, "out"), p.ys_w = elem_stride(out, 3, "out");
  p.relu = relu;
  p.path = g_conv_path.load();
  if (s.N == 0 || M == 0) return;
  p.nthreads = mmfast::get_num_threads();
  // Batching images only pays on the channel-vectorised path (weights packed for it).
  p.batch_images = p.packed_w_cols ? mmfast::conv2d_batch_images(g, s.N) : 1;
  p.workspace = mmfast::thread_workspace(
      static_cast<size_t>(mmfast::conv2d_workspace_floats(g, p.nthreads, p.batch_images)));
  const mmfast::KernelTable& k = mmfast::kernels();
  py::gil_scoped_release release;
  k.conv2d(p);
}

// q (B, Hq, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv), out (B, Hq, Lq, Dv) float32 with a
// contiguous last dimension; mask None or (B, Hq, Lq, Lk) float32 (added) or bool/uint8 (keep),
// any strides (0 = broadcast); lse None or (B, Hq, Lq) float32 with a contiguous last dim.
void attention(const py::array& q, const py::array& k, const py::array& v, py::array out,
               const py::object& mask, const py::object& lse, bool causal, int64_t causal_offset,
               double scale, double softcap) {
  const auto f32 = py::dtype::of<float>();
  // Checks dtype, ndim, 4-byte strides and a contiguous last dim; returns element strides.
  auto strides_of = [&f32](const py::array& a, const char* name, py::ssize_t ndim, int64_t* st) {
    const std::string n(name);
    MMFAST_CHECK(a.dtype().equal(f32),
                 n + ": expected float32, got " + std::string(py::str(a.dtype())));
    MMFAST_CHECK(a.ndim() == ndim, n + ": expected " + std::to_string(ndim) + " dimensions, got " +
                                       std::to_string(a.ndim()));
    for (py::ssize_t i = 0; i < ndim; ++i) {
      MMFAST_CHECK(a.strides(i) % 4 == 0, n + ": strides must be multiples of 4 bytes");
      st[i] = static_cast<int64_t>(a.strides(i) / 4);
    }
    MMFAST_CHECK(a.size() == 0 || a.shape(ndim - 1) <= 1 || st[ndim - 1] == 1,
                 n + ": the last dimension must be contiguous");
  };
  int64_t qs[4], ks[4], vs[4], os[4], ls[3] = {0, 0, 0}, ms[4] = {0, 0, 0, 0};
  strides_of(q, "q", 4, qs);
  strides_of(k, "k", 4, ks);
  strides_of(v, "v", 4, vs);
  strides_of(out, "out", 4, os);
  MMFAST_CHECK(out.writeable(), "out: array is read-only");
  const int64_t B = q.shape(0), Hq = q.shape(1), Lq = q.shape(2), D = q.shape(3);
  const int64_t Hkv = k.shape(1), Lk = k.shape(2), Dv = v.shape(3);
  MMFAST_CHECK(k.shape(0) == B && v.shape(0) == B, "k, v: batch size differs from q's");
  MMFAST_CHECK(Hkv >= 1 && Hq % Hkv == 0, "k: its head count must divide q's (GQA/MQA)");
  MMFAST_CHECK(v.shape(1) == Hkv, "v: head count differs from k's");
  MMFAST_CHECK(k.shape(3) == D, "k: head dim differs from q's");
  MMFAST_CHECK(v.shape(2) == Lk, "v: sequence length differs from k's");
  MMFAST_CHECK(D >= 1 && D <= 256, "q: head dim must be in [1, 256]");
  MMFAST_CHECK(Dv >= 1 && Dv <= 256, "v: head dim must be in [1, 256]");
  MMFAST_CHECK(out.shape(0) == B && out.shape(1) == Hq && out.shape(2) == Lq && out.shape(3) == Dv,
               "out: shape must be (B, Hq, Lq, Dv)");
  MMFAST_CHECK(std::isfinite(static_cast<float>(scale)), "scale: must be finite");
  MMFAST_CHECK(std::isfinite(static_cast<float>(softcap)) && softcap >= 0.0,
               "softcap: must be finite and >= 0");

  mmfast::AttentionParams p;
  if (!mask.is_none()) {
    const py::array m = mask.cast<py::array>();
    const bool is_f32 = m.dtype().equal(f32);
    MMFAST_CHECK(is_f32 || m.dtype().equal(py::dtype::of<bool>()) ||
                     m.dtype().equal(py::dtype::of<uint8_t>()),
                 "mask: expected float32 or bool, got " + std::string(py::str(m.dtype())));
    MMFAST_CHECK(m.ndim() == 4 && m.shape(0) == B && m.shape(1) == Hq && m.shape(2) == Lq &&
                     m.shape(3) == Lk,
                 "mask: shape must be (B, Hq, Lq, Lk) (broadcast with zero strides)");
    const py::ssize_t item = is_f32 ? 4 : 1;
    for (int i = 0; i < 4; ++i) {
      MMFAST_CHECK(m.strides(i) % item == 0, "mask: strides must be multiples of its item size");
      ms[i] = static_cast<int64_t>(m.strides(i) / item);
    }
    if (is_f32)
      p.mask_add = static_cast<const float*>(m.data());
    else
      p.mask_keep = static_cast<const uint8_t*>(m.data());
  }
  if (!lse.is_none()) {
    py::array la = lse.cast<py::array>();
    strides_of(la, "lse", 3, ls);
    MMFAST_CHECK(la.writeable(), "lse: array is read-only");
    MMFAST_CHECK(la.shape(0) == B && la.shape(1) == Hq && la.shape(2) == Lq,
                 "lse: shape must be (B, Hq, Lq)");
    p.lse = static_cast<float*>(la.mutable_data());
  }
  p.q = static_cast<const float*>(q.data());
  p.k = static_cast<const float*>(k.data());
  p.v = static_cast<const float*>(v.data());
  p.out = static_cast<float*>(out.mutable_data());
  p.b = B, p.hq = Hq, p.hkv = Hkv, p.lq = Lq, p.lk = Lk, p.d = D, p.dv = Dv;
  p.q_sb = qs[0], p.q_sh = qs[1], p.q_sl = qs[2];
  p.k_sb = ks[0], p.k_sh = ks[1], p.k_sl = ks[2];
  p.v_sb = vs[0], p.v_sh = vs[1], p.v_sl = vs[2];
  p.o_sb = os[0], p.o_sh = os[1], p.o_sl = os[2];
  p.lse_sb = ls[0], p.lse_sh = ls[1];
  p.m_sb = ms[0], p.m_sh = ms[1], p.m_sq = ms[2], p.m_sk = ms[3];
  p.scale = static_cast<float>(scale);
  p.softcap = static_cast<float>(softcap);
  p.causal = causal;
  p.causal_offset = causal_offset;
  const mmfast::KernelTable& kt = mmfast::kernels();
  py::gil_scoped_release release;
  kt.attention(p);
}
void set_conv_path(const std::string& path) {
  if (path == "auto")
    g_conv_path = 0;
  else if (path == "spatial")
    g_conv_path = 1;
  else if (path == "channel")
    g_conv_path = 2;
  else
    throw std::invalid_argument("path: expected 'auto', 'spatial' or 'channel', got '" + path +
                                "'");
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

  m.def("attention", &attention, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"),
        py::arg("mask"), py::arg("lse"), py::arg("causal"), py::arg("causal_offset"),
        py::arg("scale"), py::arg("softcap"),
        "Fused attention (online softmax) into `out` (B, Hq, Lq, Dv); see mmfast.ops.attention.");

  m.attr("CONV_PANEL_ROWS") = mmfast::kConvMR;
  m.attr("CONV_PANEL_COLS") = mmfast::kConvNC;
  m.def("conv2d_pack", &conv2d_pack, py::arg("weight"), py::arg("groups"), py::arg("panel"),
        "Pack (M, C/groups, KH, KW) float32 weights for conv2d in panels of CONV_PANEL_ROWS or "
        "CONV_PANEL_COLS output channels (layouts independent of the CPU).");
  m.def("conv2d", &conv2d, py::arg("x"), py::arg("packed"), py::arg("packed_cols"), py::arg("bias"),
        py::arg("out"), py::arg("M"), py::arg("KH"), py::arg("KW"), py::arg("stride"),
        py::arg("dilation"), py::arg("pads"), py::arg("groups"), py::arg("relu"),
        "2-D convolution of NCHW float32 `x` into `out` (N, M, OH, OW) with packed weights "
        "(packed_cols optional: enables the channel-vectorised path).");

  m.def("_set_conv_path", &set_conv_path, py::arg("path"),
        "Testing/benchmarking hook: force conv2d's GEMM path ('auto', 'spatial', 'channel'; "
        "'channel' needs AVX-512 and packed_cols, else it falls back to spatial).");

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
