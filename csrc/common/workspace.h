// Scratch memory for kernels, reused across calls so the hot path does not allocate.
#pragma once

#include <cstddef>

namespace mmfast {

// A 64-byte-aligned buffer of at least `floats` floats, owned by the calling thread and grown
// on demand (never shrunk). Valid until this thread's next call. Each calling thread has its
// own, so concurrent callers (GIL released) never share scratch. Throws std::bad_alloc.
float* thread_workspace(size_t floats);

}  // namespace mmfast
