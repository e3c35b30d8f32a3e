// A minimal float-vector type for the kernel variants: 16 lanes under AVX-512, 8 under AVX2,
// 1 (plain scalar code, left to the compiler) in the portable build. Include only from
// variant TUs (see variant.h): everything here is in the variant's namespace.
#pragma once

#include <cstdint>

#if defined(__AVX512F__) || defined(__AVX2__)
// GCC 12 warns inside its own avx512fintrin.h (_mm512_undefined_* passed through): a known
// false positive (GCC bug 105593), silenced for that header only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

#include "common/variant.h"

namespace mmfast {
namespace MMFAST_VARIANT {

#if defined(__AVX512F__)
struct VecF {
  static constexpr int kWidth = 16;
  __m512 v;
  static VecF load(const float* p) { return {_mm512_loadu_ps(p)}; }
  // Loads n < kWidth floats, the other lanes set to `fill`.
  static VecF load_partial(const float* p, int n, float fill) {
    const __mmask16 m = static_cast<__mmask16>((1u << n) - 1u);
    return {_mm512_mask_loadu_ps(_mm512_set1_ps(fill), m, p)};
  }
  static VecF set1(float x) { return {_mm512_set1_ps(x)}; }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  void store_partial(float* p, int n) const {
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1u), v);
  }
  friend VecF operator+(VecF a, VecF b) { return {_mm512_add_ps(a.v, b.v)}; }
  friend VecF operator-(VecF a, VecF b) { return {_mm512_sub_ps(a.v, b.v)}; }
  friend VecF operator*(VecF a, VecF b) { return {_mm512_mul_ps(a.v, b.v)}; }
  friend VecF operator/(VecF a, VecF b) { return {_mm512_div_ps(a.v, b.v)}; }
  friend VecF max(VecF a, VecF b) { return {_mm512_max_ps(a.v, b.v)}; }
  friend VecF fmadd(VecF a, VecF b, VecF c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
  float reduce_add() const { return _mm512_reduce_add_ps(v); }
  float reduce_max() const { return _mm512_reduce_max_ps(v); }
  VecF round() const { return {_mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT)}; }
  // 2^n for integral-valued n in [-126, 127].
  static VecF pow2i(VecF n) {
    __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(n.v), _mm512_set1_epi32(127));
    return {_mm512_castsi512_ps(_mm512_slli_epi32(e, 23))};
  }
  // Lanes where a < b take `x`, the others keep this vector.
  VecF where_less(VecF a, VecF b, VecF x) const {
    return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ), v, x.v)};
  }
  VecF where_greater(VecF a, VecF b, VecF x) const {
    return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.v, b.v, _CMP_GT_OQ), v, x.v)};
  }
};
#elif defined(__AVX2__)
struct VecF {
  static constexpr int kWidth = 8;
  __m256 v;
  static __m256i tail_mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static VecF load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static VecF load_partial(const float* p, int n, float fill) {
    const __m256i m = tail_mask(n);
    return {
        _mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m))};
  }
  static VecF set1(float x) { return {_mm256_set1_ps(x)}; }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  void store_partial(float* p, int n) const { _mm256_maskstore_ps(p, tail_mask(n), v); }
  friend VecF operator+(VecF a, VecF b) { return {_mm256_add_ps(a.v, b.v)}; }
  friend VecF operator-(VecF a, VecF b) { return {_mm256_sub_ps(a.v, b.v)}; }
  friend VecF operator*(VecF a, VecF b) { return {_mm256_mul_ps(a.v, b.v)}; }
  friend VecF operator/(VecF a, VecF b) { return {_mm256_div_ps(a.v, b.v)}; }
  friend VecF max(VecF a, VecF b) { return {_mm256_max_ps(a.v, b.v)}; }
  friend VecF fmadd(VecF a, VecF b, VecF c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
  float reduce_add() const {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  float reduce_max() const {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  VecF round() const { return {_mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
  static VecF pow2i(VecF n) {
    __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n.v), _mm256_set1_epi32(127));
    return {_mm256_castsi256_ps(_mm256_slli_epi32(e, 23))};
  }
  VecF where_less(VecF a, VecF b, VecF x) const {
    return {_mm256_blendv_ps(v, x.v, _mm256_cmp_ps(a.v, b.v, _CMP_LT_OQ))};
  }
  VecF where_greater(VecF a, VecF b, VecF x) const {
    return {_mm256_blendv_ps(v, x.v, _mm256_cmp_ps(a.v, b.v, _CMP_GT_OQ))};
  }
};
#else
// Portable: 8 lanes of plain C++ loops. GCC/Clang vectorise them for the baseline ISA (SSE2 on
// x86-64, NEON on arm64), and 8 partial sums keep reductions as accurate as the SIMD variants.
struct VecF {
  static constexpr int kWidth = 8;
  float v[8];
  static VecF load(const float* p) {
    VecF r;
    for (int i = 0; i < 8; ++i) r.v[i] = p[i];
    return r;
  }
  static VecF load_partial(const float* p, int n, float fill) {
    VecF r;
    for (int i = 0; i < 8; ++i) r.v[i] = i < n ? p[i] : fill;
    return r;
  }
  static VecF set1(float x) {
    VecF r;
    for (int i = 0; i < 8; ++i) r.v[i] = x;
    return r;
  }
  void store(float* p) const {
    for (int i = 0; i < 8; ++i) p[i] = v[i];
  }
  void store_partial(float* p, int n) const {
    for (int i = 0; i < n; ++i) p[i] = v[i];
  }
  template <class Op>
  static VecF map2(VecF a, VecF b, Op op) {
    VecF r;
    for (int i = 0; i < 8; ++i) r.v[i] = op(a.v[i], b.v[i]);
    return r;
  }
  friend VecF operator+(VecF a, VecF b) {
    return map2(a, b, [](float x, float y) { return x + y; });
  }
  friend VecF operator-(VecF a, VecF b) {
    return map2(a, b, [](float x, float y) { return x - y; });
  }
  friend VecF operator*(VecF a, VecF b) {
    return map2(a, b, [](float x, float y) { return x * y; });
  }
  friend VecF operator/(VecF a, VecF b) {
    return map2(a, b, [](float x, float y) { return x / y; });
  }
  // Returns b when either is NaN, like the x86 max instructions.
  friend VecF max(VecF a, VecF b) {
    return map2(a, b, [](float x, float y) { return x > y ? x : y; });
  }
  friend VecF fmadd(VecF a, VecF b, VecF c) { return a * b + c; }
  float reduce_add() const {
    return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
  }
  float reduce_max() const {
    float m = v[0];
    for (int i = 1; i < 8; ++i) m = v[i] > m ? v[i] : m;
    return m;
  }
  VecF round() const {
    VecF r;
    for (int i = 0; i < 8; ++i) r.v[i] = __builtin_nearbyintf(v[i]);
    return r;
  }
  static VecF pow2i(VecF n) {
    VecF r;
    for (int i = 0; i < 8; ++i) {
      // NaN never reaches the float->int cast (undefined behaviour); its lane is NaN anyway.
      const int32_t e = (n.v[i] == n.v[i] ? static_cast<int32_t>(n.v[i]) : 0) + 127;
      const uint32_t bits = static_cast<uint32_t>(e) << 23;
      __builtin_memcpy(&r.v[i], &bits, sizeof(float));
    }
    return r;
  }
  VecF where_less(VecF a, VecF b, VecF x) const {
    VecF r;
    for (int i = 0; i < 8; ++i) r.v[i] = a.v[i] < b.v[i] ? x.v[i] : v[i];
    return r;
  }
  VecF where_greater(VecF a, VecF b, VecF x) const {
    VecF r;
    for (int i = 0; i < 8; ++i) r.v[i] = a.v[i] > b.v[i] ? x.v[i] : v[i];
    return r;
  }
};
#endif

#if defined(__AVX512F__)
// r[i][k] <- r[k][i]: a 16 × 16 float tile transposed in registers (unpack within 128-bit
// lanes, then shuffle 128-bit lanes), used where a kernel reorders between lanes-over-positions and
// lanes-over-channels (attention's Qᵀ/Oᵀ packing, the Winograd conv's channel-blocked input).
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
  }
}
#endif

// exp(x) to ~2 ulp for x in [-87, 88.37]: x = n·ln2 + r with |r| <= ln2/2 (Cody-Waite split of
// ln2), e^r by the degree-6 polynomial of Cephes expf, times 2^n built in the exponent bits
// (n in [-126, 127], so no denormals). Below -87 the result is 0 (true value < 1.7e-38; -inf,
// i.e. a masked logit, gives 0), above 88.37 it is +inf, and NaN stays NaN (max() returns its
// second operand when either is NaN).
inline VecF exp(VecF x) {
  const VecF lo = VecF::set1(-87.0f), hi = VecF::set1(88.3762626647949f);
  const VecF xc = max(lo, x).where_greater(x, hi, hi);
  const VecF n = (xc * VecF::set1(1.44269504088896341f)).round();
  VecF r = fmadd(n, VecF::set1(-0.693359375f), xc);
  r = fmadd(n, VecF::set1(2.12194440e-4f), r);
  VecF p = VecF::set1(1.9875691500e-4f);
  p = fmadd(p, r, VecF::set1(1.3981999507e-3f));
  p = fmadd(p, r, VecF::set1(8.3334519073e-3f));
  p = fmadd(p, r, VecF::set1(4.1665795894e-2f));
  p = fmadd(p, r, VecF::set1(1.6666665459e-1f));
  p = fmadd(p, r, VecF::set1(5.0000001201e-1f));
  p = fmadd(p * r, r, r) + VecF::set1(1.0f);
  VecF y = p * VecF::pow2i(n);
  y = y.where_less(x, lo, VecF::set1(0.0f));
  return y.where_greater(x, hi, VecF::set1(__builtin_inff()));
}

// tanh(x) to ~4 ulp (relative) over all floats: Eigen's rational approximation
// x·P(x²)/Q(x²) (odd degree 13 over even degree 6) on x clamped to ±7.9053111 (where float
// tanh rounds to ±1). Small x keep full relative accuracy (no 1 - e^-2x cancellation); NaN
// stays NaN. Used by attention's softcap.
inline VecF tanh(VecF x) {
  const VecF lim = VecF::set1(7.90531110763549805f), nlim = VecF::set1(-7.90531110763549805f);
  const VecF xc = max(nlim, x).where_greater(x, lim, lim);
  const VecF x2 = xc * xc;
  VecF p = VecF::set1(-2.76076847742355e-16f);
  p = fmadd(p, x2, VecF::set1(2.00018790482477e-13f));
  p = fmadd(p, x2, VecF::set1(-8.60467152213735e-11f));
  p = fmadd(p, x2, VecF::set1(5.12229709037114e-08f));
  p = fmadd(p, x2, VecF::set1(1.48572235717979e-05f));
  p = fmadd(p, x2, VecF::set1(6.37261928875436e-04f));
  p = fmadd(p, x2, VecF::set1(4.89352455891786e-03f));
  VecF q = VecF::set1(1.19825839466702e-06f);
  q = fmadd(q, x2, VecF::set1(1.18534705686654e-04f));
  q = fmadd(q, x2, VecF::set1(2.26843463243900e-03f));
  q = fmadd(q, x2, VecF::set1(4.89352518554385e-03f));
  return (p * xc) / q;
}

}  // namespace MMFAST_VARIANT
}  // namespace mmfast
