#include "dispatch/dispatch.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

#include "common/cpu_features.h"
#ifdef MMFAST_HAVE_AVX512BF16
#include "attention/attention_cpu_bf16.h"
#include "conv2d/conv2d_cpu_bf16.h"
#endif

namespace mmfast {

#ifdef MMFAST_HAVE_AVX512
namespace avx512 {
const KernelTable& kernel_table();
}
#endif
#ifdef MMFAST_HAVE_AVX2
namespace avx2 {
const KernelTable& kernel_table();
}
#endif
namespace portable {
const KernelTable& kernel_table();
}

namespace {

struct Variant {
  const char* name;
  const KernelTable& (*table)();
  bool (*runnable)();
};

bool always() { return true; }

const std::vector<Variant>& variants() {
  static const std::vector<Variant> v = {
#ifdef MMFAST_HAVE_AVX512
      {"avx512", &avx512::kernel_table, &cpu_can_run_avx512},
#endif
#ifdef MMFAST_HAVE_AVX2
      {"avx2", &avx2::kernel_table, &cpu_can_run_avx2},
#endif
      {"portable", &portable::kernel_table, &always},
  };
  return v;
}

const Variant* find(const std::string& name) {
  for (const Variant& v : variants())
    if (name == v.name) return &v;
  return nullptr;
}

const KernelTable* initial() {
  // An unusable MMFAST_KERNEL is ignored here (import must not fail); set_variant() reports it.
  if (const char* env = std::getenv("MMFAST_KERNEL")) {
    const Variant* v = find(env);
    if (v && v->runnable()) return &v->table();
  }
  for (const Variant& v : variants())
    if (v.runnable()) return &v.table();
  return &portable::kernel_table();
}

std::atomic<const KernelTable*> g_active{nullptr};

}  // namespace

std::vector<std::string> compiled_variants() {
  std::vector<std::string> out;
  for (const Variant& v : variants()) out.emplace_back(v.name);
  return out;
}

std::vector<std::string> runnable_variants() {
  std::vector<std::string> out;
  for (const Variant& v : variants())
    if (v.runnable()) out.emplace_back(v.name);
  return out;
}

const KernelTable& kernels() {
  const KernelTable* t = g_active.load(std::memory_order_acquire);
  if (!t) {
    t = initial();
    g_active.store(t, std::memory_order_release);
  }
  return *t;
}

const Bf16KernelTable* bf16_kernels() {
#if defined(MMFAST_HAVE_AVX512BF16) && defined(MMFAST_HAVE_AVX512)
  static const Bf16KernelTable table = {"avx512bf16", &avx512bf16::conv2d_bf16,
                                        &avx512bf16::attention_bf16};
  static const bool runnable = cpu_can_run_avx512() && cpu_features().avx512_bf16;
  if (runnable && &kernels() == &avx512::kernel_table()) return &table;
#endif
  return nullptr;
}

void set_variant(const std::string& name) {
  const Variant* v = find(name);
  if (!v) throw std::invalid_argument("variant: '" + name + "' is not compiled into this build");
  if (!v->runnable()) throw std::invalid_argument("variant: this CPU cannot run '" + name + "'");
  g_active.store(&v->table(), std::memory_order_release);
}

}  // namespace mmfast
