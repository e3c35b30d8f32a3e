// The CPU convolution's plan and weight packing: plain integer work done once per call (or once
// per prepacked layer), compiled for the baseline ISA. The kernels are in conv2d_cpu.cpp.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "common/checked.h"
#include "conv2d/conv2d_cpu.h"

namespace mmfast {
namespace {

// a * b and a + b for the workspace sizes: an absurd padding or dilation makes them overflow,
// and a wrapped size would allocate too little (refused instead, as the argument's fault).
constexpr const char* kTooLarge = "padding, dilation: the convolution's workspace is too large";
int64_t mul(int64_t a, int64_t b) { return mul_or_throw(a, b, kTooLarge); }
int64_t add(int64_t a, int64_t b) { return add_or_throw(a, b, kTooLarge); }

// Images whose planes the channel-vectorised GEMM fills and multiplies in one go (one GEMM
// with the positions of all of them: whole position blocks, every weight block reused across
// images, more tasks to balance the threads); capped so the planes stay ~8 MB.
int64_t batch_images(const Conv2dCpuPlan& g, int64_t n) {
  constexpr int64_t kMaxFloats = int64_t{2} << 20;  // 8 MB of planes
  if (g.depthwise || n <= 1) return 1;
  const int64_t fit = kMaxFloats / g.planes_floats;
  return fit < 1 ? 1 : (fit < n ? fit : n);
}

}  // namespace

void conv2d_cpu_plan(const Conv2dShape& s, int64_t nthreads, bool have_cols, int path,
                     Conv2dCpuPlan& g) {
  g.Cg = s.C / s.groups;
  g.Mg = s.M / s.groups;
  // Largest shift of a tap inside its phase plane.
  const int64_t umax = (s.dilation_h * (s.KH - 1)) / s.stride_h;
  const int64_t vmax = (s.dilation_w * (s.KW - 1)) / s.stride_w;
  g.Hq = add(s.OH, umax);
  g.Wq = add(s.OW, vmax);
  g.phase_stride = mul(g.Hq, g.Wq);
  g.virtual_cols = mul(s.OH, g.Wq);
  g.ntaps = s.KH * s.KW;
  // Only the phases some tap reads are stored (e.g. a 1x1 stride-2 conv reads 1 of 4).
  g.nphases = 0;
  int64_t tap_slot[kConvMaxTaps];
  for (int64_t kh = 0; kh < s.KH; ++kh) {
    for (int64_t kw = 0; kw < s.KW; ++kw) {
      const int64_t a = (kh * s.dilation_h) % s.stride_h, b = (kw * s.dilation_w) % s.stride_w;
      int64_t slot = 0;
      while (slot < g.nphases && !(g.phase_a[slot] == a && g.phase_b[slot] == b)) ++slot;
      if (slot == g.nphases) {
        g.phase_a[slot] = a;
        g.phase_b[slot] = b;
        ++g.nphases;
      }
      tap_slot[kh * s.KW + kw] = slot;
    }
  }
  for (int64_t slot = 0; slot < g.nphases; ++slot) {
    const int64_t lead = s.pad_left - g.phase_b[slot];
    const int64_t last = s.W - 1 + lead;
    g.phase_j0[slot] = lead <= 0 ? 0 : (lead + s.stride_w - 1) / s.stride_w;
    g.phase_j1[slot] = std::min(g.Wq, last < 0 ? int64_t{0} : last / s.stride_w + 1);
  }
  g.plane_stride = mul(g.nphases, g.phase_stride);
  int64_t max_off = 0;
  for (int64_t kh = 0; kh < s.KH; ++kh) {
    for (int64_t kw = 0; kw < s.KW; ++kw) {
      const int64_t rh = kh * s.dilation_h, rw = kw * s.dilation_w;
      const int64_t phase = tap_slot[kh * s.KW + kw];
      const int64_t off =
          add(add(mul(phase, g.phase_stride), mul(rh / s.stride_h, g.Wq)), rw / s.stride_w);
      g.tap_offset[kh * s.KW + kw] = off;
      max_off = std::max(max_off, off);
    }
  }
  // Microkernel tiles read up to kConvMaxNR columns past the last virtual position: keep
  // them inside the (zeroed) workspace.
  const int64_t reach = add(add(max_off, g.virtual_cols), kConvMaxNR);
  const int64_t last_read = add(mul(s.C > 0 ? s.C - 1 : 0, g.plane_stride), reach);
  g.planes_floats = std::max(mul(s.C, g.plane_stride), last_read);
  g.channel_floats = add(std::max(g.plane_stride, reach), 15) / 16 * 16;
  g.m_blocks = (g.Mg + kConvMR - 1) / kConvMR;
  g.depthwise = g.Cg == 1;
  g.nthreads = nthreads;
  g.path = path;
  // Batching images only pays on the channel-vectorised path (weights packed for it).
  g.batch_images = have_cols ? batch_images(g, s.N) : 1;
  g.workspace_floats =
      g.depthwise ? mul(nthreads, g.channel_floats) : mul(g.batch_images, g.planes_floats);
  // The planes are the padded input: a workspace far beyond the images' own size means a
  // padding or dilation out of proportion to them, which would allocate (and, worse, touch)
  // gigabytes for a few outputs. Refused before anything is allocated.
  const int64_t images = g.depthwise ? nthreads : g.batch_images;
  const int64_t input_floats = mul(images, mul(g.depthwise ? 1 : s.C, mul(s.H, s.W)));
  const int64_t cap = std::max(kConvMinWorkspaceCap / 4, mul(input_floats, kConvWorkspaceRatio));
  if (g.workspace_floats > cap)
    throw std::invalid_argument("padding, dilation: the convolution would need a " +
                                std::to_string(g.workspace_floats / (int64_t{1} << 28)) +
                                " GiB workspace for its input; more than " +
                                std::to_string(kConvWorkspaceRatio) + " times the input, or " +
                                std::to_string(kConvMinWorkspaceCap >> 30) + " GiB");
}

int64_t conv2d_packed_floats(const Conv2dShape& s, int panel) {
  const int64_t cg = s.C / s.groups, mg = s.M / s.groups;
  const int64_t blocks = (mg + panel - 1) / panel;
  return s.groups * blocks * panel * cg * s.KH * s.KW;
}

void conv2d_pack_weights(const Conv2dShape& s, int panel, const float* w, float* packed) {
  const int64_t cg = s.C / s.groups, mg = s.M / s.groups;
  const int64_t k = cg * s.KH * s.KW;
  const int64_t blocks = (mg + panel - 1) / panel;
  for (int64_t grp = 0; grp < s.groups; ++grp) {
    for (int64_t mb = 0; mb < blocks; ++mb) {
      float* dst = packed + (grp * blocks + mb) * panel * k;
      for (int64_t kk = 0; kk < k; ++kk) {
        for (int64_t i = 0; i < panel; ++i) {
          const int64_t m = mb * panel + i;
          // W is (M, Cg, KH, KW) contiguous, so (c, kh, kw) flattens to kk.
          dst[kk * panel + i] = m < mg ? w[(grp * mg + m) * k + kk] : 0.0f;
        }
      }
    }
  }
}

}  // namespace mmfast
