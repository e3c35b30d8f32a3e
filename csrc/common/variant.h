// Each CPU kernel translation unit is compiled once per variant (avx512, avx2, portable),
// with that variant's -m flags and MMFAST_VARIANT set by CMake. Everything such a TU defines
// lives in namespace mmfast::MMFAST_VARIANT so the variants never share a symbol: an inline
// function compiled with AVX-512 flags must not be picked by the linker for the portable
// variant (that would fault on an older CPU). For the same reason these TUs avoid std::
// templates in kernel code; workspace comes from the dispatch layer as raw pointers.
#pragma once

#ifndef MMFAST_VARIANT
#error "MMFAST_VARIANT must be defined (avx512, avx2 or portable) by the build"
#endif

#include "common/parallel.h"

namespace mmfast {
namespace MMFAST_VARIANT {

// parallel_for over [0, n) in chunks of `grain`; f(begin, end). The lambda type is local to
// this TU, so the trampoline is too.
template <class F>
inline void parallel_for(int64_t n, int64_t grain, const F& f) {
  auto tramp = [](void* ctx, int64_t b, int64_t e) { (*static_cast<const F*>(ctx))(b, e); };
  ::mmfast::parallel_for_raw(n, grain, tramp, const_cast<F*>(&f));
}

}  // namespace MMFAST_VARIANT
}  // namespace mmfast
