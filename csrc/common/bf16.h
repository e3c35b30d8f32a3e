// bfloat16 (1 sign, 8 exponent, 7 stored mantissa bits: float32's upper half) in baseline code:
// the scalar conversions every bf16 path shares, so the packing, the portable fallback and the
// tests all round the same way. The AVX512-BF16 kernels use the hardware conversion
// (VCVTNE2PS2BF16), which rounds the same way for normal numbers; it also flushes denormal
// inputs to zero (DAZ), which the error bounds in the kernels' headers account for.
#pragma once

#include <cstdint>
#include <cstring>

namespace mmfast {

// float32 -> bfloat16 bits, round to nearest, ties to even (relative error <= 2^-8, the unit
// roundoff of an 8-bit significand). NaN stays a (quiet) NaN; overflow past bf16's largest
// finite value rounds to infinity, as RNE must.
inline uint16_t bf16_from_float(float f) {
  uint32_t u = 0;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// bfloat16 bits -> float32 (exact).
inline float bf16_to_float(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f = 0.0f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// f rounded to the nearest bfloat16, as a float32 (the portable fallback's input rounding).
inline float bf16_round(float f) { return bf16_to_float(bf16_from_float(f)); }

// Two bfloat16 values in one 32-bit word, the K-pair layout VDPBF16PS reads: `lo` is the even
// element of the pair (bits 0..15), `hi` the odd one.
inline uint32_t bf16_pair(uint16_t lo, uint16_t hi) {
  return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
}

}  // namespace mmfast
