// Size arithmetic that cannot wrap: every op's size computations go through these, so an absurd
// argument (a padding of 2^61, say) is refused instead of sizing a buffer too small.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>

namespace mmfast {

// a + b and a * b, or nullopt if the result does not fit in int64.
inline std::optional<int64_t> checked_add(int64_t a, int64_t b) {
  int64_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}
inline std::optional<int64_t> checked_mul(int64_t a, int64_t b) {
  int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}

// The same, throwing std::invalid_argument(what) (ValueError in Python) on overflow: for sizes
// whose overflow is the caller's argument's fault.
inline int64_t add_or_throw(int64_t a, int64_t b, const char* what) {
  const std::optional<int64_t> r = checked_add(a, b);
  if (!r) throw std::invalid_argument(what);
  return *r;
}
inline int64_t mul_or_throw(int64_t a, int64_t b, const char* what) {
  const std::optional<int64_t> r = checked_mul(a, b);
  if (!r) throw std::invalid_argument(what);
  return *r;
}

}  // namespace mmfast
