// A small persistent thread pool for the CPU kernels.
//
// Why our own pool instead of OpenMP: the process also hosts ONNX Runtime's and maybe
// PyTorch's pools; OpenMP's spinning workers fight them on small machines, and a second
// libgomp in the process is a known source of trouble. This pool blocks its workers
// after a short spin, survives fork(), and runs a job inline when called from one of its
// own workers or while another thread's job is running (so concurrent callers with the GIL
// released never deadlock).
//
// The interface is a plain function pointer + context so that kernel translation units
// compiled with different -m flags share no inline template code with this file.
#pragma once

#include <cstdint>

namespace mmfast {

// fn(ctx, begin, end) is called on disjoint [begin, end) ranges covering [0, n).
// Ranges are chunks of `grain` items (the last may be shorter). Exceptions must not
// escape fn (kernels don't throw).
using RangeFn = void (*)(void* ctx, int64_t begin, int64_t end);
void parallel_for_raw(int64_t n, int64_t grain, RangeFn fn, void* ctx);

// Index of the calling thread within the running job: 1..n-1 for pool workers, 0 for any other
// thread (the caller that runs a job takes part as 0; a job run inline runs wholly on its
// caller, as 0). Kernels use it to pick a per-thread slice of a workspace owned by the caller.
int current_thread_index();

// At most this many threads (set_num_threads refuses more; MMFAST_NUM_THREADS is clamped).
constexpr int kMaxThreads = 1024;

// Threads used by the kernels (workers + the calling thread).
int get_num_threads();
// n >= 1. Swaps in a new pool of n threads; safe at any time: jobs already running finish on the
// pool they started on, which is destroyed after them.
void set_num_threads(int n);

}  // namespace mmfast
