// The bf16 convolution's weight packing and workspace size: plain integer work, compiled for
// the baseline ISA (the kernel itself is in conv2d_cpu_bf16.cpp). Layouts in conv2d_cpu_bf16.h.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "common/bf16.h"
#include "common/checked.h"
#include "conv2d/conv2d_cpu_bf16.h"

namespace mmfast {
namespace {

constexpr const char* kTooLarge = "padding, dilation: the convolution's workspace is too large";
int64_t mul(int64_t a, int64_t b) { return mul_or_throw(a, b, kTooLarge); }
int64_t add(int64_t a, int64_t b) { return add_or_throw(a, b, kTooLarge); }

}  // namespace

bool conv2d_bf16_tap_mode(const Conv2dShape& s) {
  const int64_t cg = s.C / s.groups;
  if (cg < 3 || cg % 2 == 0 || cg > 15) return false;  // (more channels: too many planes)
  int kind[kConvMaxTaps];
  int64_t kh[kConvMaxTaps], kw[kConvMaxTaps];
  return cg * conv2d_bf16_tap_pair_list(s, kind, kh, kw) < (cg + 1) / 2 * s.KH * s.KW;
}

int64_t conv2d_bf16_tap_pair_list(const Conv2dShape& s, int* kind, int64_t* kh, int64_t* kw) {
  int64_t n = 0;
  for (int64_t r = 0; r < s.KH; ++r) {
    for (int64_t c = 0; c + 1 < s.KW; c += 2) {
      kind[n] = 0;
      kh[n] = r;
      kw[n++] = c;
    }
  }
  if (s.KW % 2 == 1) {
    for (int64_t r = 0; r < s.KH; r += 2) {
      kind[n] = r + 1 < s.KH ? 1 : 2;
      kh[n] = r;
      kw[n++] = s.KW - 1;
    }
  }
  return n;
}

void conv2d_bf16_tap_pairs(const Conv2dShape& s, const Conv2dCpuPlan& g, Conv2dBf16TapPairs& t) {
  int kind[kConvMaxTaps];
  int64_t kh[kConvMaxTaps], kw[kConvMaxTaps];
  t.npairs = conv2d_bf16_tap_pair_list(s, kind, kh, kw);
  const int64_t kind_stride = mul(g.nphases, g.phase_stride);
  t.plane_stride = mul(kConvBf16TapKinds, kind_stride);
  int64_t max_off = 0;
  for (int64_t q = 0; q < t.npairs; ++q) {
    const int64_t a = (kh[q] * s.dilation_h) % s.stride_h, b = (kw[q] * s.dilation_w) % s.stride_w;
    int64_t slot = 0;
    while (slot < g.nphases && !(g.phase_a[slot] == a && g.phase_b[slot] == b)) ++slot;
    t.used[kind[q]][slot] = true;
    t.offset[q] = add(kind[q] * kind_stride, g.tap_offset[kh[q] * s.KW + kw[q]]);
    max_off = std::max(max_off, t.offset[q]);
  }
  // The last channel's tiles read up to kConvMaxNR positions past the last virtual column.
  const int64_t channels = mul(s.groups, g.Cg);
  const int64_t reach = add(add(max_off, g.virtual_cols), kConvMaxNR);
  t.words = std::max(mul(channels, t.plane_stride), add(mul(channels - 1, t.plane_stride), reach));
}

int64_t conv2d_bf16_packed_words(const Conv2dShape& s, int panel) {
  const int64_t cg = s.C / s.groups, mg = s.M / s.groups;
  const int64_t blocks = (mg + panel - 1) / panel;
  if (conv2d_bf16_tap_mode(s)) {
    int kind[kConvMaxTaps];
    int64_t kh[kConvMaxTaps], kw[kConvMaxTaps];
    return s.groups * blocks * panel * cg * conv2d_bf16_tap_pair_list(s, kind, kh, kw);
  }
  return s.groups * blocks * panel * ((cg + 1) / 2) * s.KH * s.KW;
}

namespace {

// Tap-pair mode's packing: per group, panel, channel, pair (conv2d_cpu_bf16.h), panel words.
void pack_tap_pairs(const Conv2dShape& s, int panel, const float* w, uint32_t* packed) {
  const int64_t cg = s.C / s.groups, mg = s.M / s.groups, taps = s.KH * s.KW;
  const int64_t blocks = (mg + panel - 1) / panel;
  int kind[kConvMaxTaps];
  int64_t kh[kConvMaxTaps], kw[kConvMaxTaps];
  const int64_t np = conv2d_bf16_tap_pair_list(s, kind, kh, kw);
  for (int64_t grp = 0; grp < s.groups; ++grp) {
    for (int64_t mb = 0; mb < blocks; ++mb) {
      uint32_t* dst = packed + (grp * blocks + mb) * panel * cg * np;
      for (int64_t c = 0; c < cg; ++c) {
        for (int64_t q = 0; q < np; ++q) {
          const int64_t t0 = kh[q] * s.KW + kw[q];
          const int64_t t1 = kind[q] == 0 ? t0 + 1 : kind[q] == 1 ? t0 + s.KW : -1;
          for (int64_t i = 0; i < panel; ++i) {
            const int64_t m = mb * panel + i;
            const float* wc = w + ((grp * mg + m) * cg + c) * taps;  // (M, Cg, KH, KW)
            const float lo = m < mg ? wc[t0] : 0.0f;
            const float hi = m < mg && t1 >= 0 ? wc[t1] : 0.0f;
            dst[(c * np + q) * panel + i] = bf16_pair(bf16_from_float(lo), bf16_from_float(hi));
          }
        }
      }
    }
  }
}

}  // namespace

void conv2d_bf16_pack_weights(const Conv2dShape& s, int panel, const float* w, uint32_t* packed) {
  if (conv2d_bf16_tap_mode(s)) {
    pack_tap_pairs(s, panel, w, packed);
    return;
  }
  const int64_t cg = s.C / s.groups, mg = s.M / s.groups, taps = s.KH * s.KW;
  const int64_t pairs = (cg + 1) / 2;
  const int64_t blocks = (mg + panel - 1) / panel;
  for (int64_t grp = 0; grp < s.groups; ++grp) {
    for (int64_t mb = 0; mb < blocks; ++mb) {
      uint32_t* dst = packed + (grp * blocks + mb) * panel * pairs * taps;
      for (int64_t cp = 0; cp < pairs; ++cp) {
        for (int64_t t = 0; t < taps; ++t) {
          for (int64_t i = 0; i < panel; ++i) {
            const int64_t m = mb * panel + i;
            // W is (M, Cg, KH, KW) contiguous: w[m, c, t] at (m*Cg + c)*taps + t.
            const float* wm = w + (grp * mg + m) * cg * taps;
            const float lo = m < mg ? wm[(2 * cp) * taps + t] : 0.0f;
            const float hi = m < mg && 2 * cp + 1 < cg ? wm[(2 * cp + 1) * taps + t] : 0.0f;
            dst[(cp * taps + t) * panel + i] = bf16_pair(bf16_from_float(lo), bf16_from_float(hi));
          }
        }
      }
    }
  }
}

bool conv2d_bf16_direct(const Conv2dShape& s, const NchwStrides& xs) {
  return s.KH == 1 && s.KW == 1 && s.stride_h == 1 && s.stride_w == 1 && s.pad_top == 0 &&
         s.pad_left == 0 && s.pad_bottom == 0 && s.pad_right == 0 && xs.w == 1 &&
         (xs.h == s.W || s.H == 1);
}

int64_t conv2d_bf16_direct_chunk(int64_t pairs) {
  // Measured on 1x1 64->256 and 256->64 @56 (1 thread, Zen 5, 1 MB L2): 4 tiles / 32 KB
  // chunks ran at 1.2-1.6x our float32 kernel at batch 8, 16 tiles / 256 KB at 1.8-1.9x, 32 or
  // 64 tiles no better (64: 1.3x on 256->64).
  constexpr int64_t kTile = kConvBf16NR, kMaxTiles = 16, kChunkWords = 65536;  // 256 KB
  const int64_t tiles = kChunkWords / (pairs * kTile > 0 ? pairs * kTile : 1);
  return kTile * (tiles < 1 ? 1 : tiles > kMaxTiles ? kMaxTiles : tiles);
}

bool conv2d_bf16_dw_pairs(const Conv2dShape& s) {
  return s.stride_h == 1 && s.stride_w == 1 && s.dilation_h == 1 && s.KH <= kConvBf16DwMaxKH;
}

int64_t conv2d_bf16_dw_thread_words(const Conv2dShape& s, const Conv2dCpuPlan& g) {
  if (!conv2d_bf16_dw_pairs(s)) return g.channel_floats;
  // ring slots, a zero row, a vector of slack read past the last row, the staging row
  const int64_t row = conv2d_bf16_dw_row_words(g);
  const int64_t ring = add(mul(kConvBf16DwRows + s.KH, row), 16);
  return add(ring, (s.W + 15) / 16 * 16);
}

int64_t conv2d_bf16_workspace_words(const Conv2dShape& s, const Conv2dCpuPlan& g, bool direct,
                                    bool have_cols) {
  if (g.depthwise) return mul(g.nthreads, conv2d_bf16_dw_thread_words(s, g));
  const bool taps = conv2d_bf16_tap_mode(s);
  const int64_t pairs_g = (g.Cg + 1) / 2;
  const int64_t direct_words = mul(mul(g.nthreads, pairs_g), conv2d_bf16_direct_chunk(pairs_g));
  if (direct && !have_cols && !taps) return direct_words;  // ("cols": the channel path may run)
  const int64_t pairs = mul(s.groups, (g.Cg + 1) / 2);
  int64_t max_off = 0;
  for (int64_t t = 0; t < g.ntaps; ++t) max_off = std::max(max_off, g.tap_offset[t]);
  // The last pair's tiles read up to kConvMaxNR positions past the last virtual column.
  const int64_t reach = add(add(max_off, g.virtual_cols), kConvMaxNR);
  int64_t words = std::max(mul(pairs, g.plane_stride),
                           add(mul(pairs > 0 ? pairs - 1 : 0, g.plane_stride), reach));
  // The channel path fills batch_images images' planes at once (1 unless "cols" weights exist).
  const int64_t batch = g.batch_images > 0 && !taps ? g.batch_images : 1;
  words = std::max(mul((words + 15) / 16 * 16, batch), direct ? direct_words : 0);
  if (taps) {  // one image's pair planes (the channel path is not used in this mode)
    Conv2dBf16TapPairs t;
    conv2d_bf16_tap_pairs(s, g, t);
    words = t.words;
  }
  // Half the float32 planes' size per channel; the float32 plan already refused an absurd one.
  const int64_t cap =
      std::max(kConvMinWorkspaceCap / 4, mul(mul(mul(s.C, mul(s.H, s.W)), 16), batch));
  if (words > cap)
    throw std::invalid_argument("padding, dilation: the bf16 convolution would need " +
                                std::to_string(words / (int64_t{1} << 28)) +
                                " GiB of workspace for its input");
  return words;
}

}  // namespace mmfast
