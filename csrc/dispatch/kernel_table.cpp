// This variant's table of kernels (compiled once per variant, like every file here).
#include "dispatch/kernel_table.h"

#include "common/variant.h"

namespace mmfast {
namespace MMFAST_VARIANT {

void softmax(const SoftmaxParams& p);
void conv2d(const Conv2dParams& p, const Conv2dCpuPlan& plan);
void attention(const AttentionParams& p);
void conv2d_winograd(const Conv2dParams& p, const Conv2dWinogradPlan& plan);

const KernelTable& kernel_table();

#define MMFAST_STR2(x) #x
#define MMFAST_STR(x) MMFAST_STR2(x)

const KernelTable& kernel_table() {
  static const KernelTable table = {
      /*name=*/MMFAST_STR(MMFAST_VARIANT),
      /*softmax=*/&softmax,
      /*conv2d=*/&conv2d,
      /*attention=*/&attention,
      /*conv2d_winograd=*/&conv2d_winograd,
  };
  return table;
}

}  // namespace MMFAST_VARIANT
}  // namespace mmfast
