// The device-independent part of conv2d: output size and the invariants every kernel relies on,
// checked once for both devices (compiled for the baseline ISA into mmfast._C and _C_cuda).
#include "conv2d/conv2d.h"

#include <optional>
#include <stdexcept>
#include <string>

#include "common/checked.h"

namespace mmfast {
namespace {

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

// a + b + c, or false on int64 overflow (all non-negative).
bool sum3(int64_t a, int64_t b, int64_t c, int64_t& out) {
  const std::optional<int64_t> ab = checked_add(a, b);
  const std::optional<int64_t> abc = ab ? checked_add(*ab, c) : std::nullopt;
  out = abc.value_or(0);
  return abc.has_value();
}

// dilation * (k - 1) + 1: the extent of the dilated kernel, or false on overflow.
bool span(int64_t dilation, int64_t k, int64_t& out) {
  const std::optional<int64_t> d = checked_mul(dilation, k - 1);
  const std::optional<int64_t> s = d ? checked_add(*d, 1) : std::nullopt;
  out = s.value_or(0);
  return s.has_value();
}

// Whether `st` are the strides of a C-contiguous (n, c, h, w) tensor; a dimension of size 1 may
// have any stride (numpy's and torch's contiguity tests say the same).
// (Sizes too large for the products are refused too: the CUDA kernels could not index them.)
bool dense(const NchwStrides& st, int64_t n, int64_t c, int64_t h, int64_t w) {
  const std::optional<int64_t> hw = checked_mul(h, w);
  const std::optional<int64_t> chw = hw ? checked_mul(c, *hw) : std::nullopt;
  if (!chw) return false;
  return (n <= 1 || st.n == *chw) && (c <= 1 || st.c == *hw) && (h <= 1 || st.h == w) &&
         (w <= 1 || st.w == 1);
}

}  // namespace

void check_conv2d_shape(const Conv2dShape& s) {
  require(s.N >= 0 && s.C >= 0 && s.H >= 0 && s.W >= 0, "x: sizes must be non-negative");
  require(s.M >= 0, "weight: sizes must be non-negative");
  require(s.KH >= 1 && s.KW >= 1, "weight: kernel size must be positive");
  require(s.KH <= kConvMaxTaps && s.KW <= kConvMaxTaps && s.KH * s.KW <= kConvMaxTaps,
          "weight: kernels of more than " + std::to_string(kConvMaxTaps) +
              " taps are not supported (" + std::to_string(s.KH) + "x" + std::to_string(s.KW) +
              ")");
  require(s.stride_h >= 1 && s.stride_w >= 1, "stride: must be positive");
  require(s.dilation_h >= 1 && s.dilation_w >= 1, "dilation: must be positive");
  require(s.pad_top >= 0 && s.pad_left >= 0 && s.pad_bottom >= 0 && s.pad_right >= 0,
          "padding: must be non-negative");
  require(s.groups >= 1, "groups: must be positive");
  require(s.C % s.groups == 0, "groups: must divide the input channels (" +
                                   std::to_string(s.groups) + " does not divide " +
                                   std::to_string(s.C) + ")");
  require(s.M % s.groups == 0, "groups: must divide the output channels (" +
                                   std::to_string(s.groups) + " does not divide " +
                                   std::to_string(s.M) + ")");
  int64_t t = 0;
  require(sum3(s.H, s.pad_top, s.pad_bottom, t) && sum3(s.W, s.pad_left, s.pad_right, t),
          "padding: the padded input's size overflows a 64-bit integer");
  require(span(s.dilation_h, s.KH, t) && span(s.dilation_w, s.KW, t),
          "dilation: the dilated kernel's size overflows a 64-bit integer");
}

bool conv2d_output_size(Conv2dShape& s) {
  int64_t hp = 0, wp = 0, kh = 0, kw = 0;  // check_conv2d_shape() made these overflow-free
  sum3(s.H, s.pad_top, s.pad_bottom, hp);
  sum3(s.W, s.pad_left, s.pad_right, wp);
  span(s.dilation_h, s.KH, kh);
  span(s.dilation_w, s.KW, kw);
  if (hp < kh || wp < kw) {
    s.OH = s.OW = 0;
    return false;
  }
  s.OH = (hp - kh) / s.stride_h + 1;
  s.OW = (wp - kw) / s.stride_w + 1;
  return true;
}

void check_conv2d(const Conv2dParams& p, Device device) {
  check_conv2d_shape(p.shape);
  Conv2dShape s = p.shape;
  require(conv2d_output_size(s),
          "x: the (dilated) kernel is larger than the padded input: empty output");
  require(s.OH == p.shape.OH && s.OW == p.shape.OW,
          "out: shape does not match the convolution's (OH, OW) = (" + std::to_string(s.OH) + ", " +
              std::to_string(s.OW) + ")");
  if (device == Device::cpu) {
    require(p.dtype == DType::f32, "x: the CPU kernel takes float32");
  } else {
    // The CUDA kernels index dense NCHW tensors.
    require(dense(p.x_stride, s.N, s.C, s.H, s.W), "x: must be C-contiguous on CUDA");
    require(dense(p.y_stride, s.N, s.M, s.OH, s.OW), "out: must be C-contiguous on CUDA");
  }
  const bool reads = s.N > 0 && s.C > 0 && s.H > 0 && s.W > 0, writes = s.N > 0 && s.M > 0;
  require(!reads || p.x != nullptr, "x: null pointer");
  require(!writes || (p.weight != nullptr && p.y != nullptr), "weight, out: null pointer");
}

}  // namespace mmfast
