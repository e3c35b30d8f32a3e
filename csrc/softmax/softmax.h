// Row-wise softmax / log-softmax kernel parameters.
#pragma once

#include <cstdint>

namespace mmfast {

// y[r, :] = softmax(x[r, :]) (or log_softmax) for each of `rows` rows of length `cols`.
struct SoftmaxParams {
  const float* x = nullptr;
  float* y = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t x_row_stride = 0;  // elements between rows; the last dim is contiguous
  int64_t y_row_stride = 0;
  bool log = false;
};

}  // namespace mmfast
