// The only file of mmfast._C that knows Python: converts and checks arguments, releases the
// GIL, calls the kernels through the run-time dispatch table. Kernel code never sees pybind11.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <atomic>
#include <cmath>
#include <initializer_list>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "attention/attention.h"
#include "attention/attention_cpu_bf16.h"
#include "common/bf16.h"
#include "common/cpu_features.h"
#include "common/parallel.h"
#include "common/pool_scope.h"
#include "common/workspace.h"
#include "conv2d/conv2d.h"
#include "conv2d/conv2d_cpu.h"
#include "conv2d/conv2d_cpu_bf16.h"
#include "conv2d/conv2d_winograd.h"
#include "dispatch/dispatch.h"

namespace py = pybind11;

namespace {

// Throws ValueError naming the argument (std::invalid_argument maps to ValueError).
#define MMFAST_CHECK(cond, msg)                                 \
  do {                                                          \
    if (!(cond)) throw std::invalid_argument(std::string(msg)); \
  } while (0)

// conv2d's GEMM path: 0 auto, 1 spatial, 2 channel (a testing/benchmarking hook).
std::atomic<int> g_conv_path{0};

// An optional array argument: None, or a numpy array (refused otherwise: a converted temporary
// would be freed while the kernel still points into it). The caller keeps the result alive.
std::optional<py::array> optional_array(const py::object& o, const char* name) {
  if (o.is_none()) return std::nullopt;
  if (!py::isinstance<py::array>(o))
    throw py::type_error(std::string(name) + ": expected a numpy array or None, got " +
                         std::string(py::str(py::type::of(o).attr("__name__"))));
  return py::reinterpret_borrow<py::array>(o);
}

// Checks a float32 (or, for masks, bool) array of N dimensions whose byte strides are multiples
// of its item size, and returns its strides in elements.
template <int N>
std::array<int64_t, N> element_strides(const py::array& a, const char* name,
                                       bool allow_bool = false) {
  const py::dtype dt = a.dtype();
  const bool ok =
      dt.equal(py::dtype::of<float>()) ||
      (allow_bool && (dt.equal(py::dtype::of<bool>()) || dt.equal(py::dtype::of<uint8_t>())));
  MMFAST_CHECK(ok, std::string(name) + ": expected float32" + (allow_bool ? " or bool" : "") +
                       ", got " + std::string(py::str(dt)));
  MMFAST_CHECK(a.ndim() == N, std::string(name) + ": expected " + std::to_string(N) +
                                  " dimensions, got " + std::to_string(a.ndim()));
  const py::ssize_t item = a.itemsize();
  MMFAST_CHECK(reinterpret_cast<uintptr_t>(a.data()) % static_cast<uintptr_t>(item) == 0,
               std::string(name) + ": data must be aligned to its item size");
  std::array<int64_t, N> st{};
  for (int i = 0; i < N; ++i) {
    MMFAST_CHECK(a.strides(i) % item == 0,
                 std::string(name) + ": strides must be multiples of its item size");
    st[static_cast<size_t>(i)] = static_cast<int64_t>(a.strides(i) / item);
  }
  return st;
}

// The kernels read a buffer over the extents the params give: it must have exactly that shape.
// With `dim_names`, the message names the first dimension that differs.
void require_shape(const py::array& a, const char* name, std::initializer_list<int64_t> want,
                   std::initializer_list<const char*> dim_names = {}) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(want.size());
  for (size_t i = 0; ok && i < want.size(); ++i)
    ok = a.shape(static_cast<py::ssize_t>(i)) == want.begin()[i];
  if (ok) return;
  std::string w;
  for (size_t i = 0; i < want.size(); ++i) {
    const int64_t d = want.begin()[i];
    if (i < dim_names.size() && static_cast<size_t>(a.ndim()) == want.size() &&
        a.shape(static_cast<py::ssize_t>(i)) != d)
      throw std::invalid_argument(std::string(name) + ": " + dim_names.begin()[i] + " differs (" +
                                  std::to_string(a.shape(static_cast<py::ssize_t>(i))) +
                                  ", expected " + std::to_string(d) + ")");
    w += (i ? ", " : "") + std::to_string(d);
  }
  throw std::invalid_argument(std::string(name) + ": shape does not match (" + w + ")");
}

// The last dimension is read with unit stride (a size-1 or empty one may have any stride).
template <int N>
void require_rows(const py::array& a, const std::array<int64_t, N>& st, const char* name) {
  MMFAST_CHECK(a.size() == 0 || a.shape(N - 1) <= 1 || st[N - 1] == 1,
               std::string(name) + ": the last dimension must be contiguous");
}

// x and out (rows, cols) float32, rows may be strided, the last dimension contiguous.
void softmax(const py::array& x, py::array out, bool log) {
  const std::array<int64_t, 2> xs = element_strides<2>(x, "x");
  const std::array<int64_t, 2> os = element_strides<2>(out, "out");
  require_rows<2>(x, xs, "x");
  require_rows<2>(out, os, "out");
  MMFAST_CHECK(out.writeable(), "out: array is read-only");
  require_shape(out, "out", {x.shape(0), x.shape(1)});
  mmfast::SoftmaxParams p;
  p.x = static_cast<const float*>(x.data());
  p.y = static_cast<float*>(out.mutable_data());
  p.rows = x.shape(0);
  p.cols = x.shape(1);
  p.x_row_stride = p.rows > 1 ? xs[0] : 0;
  p.y_row_stride = p.rows > 1 ? os[0] : 0;
  p.log = log;
  const mmfast::KernelTable& k = mmfast::kernels();
  py::gil_scoped_release release;
  k.softmax(p);
}

mmfast::NchwStrides nchw(const std::array<int64_t, 4>& st) { return {st[0], st[1], st[2], st[3]}; }

// Only C, M, KH, KW and groups of the shape matter for packing.
mmfast::Conv2dShape weight_shape(const py::array& w, int64_t groups) {
  mmfast::Conv2dShape s;
  s.M = w.shape(0), s.C = w.shape(1) * groups, s.KH = w.shape(2), s.KW = w.shape(3);
  s.groups = groups;
  return s;
}

py::array conv2d_pack(const py::array& w, int64_t groups, int panel) {
  MMFAST_CHECK(panel == mmfast::kConvMR || panel == mmfast::kConvNC,
               "panel: expected " + std::to_string(mmfast::kConvMR) + " or " +
                   std::to_string(mmfast::kConvNC));
  element_strides<4>(w, "weight");
  MMFAST_CHECK(w.flags() & py::array::c_style, "weight: must be C-contiguous");
  MMFAST_CHECK(groups >= 1, "groups: must be positive");
  const mmfast::Conv2dShape s = weight_shape(w, groups);
  mmfast::check_conv2d_shape(s);
  py::array_t<float> packed(static_cast<py::ssize_t>(mmfast::conv2d_packed_floats(s, panel)));
  const float* src = static_cast<const float*>(w.data());
  float* dst = packed.mutable_data();
  {
    py::gil_scoped_release release;
    mmfast::conv2d_pack_weights(s, panel, src, dst);
  }
  return packed;
}

// What both conv2d bindings share: x (N, C, H, W), out (N, M, OH, OW) float32 with any strides,
// bias (M,) or None, the geometry, and the packed weights' pointers (their dtype checked by the
// caller, their size after: it depends on the kernel's layout) -> params, checked
// (check_conv2d: OH, OW, taken from out, must be right).
mmfast::Conv2dParams conv2d_params(const py::array& x, const py::array& packed,
                                   const std::optional<py::array>& cols, const py::object& bias,
                                   py::array& out, int64_t M, int64_t KH, int64_t KW,
                                   const std::array<int64_t, 2>& stride,
                                   const std::array<int64_t, 2>& dilation,
                                   const std::array<int64_t, 4>& pads, int64_t groups, bool relu) {
  mmfast::Conv2dParams p;
  p.x_stride = nchw(element_strides<4>(x, "x"));
  p.y_stride = nchw(element_strides<4>(out, "out"));
  MMFAST_CHECK(out.writeable(), "out: array is read-only");
  mmfast::Conv2dShape& s = p.shape;
  s.N = x.shape(0), s.C = x.shape(1), s.H = x.shape(2), s.W = x.shape(3);
  s.M = M, s.KH = KH, s.KW = KW;
  s.stride_h = stride[0], s.stride_w = stride[1];
  s.dilation_h = dilation[0], s.dilation_w = dilation[1];
  s.pad_top = pads[0], s.pad_left = pads[1], s.pad_bottom = pads[2], s.pad_right = pads[3];
  s.groups = groups;
  s.OH = out.shape(2), s.OW = out.shape(3);
  // b borrows the caller's `bias` object, which outlives the call: p.bias stays valid
  const std::optional<py::array> b = optional_array(bias, "bias");
  if (b) {
    const std::array<int64_t, 1> bs = element_strides<1>(*b, "bias");
    MMFAST_CHECK(b->shape(0) <= 1 || bs[0] == 1, "bias: must be contiguous");
    p.bias = b->data();
  }
  p.x = x.data();
  p.weight = packed.data();
  if (cols) p.weight_cols = cols->data();
  p.y = out.mutable_data();
  p.relu = relu;
  mmfast::check_conv2d(p, mmfast::Device::cpu);
  // The buffers must cover what the checked shape says the kernel reads and writes.
  require_shape(out, "out", {s.N, M, s.OH, s.OW});
  if (b) require_shape(*b, "bias", {M});
  return p;
}

// A packed weight buffer: C-contiguous, of the length its layout has for this convolution.
void require_packed(const py::array& a, const char* name, int64_t length) {
  MMFAST_CHECK((a.flags() & py::array::c_style) && a.shape(0) == length,
               std::string(name) + ": size does not match the convolution's weights");
}

// x (N, C, H, W) and out (N, M, OH, OW) float32 with any strides; `packed` (and optionally
// `packed_cols`) from conv2d_pack; bias (M,) or None.
void conv2d(const py::array& x, const py::array& packed, const py::object& packed_cols,
            const py::object& bias, py::array out, int64_t M, int64_t KH, int64_t KW,
            const std::array<int64_t, 2>& stride, const std::array<int64_t, 2>& dilation,
            const std::array<int64_t, 4>& pads, int64_t groups, bool relu) {
  element_strides<1>(packed, "packed");
  const std::optional<py::array> cols = optional_array(packed_cols, "packed_cols");
  if (cols) element_strides<1>(*cols, "packed_cols");
  mmfast::Conv2dParams p =
      conv2d_params(x, packed, cols, bias, out, M, KH, KW, stride, dilation, pads, groups, relu);
  const mmfast::Conv2dShape& s = p.shape;
  require_packed(packed, "packed", mmfast::conv2d_packed_floats(s, mmfast::kConvMR));
  if (cols) require_packed(*cols, "packed_cols", mmfast::conv2d_packed_floats(s, mmfast::kConvNC));
  if (s.N == 0 || M == 0) return;
  // The workspace is sized for this pool's threads, and the kernel runs on the same pool even
  // if set_num_threads() swaps in another meanwhile.
  const mmfast::PoolScope pool;
  mmfast::Conv2dCpuPlan plan;
  mmfast::conv2d_cpu_plan(s, pool.num_threads(), p.weight_cols != nullptr, g_conv_path.load(),
                          plan);
  const mmfast::WorkspaceTrim trim;  // a one-off huge workspace is freed after the call
  try {
    p.workspace = mmfast::thread_workspace(static_cast<size_t>(plan.workspace_floats));
  } catch (const std::bad_alloc&) {
    PyErr_Format(PyExc_MemoryError,
                 "conv2d: cannot allocate its %.2f GiB workspace (the padded input's planes; "
                 "check padding, dilation and the image size)",
                 static_cast<double>(plan.workspace_floats) * 4.0 / (1 << 30));
    throw py::error_already_set();
  }
  p.workspace_bytes = static_cast<size_t>(plan.workspace_floats) * sizeof(float);
  const mmfast::KernelTable& k = mmfast::kernels();
  py::gil_scoped_release release;
  k.conv2d(p, plan);
}

// (M, C, 3, 3) float32 weights transformed for the Winograd F(2x2, 3x3) kernel
// (conv2d/conv2d_winograd.h): G g G^T in double, rounded once.
py::array conv2d_winograd_pack(const py::array& w) {
  element_strides<4>(w, "weight");
  MMFAST_CHECK(w.flags() & py::array::c_style, "weight: must be C-contiguous");
  const mmfast::Conv2dShape s = weight_shape(w, 1);
  MMFAST_CHECK(s.KH == 3 && s.KW == 3, "weight: the Winograd kernel takes 3x3 filters, got " +
                                           std::to_string(s.KH) + "x" + std::to_string(s.KW));
  mmfast::check_conv2d_shape(s);
  py::array_t<float> packed(static_cast<py::ssize_t>(mmfast::conv2d_winograd_packed_floats(s)));
  const float* src = static_cast<const float*>(w.data());
  float* dst = packed.mutable_data();
  {
    py::gil_scoped_release release;
    mmfast::conv2d_winograd_pack(s, src, dst);
  }
  return packed;
}

// As conv2d() for a 3x3, stride 1, dilation 1, one-group convolution, by Winograd F(2x2, 3x3)
// with conv2d_winograd_pack's weights.
void conv2d_winograd(const py::array& x, const py::array& packed, const py::object& bias,
                     py::array out, int64_t M, const std::array<int64_t, 4>& pads, bool relu) {
  element_strides<1>(packed, "packed");
  mmfast::Conv2dParams p =
      conv2d_params(x, packed, std::nullopt, bias, out, M, 3, 3, {1, 1}, {1, 1}, pads, 1, relu);
  const mmfast::Conv2dShape& s = p.shape;
  require_packed(packed, "packed", mmfast::conv2d_winograd_packed_floats(s));
  if (s.N == 0 || M == 0) return;
  const mmfast::PoolScope pool;
  mmfast::Conv2dWinogradPlan plan;
  mmfast::conv2d_winograd_plan(s, pool.num_threads(), plan);
  const mmfast::WorkspaceTrim trim;
  try {
    p.workspace = mmfast::thread_workspace(static_cast<size_t>(plan.workspace_floats));
  } catch (const std::bad_alloc&) {
    PyErr_Format(PyExc_MemoryError,
                 "conv2d: cannot allocate its %.2f GiB Winograd workspace (check padding and "
                 "the image size)",
                 static_cast<double>(plan.workspace_floats) * 4.0 / (1 << 30));
    throw py::error_already_set();
  }
  p.workspace_bytes = static_cast<size_t>(plan.workspace_floats) * sizeof(float);
  const mmfast::KernelTable& k = mmfast::kernels();
  py::gil_scoped_release release;
  k.conv2d_winograd(p, plan);
}

// q (B, Hq, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv), out (B, Hq, Lq, Dv) float32 with a
// contiguous last dimension; mask None or (B, Hq, Lq, Lk) float32 (added) or bool/uint8 (keep),
// any strides (0 = broadcast); lse None or a C-contiguous (B, Hq, Lq) float32.
// ---- precision="bf16" ------------------------------------------------------------------------

// `a` (float32, C-contiguous) with every value rounded to the nearest bfloat16 (ties to even),
// as a new float32 array: the portable fallback's input rounding (common/bf16.h).
py::array round_bf16(const py::array& a) {
  MMFAST_CHECK(a.dtype().equal(py::dtype::of<float>()),
               "a: expected float32, got " + std::string(py::str(a.dtype())));
  MMFAST_CHECK(a.flags() & py::array::c_style, "a: must be C-contiguous");
  std::vector<py::ssize_t> shape(a.shape(), a.shape() + a.ndim());
  py::array_t<float> out(shape);
  const float* src = static_cast<const float*>(a.data());
  float* dst = out.mutable_data();
  const int64_t n = static_cast<int64_t>(a.size());
  py::gil_scoped_release release;
  struct Ctx {
    const float* src;
    float* dst;
  } ctx{src, dst};
  mmfast::parallel_for_raw(
      n, int64_t{1} << 16,
      [](void* c, int64_t b, int64_t e) {
        const Ctx& x = *static_cast<const Ctx*>(c);
        for (int64_t i = b; i < e; ++i) x.dst[i] = mmfast::bf16_round(x.src[i]);
      },
      &ctx);
  return std::move(out);
}

// (M, C/groups, KH, KW) float32 weights in the bf16 kernel's layout (conv2d_cpu_bf16.h).
py::array conv2d_pack_bf16(const py::array& w, int64_t groups, int panel) {
  MMFAST_CHECK(panel == mmfast::kConvBf16MR || panel == mmfast::kConvNC,
               "panel: expected " + std::to_string(mmfast::kConvBf16MR) + " or " +
                   std::to_string(mmfast::kConvNC));
  element_strides<4>(w, "weight");
  MMFAST_CHECK(w.flags() & py::array::c_style, "weight: must be C-contiguous");
  MMFAST_CHECK(groups >= 1, "groups: must be positive");
  const mmfast::Conv2dShape s = weight_shape(w, groups);
  mmfast::check_conv2d_shape(s);
  py::array_t<uint32_t> packed(
      static_cast<py::ssize_t>(mmfast::conv2d_bf16_packed_words(s, panel)));
  const float* src = static_cast<const float*>(w.data());
  uint32_t* dst = packed.mutable_data();
  {
    py::gil_scoped_release release;
    mmfast::conv2d_bf16_pack_weights(s, panel, src, dst);
  }
  return std::move(packed);
}

// As conv2d(), on the AVX512-BF16 kernel with conv2d_pack_bf16's weights: x rounded to bf16 as
// it is read, float32 accumulation, bias and output. RuntimeError where bf16_native() is false.
void conv2d_bf16(const py::array& x, const py::array& packed, const py::object& packed_cols,
                 const py::object& bias, py::array out, int64_t M, int64_t KH, int64_t KW,
                 const std::array<int64_t, 2>& stride, const std::array<int64_t, 2>& dilation,
                 const std::array<int64_t, 4>& pads, int64_t groups, bool relu) {
  const mmfast::Bf16KernelTable* bk = mmfast::bf16_kernels();
  if (!bk) throw std::runtime_error("conv2d_bf16: this CPU or build has no AVX512-BF16 kernels");
  MMFAST_CHECK(packed.dtype().equal(py::dtype::of<uint32_t>()) && packed.ndim() == 1,
               "packed: expected conv2d_pack_bf16's uint32 words");
  const std::optional<py::array> cols = optional_array(packed_cols, "packed_cols");
  if (cols)
    MMFAST_CHECK(cols->dtype().equal(py::dtype::of<uint32_t>()) && cols->ndim() == 1,
                 "packed_cols: expected conv2d_pack_bf16's uint32 words");
  mmfast::Conv2dParams p =
      conv2d_params(x, packed, cols, bias, out, M, KH, KW, stride, dilation, pads, groups, relu);
  const mmfast::Conv2dShape& s = p.shape;
  require_packed(packed, "packed", mmfast::conv2d_bf16_packed_words(s, mmfast::kConvBf16MR));
  if (cols)
    require_packed(*cols, "packed_cols", mmfast::conv2d_bf16_packed_words(s, mmfast::kConvNC));
  if (s.N == 0 || M == 0) return;
  const mmfast::PoolScope pool;
  mmfast::Conv2dCpuPlan plan;
  mmfast::conv2d_cpu_plan(s, pool.num_threads(), p.weight_cols != nullptr, g_conv_path.load(),
                          plan);
  const int64_t words = mmfast::conv2d_bf16_workspace_words(
      s, plan, mmfast::conv2d_bf16_direct(s, p.x_stride), p.weight_cols != nullptr);
  const mmfast::WorkspaceTrim trim;
  try {
    p.workspace = mmfast::thread_workspace(static_cast<size_t>(words));
  } catch (const std::bad_alloc&) {
    PyErr_Format(PyExc_MemoryError,
                 "conv2d: cannot allocate its %.2f GiB bf16 workspace (the padded input's planes)",
                 static_cast<double>(words) * 4.0 / (1 << 30));
    throw py::error_already_set();
  }
  p.workspace_bytes = static_cast<size_t>(words) * sizeof(uint32_t);
  py::gil_scoped_release release;
  bk->conv2d(p, plan);
}

// The checked AttentionParams of a call (shared by the float32 and bf16 kernels). `keep` holds
// the optional arrays (mask, lse) alive while the kernel runs.
mmfast::AttentionParams attention_params(const py::array& q, const py::array& k, const py::array& v,
                                         py::array& out, const py::object& mask,
                                         const py::object& lse, bool causal, int64_t causal_offset,
                                         double scale, double softcap,
                                         std::vector<py::array>& keep) {
  const std::array<int64_t, 4> qs = element_strides<4>(q, "q"), ks = element_strides<4>(k, "k"),
                               vs = element_strides<4>(v, "v"), os = element_strides<4>(out, "out");
  require_rows<4>(q, qs, "q");
  require_rows<4>(k, ks, "k");
  require_rows<4>(v, vs, "v");
  require_rows<4>(out, os, "out");
  MMFAST_CHECK(out.writeable(), "out: array is read-only");
  mmfast::AttentionParams p;
  p.batch = q.shape(0), p.q_heads = q.shape(1), p.q_len = q.shape(2), p.head_dim = q.shape(3);
  p.kv_heads = k.shape(1), p.kv_len = k.shape(2), p.v_head_dim = v.shape(3);
  p.q_stride = {qs[0], qs[1], qs[2]};
  p.k_stride = {ks[0], ks[1], ks[2]};
  p.v_stride = {vs[0], vs[1], vs[2]};
  p.out_stride = {os[0], os[1], os[2]};
  p.scale = static_cast<float>(scale);
  p.softcap = static_cast<float>(softcap);
  p.causal = causal;
  p.causal_offset = causal_offset;
  const auto dim_names = {"batch size", "head count", "sequence length", "head dim"};
  require_shape(k, "k", {p.batch, p.kv_heads, p.kv_len, p.head_dim}, dim_names);
  require_shape(v, "v", {p.batch, p.kv_heads, p.kv_len, p.v_head_dim}, dim_names);
  require_shape(out, "out", {p.batch, p.q_heads, p.q_len, p.v_head_dim});
  const std::optional<py::array> mask_a = optional_array(mask, "attn_mask");
  std::optional<py::array> lse_a = optional_array(lse, "lse");
  if (mask_a) {
    const py::array& m = *mask_a;
    require_shape(m, "attn_mask", {p.batch, p.q_heads, p.q_len, p.kv_len});
    const std::array<int64_t, 4> ms = element_strides<4>(m, "attn_mask", /*allow_bool=*/true);
    p.mask = m.data();
    p.mask_kind = m.itemsize() == 4 ? mmfast::MaskKind::additive : mmfast::MaskKind::boolean;
    p.mask_stride = {ms[0], ms[1], ms[2], ms[3]};
    keep.push_back(m);
  }
  if (lse_a) {
    py::array& la = *lse_a;
    element_strides<3>(la, "lse");
    require_shape(la, "lse", {p.batch, p.q_heads, p.q_len});
    MMFAST_CHECK(la.flags() & py::array::c_style, "lse: must be C-contiguous");
    MMFAST_CHECK(la.writeable(), "lse: array is read-only");
    p.lse = static_cast<float*>(la.mutable_data());
    keep.push_back(la);
  }
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  p.out = out.mutable_data();
  mmfast::check_attention(p, mmfast::Device::cpu);
  return p;
}

// q (B, Hq, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv), out (B, Hq, Lq, Dv) float32 with a
// contiguous last dimension; mask None or (B, Hq, Lq, Lk) float32 (added) or bool/uint8 (keep),
// any strides (0 = broadcast); lse None or a C-contiguous (B, Hq, Lq) float32.
void attention(const py::array& q, const py::array& k, const py::array& v, py::array out,
               const py::object& mask, const py::object& lse, bool causal, int64_t causal_offset,
               double scale, double softcap) {
  std::vector<py::array> keep;
  const mmfast::AttentionParams p =
      attention_params(q, k, v, out, mask, lse, causal, causal_offset, scale, softcap, keep);
  const mmfast::KernelTable& kt = mmfast::kernels();
  py::gil_scoped_release release;
  kt.attention(p);
}

// As attention(), on the AVX512-BF16 kernel (bf16 inputs, float32 accumulation and output):
// RuntimeError where bf16_native() is false (mmfast.ops then runs the portable fallback).
void attention_bf16(const py::array& q, const py::array& k, const py::array& v, py::array out,
                    const py::object& mask, const py::object& lse, bool causal,
                    int64_t causal_offset, double scale, double softcap) {
  const mmfast::Bf16KernelTable* bk = mmfast::bf16_kernels();
  if (!bk) throw std::runtime_error("attention_bf16: this CPU or build has no AVX512-BF16 kernels");
  std::vector<py::array> keep;
  const mmfast::AttentionParams p =
      attention_params(q, k, v, out, mask, lse, causal, causal_offset, scale, softcap, keep);
  if (p.batch == 0 || p.q_heads == 0 || p.q_len == 0) return;
  const size_t bytes = mmfast::attention_bf16_workspace_bytes(p);
  const mmfast::WorkspaceTrim trim;
  float* ws = nullptr;
  try {
    ws = mmfast::thread_workspace((bytes + sizeof(float) - 1) / sizeof(float));
  } catch (const std::bad_alloc&) {
    PyErr_Format(PyExc_MemoryError,
                 "attention: cannot allocate the bf16 copies of k and v (%.2f GiB)",
                 static_cast<double>(bytes) / (1 << 30));
    throw py::error_already_set();
  }
  py::gil_scoped_release release;
  bk->attention(p, ws);
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

  // Limits, defined once in the ops' headers (the Python layer checks against these).
  m.attr("ATTENTION_MAX_HEAD_DIM") = mmfast::kAttentionMaxHeadDim;
  m.attr("ATTENTION_MIN_SOFTCAP") = mmfast::kAttentionMinSoftcap;
  m.attr("ATTENTION_MAX_SOFTCAP") = mmfast::kAttentionMaxSoftcap;
  m.attr("CONV_MAX_TAPS") = mmfast::kConvMaxTaps;
  m.attr("CUDA_MAX_GRID_YZ") = mmfast::kCudaMaxGridYZ;

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

  m.def("conv2d_winograd_pack", &conv2d_winograd_pack, py::arg("weight"),
        "Transform (M, C, 3, 3) float32 weights for conv2d_winograd (G g G^T in double, "
        "rounded once; a layout independent of the CPU).");
  m.def("conv2d_winograd", &conv2d_winograd, py::arg("x"), py::arg("packed"), py::arg("bias"),
        py::arg("out"), py::arg("M"), py::arg("pads"), py::arg("relu"),
        "3x3 stride-1 convolution of NCHW float32 `x` into `out` (N, M, OH, OW) by Winograd "
        "F(2x2, 3x3) with conv2d_winograd_pack's weights.");

  // precision="bf16" (mmfast.ops picks the kernel or the portable fallback).
  m.def(
      "bf16_native", [] { return mmfast::bf16_kernels() != nullptr; },
      "Whether precision='bf16' runs the AVX512-BF16 kernels (else: inputs rounded to bf16, "
      "then the float32 kernels).");
  m.def("round_bf16", &round_bf16, py::arg("a"),
        "A float32 copy of C-contiguous float32 `a` rounded to bfloat16 (nearest, ties to even).");
  m.def("conv2d_pack_bf16", &conv2d_pack_bf16, py::arg("weight"), py::arg("groups"),
        py::arg("panel"),
        "Pack (M, C/groups, KH, KW) float32 weights, rounded to bf16, for conv2d_bf16 in panels "
        "of CONV_PANEL_ROWS or CONV_PANEL_COLS output channels.");
  m.def("conv2d_bf16", &conv2d_bf16, py::arg("x"), py::arg("packed"), py::arg("packed_cols"),
        py::arg("bias"), py::arg("out"), py::arg("M"), py::arg("KH"), py::arg("KW"),
        py::arg("stride"), py::arg("dilation"), py::arg("pads"), py::arg("groups"), py::arg("relu"),
        "conv2d with bf16 inputs and float32 accumulation (AVX512-BF16; see bf16_native); "
        "packed_cols optional: enables the channel-vectorised path.");
  m.def("attention_bf16", &attention_bf16, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"),
        py::arg("mask"), py::arg("lse"), py::arg("causal"), py::arg("causal_offset"),
        py::arg("scale"), py::arg("softcap"),
        "attention with bf16 inputs, float32 accumulation (AVX512-BF16; see bf16_native).");

  m.def("_set_winograd_block_tiles", &mmfast::set_winograd_block_tiles, py::arg("tiles"),
        "Testing hook: tiles per block of the Winograd kernel (0: sized from the L2 cache).");
  m.def("l2_cache_bytes", &mmfast::l2_cache_bytes,
        "The L2 cache per core in bytes as read at run time (1 MiB if unknown); sizes the "
        "Winograd kernel's tile blocks.");
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
  m.def("_thread_workspace_bytes", &mmfast::thread_workspace_bytes,
        "Testing hook: bytes of scratch the calling thread keeps between kernel calls.");
  m.def(
      "set_num_threads",
      [](int n) {
        MMFAST_CHECK(n >= 1 && n <= mmfast::kMaxThreads,
                     "n: must be >= 1 and <= " + std::to_string(mmfast::kMaxThreads) + ", got " +
                         std::to_string(n));
        mmfast::set_num_threads(n);  // RuntimeError if the threads cannot be started
      },
      py::arg("n"), "Set the number of threads the CPU kernels use (1 <= n <= MAX_THREADS).");
  m.attr("MAX_THREADS") = mmfast::kMaxThreads;

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
