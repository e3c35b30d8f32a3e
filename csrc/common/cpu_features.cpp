#include "common/cpu_features.h"

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define MMFAST_X86 1
#include <cpuid.h>

#include <cstdint>
#endif

namespace mmfast {
namespace {

#ifdef MMFAST_X86
void cpuid(unsigned leaf, unsigned subleaf, unsigned r[4]) {
  __cpuid_count(leaf, subleaf, r[0], r[1], r[2], r[3]);
}

uint64_t xgetbv0() {
  uint32_t lo = 0, hi = 0;
  // Encoded XGETBV so this TU needs no -mxsave; only called when OSXSAVE is set.
  __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}
#endif

CpuFeatures detect() {
  CpuFeatures f;
#ifdef MMFAST_X86
  unsigned r[4] = {0, 0, 0, 0};
  cpuid(0, 0, r);
  const unsigned max_leaf = r[0];
  if (max_leaf < 1) return f;
  cpuid(1, 0, r);
  const unsigned ecx1 = r[2], edx1 = r[3];
  f.sse2 = (edx1 >> 26) & 1;
  f.fma = (ecx1 >> 12) & 1;
  f.f16c = (ecx1 >> 29) & 1;
  f.avx = (ecx1 >> 28) & 1;
  const bool osxsave = (ecx1 >> 27) & 1;
  if (osxsave) {
    const uint64_t xcr0 = xgetbv0();
    f.os_avx = (xcr0 & 0x6) == 0x6;          // SSE + AVX state
    f.os_avx512 = (xcr0 & 0xe6) == 0xe6;     // + opmask, ZMM_Hi256, Hi16_ZMM
    f.os_amx = (xcr0 & 0x60000) == 0x60000;  // XTILECFG + XTILEDATA
  }
  if (max_leaf >= 7) {
    cpuid(7, 0, r);
    const unsigned ebx7 = r[1], ecx7 = r[2], edx7 = r[3];
    f.avx2 = (ebx7 >> 5) & 1;
    f.avx512f = (ebx7 >> 16) & 1;
    f.avx512dq = (ebx7 >> 17) & 1;
    f.avx512bw = (ebx7 >> 30) & 1;
    f.avx512vl = (ebx7 >> 31) & 1;
    f.avx512_vnni = (ecx7 >> 11) & 1;
    f.amx_bf16 = (edx7 >> 22) & 1;
    f.amx_tile = (edx7 >> 24) & 1;
    cpuid(7, 1, r);
    f.avx512_bf16 = (r[0] >> 5) & 1;
  }
#endif
  return f;
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

bool cpu_can_run_avx2() {
  const CpuFeatures& f = cpu_features();
  return f.os_avx && f.avx && f.avx2 && f.fma && f.f16c;
}

bool cpu_can_run_avx512() {
  const CpuFeatures& f = cpu_features();
  return cpu_can_run_avx2() && f.os_avx512 && f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl;
}

}  // namespace mmfast
