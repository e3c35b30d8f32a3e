// CPU feature detection (CPUID + XGETBV), used to pick the kernel variant at run time.
#pragma once

namespace mmfast {

struct CpuFeatures {
  bool sse2 = false;
  bool avx = false;
  bool fma = false;
  bool f16c = false;
  bool avx2 = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512dq = false;
  bool avx512vl = false;
  bool avx512_bf16 = false;
  bool avx512_vnni = false;
  bool amx_tile = false;
  bool amx_bf16 = false;
  // The OS saves the wider register state (XCR0): without it the instructions fault even
  // when CPUID lists them (e.g. a hypervisor that hides AVX-512 state).
  bool os_avx = false;
  bool os_avx512 = false;
  bool os_amx = false;
};

// Detected once, then cached. Never throws.
const CpuFeatures& cpu_features();

// True when every instruction the AVX2 / AVX-512 variants are compiled for is usable.
bool cpu_can_run_avx2();
bool cpu_can_run_avx512();

}  // namespace mmfast
