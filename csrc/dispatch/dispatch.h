// Picks the CPU kernel variant at run time: the best one the CPU (and OS) supports, unless
// MMFAST_KERNEL (env) or set_variant() asks for another.
#pragma once

#include <string>
#include <vector>

#include "dispatch/kernel_table.h"

namespace mmfast {

// Variants compiled into this build, best first (e.g. {"avx512", "avx2", "portable"}).
std::vector<std::string> compiled_variants();
// Compiled variants this CPU can run, best first.
std::vector<std::string> runnable_variants();
// The table in use.
const KernelTable& kernels();
// Throws std::invalid_argument for an unknown / not compiled / not runnable variant.
void set_variant(const std::string& name);
// The AVX512-BF16 kernels when this build has them, the CPU (and OS) can run them and the
// active variant is "avx512" (so MMFAST_KERNEL / set_variant("avx2") also turn them off);
// null otherwise: the caller runs the portable fallback.
const Bf16KernelTable* bf16_kernels();

}  // namespace mmfast
