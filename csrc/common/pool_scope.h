// PoolScope: pins the kernels' thread pool for the calling thread (see parallel.h). Its own
// header so that the per-variant kernel files, which include parallel.h, see no std::
// templates (common/variant.h says why).
#pragma once

#include <memory>

#include "common/parallel.h"

namespace mmfast {

// Pins the current pool for the calling thread while it lives: its parallel_for_raw calls run on
// that pool whatever set_num_threads() does meanwhile, so a workspace sized for num_threads()
// threads matches the threads that use it.
class Pool;
class PoolScope {
 public:
  PoolScope();
  ~PoolScope();
  PoolScope(const PoolScope&) = delete;
  PoolScope& operator=(const PoolScope&) = delete;
  int num_threads() const;

 private:
  std::shared_ptr<Pool> pool_;
  std::shared_ptr<Pool>* previous_;
};

}  // namespace mmfast
