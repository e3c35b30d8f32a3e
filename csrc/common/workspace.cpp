#include "common/workspace.h"

#include <cstdint>
#include <cstdlib>
#include <new>

namespace mmfast {
namespace {

struct Buffer {
  float* data = nullptr;
  size_t capacity = 0;
  ~Buffer() { std::free(data); }
};

thread_local Buffer tl_buffer;

}  // namespace

float* thread_workspace(size_t floats) {
  Buffer& b = tl_buffer;
  if (floats <= b.capacity) return b.data;
  // Grow by at least 1.5x so a sequence of slightly larger calls doesn't reallocate each time.
  size_t want = floats > b.capacity + b.capacity / 2 ? floats : b.capacity + b.capacity / 2;
  // A size whose byte count would wrap around is refused, never rounded into a small buffer.
  if (want > (SIZE_MAX - 63) / sizeof(float)) throw std::bad_alloc();
  const size_t bytes = ((want * sizeof(float) + 63) / 64) * 64;
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw std::bad_alloc();
  std::free(b.data);
  b.data = static_cast<float*>(p);
  b.capacity = bytes / sizeof(float);
  return b.data;
}

WorkspaceTrim::~WorkspaceTrim() {
  Buffer& b = tl_buffer;
  if (b.capacity * sizeof(float) > kKeepWorkspaceBytes) {
    std::free(b.data);
    b.data = nullptr;
    b.capacity = 0;
  }
}

size_t thread_workspace_bytes() { return tl_buffer.capacity * sizeof(float); }

}  // namespace mmfast
