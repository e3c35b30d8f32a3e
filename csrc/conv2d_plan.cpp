// Convolution geometry and weight packing: plain integer work done once per call (or once per
// prepacked layer), compiled for the baseline ISA. The kernels are in kernels/conv2d.cpp.
#include <algorithm>
#include <cstring>

#include "kernels/conv2d.h"

namespace mmfast {

bool conv2d_geometry(const Conv2dShape& s, Conv2dGeometry& g) {
  g.Cg = s.C / s.groups;
  g.Mg = s.M / s.groups;
  const int64_t span_h = s.DH * (s.KH - 1) + 1, span_w = s.DW * (s.KW - 1) + 1;
  const int64_t hp = s.H + s.PT + s.PB, wp = s.W + s.PL + s.PR;
  if (hp < span_h || wp < span_w) return false;
  g.OH = (hp - span_h) / s.SH + 1;
  g.OW = (wp - span_w) / s.SW + 1;
  // Largest shift of a tap inside its phase plane.
  const int64_t umax = (s.DH * (s.KH - 1)) / s.SH, vmax = (s.DW * (s.KW - 1)) / s.SW;
  g.Hq = g.OH + umax;
  g.Wq = g.OW + vmax;
  g.phase_stride = g.Hq * g.Wq;
  g.virtual_cols = g.OH * g.Wq;
  g.ntaps = s.KH * s.KW;
  // Only the phases some tap reads are stored (e.g. a 1x1 stride-2 conv reads 1 of 4).
  g.nphases = 0;
  int64_t tap_slot[kConvMaxTaps];
  for (int64_t kh = 0; kh < s.KH; ++kh) {
    for (int64_t kw = 0; kw < s.KW; ++kw) {
      const int64_t a = (kh * s.DH) % s.SH, b = (kw * s.DW) % s.SW;
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
  g.plane_stride = g.nphases * g.phase_stride;
  int64_t max_off = 0;
  for (int64_t kh = 0; kh < s.KH; ++kh) {
    for (int64_t kw = 0; kw < s.KW; ++kw) {
      const int64_t rh = kh * s.DH, rw = kw * s.DW;
      const int64_t phase = tap_slot[kh * s.KW + kw];
      const int64_t off = phase * g.phase_stride + (rh / s.SH) * g.Wq + (rw / s.SW);
      g.tap_offset[kh * s.KW + kw] = off;
      max_off = std::max(max_off, off);
    }
  }
  // Microkernel tiles read up to kConvMaxNR columns past the last virtual position: keep
  // them inside the (zeroed) workspace.
  const int64_t last_read = (s.C - 1) * g.plane_stride + max_off + g.virtual_cols + kConvMaxNR;
  g.planes_floats = std::max(s.C * g.plane_stride, last_read);
  const int64_t channel_read = max_off + g.virtual_cols + kConvMaxNR;
  g.channel_floats = (std::max(g.plane_stride, channel_read) + 15) / 16 * 16;
  g.m_blocks = (g.Mg + kConvMR - 1) / kConvMR;
  g.depthwise = g.Cg == 1;
  return true;
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

int64_t conv2d_batch_images(const Conv2dGeometry& g, int64_t n) {
  constexpr int64_t kMaxFloats = int64_t{2} << 20;  // 8 MB of planes
  if (g.depthwise || n <= 1) return 1;
  const int64_t fit = kMaxFloats / g.planes_floats;
  return fit < 1 ? 1 : (fit < n ? fit : n);
}

int64_t conv2d_workspace_floats(const Conv2dGeometry& g, int64_t nthreads, int64_t batch_images) {
  return g.depthwise ? nthreads * g.channel_floats : batch_images * g.planes_floats;
}

}  // namespace mmfast
