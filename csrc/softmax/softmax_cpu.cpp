// Row-wise softmax / log-softmax: the decoders' token distribution (beam search scores in
// log space) and a check of the vectorised exp the attention kernel builds on.
#include "common/simd.h"
#include "softmax/softmax.h"

namespace mmfast {
namespace MMFAST_VARIANT {
namespace {

constexpr int W = VecF::kWidth;

// Two passes over the row (max, then sum of exp), a third to write: the row stays in L1/L2
// for the lengths we see (vocabularies of a few thousand).
void softmax_row(const float* x, float* y, int64_t n, bool log) {
  VecF vmax = VecF::set1(-__builtin_inff());
  int64_t i = 0;
  for (; i + W <= n; i += W) vmax = max(vmax, VecF::load(x + i));
  if (i < n)
    vmax = max(vmax, VecF::load_partial(x + i, static_cast<int>(n - i), -__builtin_inff()));
  const float m = vmax.reduce_max();
  const VecF vm = VecF::set1(m);

  VecF vsum = VecF::set1(0.0f);
  for (i = 0; i + W <= n; i += W) {
    const VecF e = exp(VecF::load(x + i) - vm);
    if (!log) e.store(y + i);
    vsum = vsum + e;
  }
  if (i < n) {
    const int t = static_cast<int>(n - i);
    const VecF e = exp(VecF::load_partial(x + i, t, -__builtin_inff()) - vm);
    if (!log) e.store_partial(y + i, t);
    vsum = vsum + e;
  }
  const float s = vsum.reduce_add();

  if (log) {
    // log_softmax = x - m - log(sum): no division, exact at the argmax.
    const VecF shift = VecF::set1(m + __builtin_logf(s));
    for (i = 0; i + W <= n; i += W) (VecF::load(x + i) - shift).store(y + i);
    if (i < n) {
      const int t = static_cast<int>(n - i);
      (VecF::load_partial(x + i, t, 0.0f) - shift).store_partial(y + i, t);
    }
  } else {
    const VecF inv = VecF::set1(1.0f / s);
    for (i = 0; i + W <= n; i += W) (VecF::load(y + i) * inv).store(y + i);
    if (i < n) {
      const int t = static_cast<int>(n - i);
      (VecF::load_partial(y + i, t, 0.0f) * inv).store_partial(y + i, t);
    }
  }
}

}  // namespace

void softmax(const SoftmaxParams& p) {
  // ~64 KiB of input per task: enough work to amortise a wake-up, fine enough to balance.
  if (p.rows <= 0 || p.cols <= 0) return;
  const int64_t grain = p.cols >= 16384 ? 1 : 16384 / p.cols;
  parallel_for(p.rows, grain, [&p](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      softmax_row(p.x + r * p.x_row_stride, p.y + r * p.y_row_stride, p.cols, p.log);
  });
}

}  // namespace MMFAST_VARIANT
}  // namespace mmfast
