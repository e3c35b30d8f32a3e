// Scratch memory for kernels, reused across calls so the hot path does not allocate.
#pragma once

#include <cstddef>

namespace mmfast {

// A 64-byte-aligned buffer of at least `floats` floats, owned by the calling thread and grown
// on demand (never shrunk). Valid until this thread's next call. Each calling thread has its
// own, so concurrent callers (GIL released) never share scratch. Throws std::bad_alloc.
float* thread_workspace(size_t floats);

// While one lives, the calling thread's workspace is kept; when it is destroyed, a workspace
// grown past kKeepWorkspaceBytes is freed, so a one-off huge call (an absurd padding, a giant
// image) does not pin that memory to the thread for good. (256 MB: a steady stream of large
// convolutions keeps its buffer; one that needs more pays a reallocation, small next to it.)
constexpr size_t kKeepWorkspaceBytes = size_t{256} << 20;
class WorkspaceTrim {
 public:
  WorkspaceTrim() = default;
  ~WorkspaceTrim();
  WorkspaceTrim(const WorkspaceTrim&) = delete;
  WorkspaceTrim& operator=(const WorkspaceTrim&) = delete;
};

// Bytes the calling thread's workspace holds now (tests and diagnostics).
size_t thread_workspace_bytes();

}  // namespace mmfast
