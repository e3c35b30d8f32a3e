#include "common/parallel.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "common/pool_scope.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MMFAST_PAUSE() _mm_pause()
#else
#define MMFAST_PAUSE() std::this_thread::yield()
#endif

namespace mmfast {
namespace {

thread_local bool tl_in_worker = false;
thread_local int tl_thread_index = 0;

int default_threads() {
  if (const char* env = std::getenv("MMFAST_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n >= 1) return std::min(n, kMaxThreads);
  }
  cpu_set_t set;
  CPU_ZERO(&set);
  // Respect the affinity mask (taskset, containers), not just the machine's core count.
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

}  // namespace

// Work is handed out as chunks claimed from one atomic word: job id (24 bits), next chunk
// (20 bits) and chunk count (20 bits). A worker can only claim a chunk of the job it woke for
// while that job still has unclaimed chunks, and the caller waits for every chunk to be *done*
// (not for every worker to turn up): a worker that wakes late, or is descheduled on a busy
// machine, never holds up a job it took no chunk of. Job fields are written before the word is
// published (release) and stay valid until the last chunk is done.
class Pool {
 public:
  static constexpr int64_t kMaxChunks = (int64_t{1} << 20) - 1;

  // Throws std::runtime_error if the threads cannot be created (after stopping those that were).
  explicit Pool(int nthreads) : nthreads_(std::max(1, nthreads)) {
    try {
      for (int i = 1; i < nthreads_; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
    } catch (const std::system_error& e) {
      stop();  // the members the started workers wait on must outlive them
      throw std::runtime_error("set_num_threads: cannot start " + std::to_string(nthreads_) +
                               " threads (" + e.what() + ")");
    }
  }
  ~Pool() { stop(); }
  int size() const { return nthreads_; }

 private:
  void stop() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

 public:
  void run(int64_t n, int64_t grain, RangeFn fn, void* ctx) {
    if (n / grain >= kMaxChunks) grain = (n + kMaxChunks - 1) / kMaxChunks;
    const int64_t nchunks = (n + grain - 1) / grain;
    std::unique_lock<std::mutex> job_lock(job_mu_, std::try_to_lock);
    if (nthreads_ == 1 || nchunks <= 1 || tl_in_worker || !job_lock.owns_lock()) {
      fn(ctx, 0, n);
      return;
    }
    fn_ = fn;
    ctx_ = ctx;
    n_ = n;
    grain_ = grain;
    done_.store(0, std::memory_order_relaxed);
    job_ = (job_ + 1) & 0xffffff;
    state_.store((job_ << 40) | static_cast<uint64_t>(nchunks), std::memory_order_release);
    {
      std::lock_guard<std::mutex> lk(mu_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    tl_in_worker = true;
    work(job_);
    tl_in_worker = false;
    // Wait for chunks still running on workers; yield so a descheduled worker sharing this
    // core can finish them.
    for (int i = 0; done_.load(std::memory_order_acquire) < nchunks; ++i) {
      if (i < 2000)
        MMFAST_PAUSE();
      else
        std::this_thread::yield();
    }
  }

 private:
  void work(uint64_t job) {
    for (;;) {
      uint64_t v = state_.load(std::memory_order_acquire);
      const uint64_t total = v & 0xfffff, next = (v >> 20) & 0xfffff;
      if ((v >> 40) != job || next >= total) return;
      if (!state_.compare_exchange_weak(v, v + (uint64_t{1} << 20), std::memory_order_acq_rel))
        continue;
      const int64_t begin = static_cast<int64_t>(next) * grain_;
      fn_(ctx_, begin, std::min(n_, begin + grain_));
      done_.fetch_add(1, std::memory_order_release);
    }
  }

  void worker_loop(int index) {
    tl_in_worker = true;
    tl_thread_index = index;
    uint64_t seen = 0;
    for (;;) {
      // Spin briefly (kernel calls often come in runs), then sleep: long spinning would steal
      // the core from other work on a busy machine.
      bool woke = false;
      for (int i = 0; i < 4000; ++i) {
        if (generation_.load(std::memory_order_acquire) != seen) {
          woke = true;
          break;
        }
        MMFAST_PAUSE();
      }
      if (!woke) {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      }
      {
        std::lock_guard<std::mutex> lk(mu_);
        seen = generation_.load(std::memory_order_acquire);
        if (stop_) return;
      }
      work(state_.load(std::memory_order_acquire) >> 40);
    }
  }

  const int nthreads_;
  std::vector<std::thread> workers_;
  std::mutex job_mu_;  // one job at a time; other callers run inline
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<uint64_t> state_{0};  // job << 40 | next << 20 | total
  std::atomic<int64_t> done_{0};
  uint64_t job_ = 0;  // written only by the caller holding job_mu_
  bool stop_ = false;
  RangeFn fn_ = nullptr;
  void* ctx_ = nullptr;
  int64_t n_ = 0;
  int64_t grain_ = 1;
};

namespace {

// The current pool. Every user holds a reference for as long as it runs on it, so
// set_num_threads() can swap in a new pool at any time: the old one finishes the jobs running
// on it and is destroyed (its workers joined) when its last user lets go. Heap-allocated and
// never destroyed at exit: joining threads during interpreter teardown hangs.
std::mutex& g_pool_mu = *new std::mutex;
std::shared_ptr<Pool>& g_pool = *new std::shared_ptr<Pool>;
int g_requested = 0;
// The pool a PoolScope pinned for this thread (null: use the current one).
thread_local std::shared_ptr<Pool>* tl_pinned = nullptr;

void child_after_fork();

// Registered once, before any pool exists (whichever of current_pool() and set_num_threads()
// makes the first one): a child of fork() must never inherit a pool whose threads it lacks.
void register_fork_handler() {
  static std::once_flag once;
  std::call_once(once, [] { pthread_atfork(nullptr, nullptr, child_after_fork); });
}

void child_after_fork() {
  // The worker threads do not exist in the child: forget the pool (leak it, never run its
  // destructor: it would join threads that are not there) and the lock state, and build a
  // fresh one on first use.
  new (&g_pool_mu) std::mutex();
  new (&g_pool) std::shared_ptr<Pool>();
  tl_pinned = nullptr;
}

std::shared_ptr<Pool> current_pool() {
  if (tl_pinned) return *tl_pinned;
  std::lock_guard<std::mutex> lk(g_pool_mu);
  if (!g_pool) {
    register_fork_handler();
    g_pool = std::make_shared<Pool>(g_requested > 0 ? g_requested : default_threads());
  }
  return g_pool;
}

}  // namespace

PoolScope::PoolScope() : pool_(current_pool()), previous_(tl_pinned) { tl_pinned = &pool_; }

PoolScope::~PoolScope() { tl_pinned = previous_; }

int PoolScope::num_threads() const { return pool_->size(); }

void parallel_for_raw(int64_t n, int64_t grain, RangeFn fn, void* ctx) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const std::shared_ptr<Pool> pool = current_pool();  // alive until this job is done
  pool->run(n, grain, fn, ctx);
}

int get_num_threads() { return current_pool()->size(); }

int current_thread_index() { return tl_thread_index; }

void set_num_threads(int n) {
  register_fork_handler();
  n = std::max(1, n);
  {
    std::lock_guard<std::mutex> lk(g_pool_mu);
    if (g_pool && g_pool->size() == n) return;  // nothing to change
  }
  auto fresh = std::make_shared<Pool>(n);
  std::shared_ptr<Pool> old;
  {
    std::lock_guard<std::mutex> lk(g_pool_mu);
    g_requested = n;
    old = std::move(g_pool);
    g_pool = std::move(fresh);
  }
  // `old` is released here, outside the lock: if no job runs on it, its workers are joined now;
  // otherwise by the last job's caller when that job is done.
}

}  // namespace mmfast
