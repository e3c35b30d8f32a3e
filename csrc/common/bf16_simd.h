// AVX512-BF16 helpers for the bf16 kernels (conv2d_cpu_bf16.cpp, attention_cpu_bf16.cpp). Only
// for translation units compiled with -mavx512bf16 and MMFAST_VARIANT=avx512bf16 (see
// common/variant.h): everything here lives in mmfast::avx512bf16, never shared with a TU that
// may run on a CPU without these instructions.
#pragma once

#if !defined(__AVX512BF16__) || !defined(__AVX512BW__)
#error "bf16_simd.h needs -mavx512bf16 -mavx512bw"
#endif

#include <cstdint>

// GCC 12 warns inside its own avx512fintrin.h (GCC bug 105593), as in common/simd.h.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include "common/variant.h"

namespace mmfast {
namespace MMFAST_VARIANT {

// acc[i] += a.bf16[2i] * b.bf16[2i] + a.bf16[2i+1] * b.bf16[2i+1] (VDPBF16PS): a and b hold
// sixteen 32-bit words, each a K pair of bf16 values.
inline __m512 dot_pairs(__m512 acc, __m512i a, __m512i b) {
  return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);
}

// Sixteen words (bf16(lo[j]), bf16(hi[j])): the K-pair layout of two float32 rows, rounded to
// nearest even (VCVTNE2PS2BF16 gives [lo | hi] as two runs of 16; VPERMW interleaves them).
inline __m512i pack_pairs(__m512 lo, __m512 hi) {
  const __m512i runs = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
  const __m512i interleave =
      _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                       21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return _mm512_permutexvar_epi16(interleave, runs);
}

inline __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff)
                 : static_cast<__mmask16>((1u << static_cast<unsigned>(n > 0 ? n : 0)) - 1u);
}

}  // namespace MMFAST_VARIANT
}  // namespace mmfast
