#pragma once
// Dynamic scheduling for native CPU loops.
//
// at::parallel_for gives each thread one static slice of the range, so a thread that the OS
// deschedules (another job on the same cores) holds the whole loop until it runs again, while
// the other threads wait at the end of the region. parallel_for_dynamic cuts the range into
// chunks that the threads claim one at a time from a shared counter: a descheduled thread delays
// the loop by at most the chunk it holds, and the running threads take the rest. Pick chunks
// small enough that there are many per thread, large enough to amortise one atomic increment.

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace sparsenas {

// Threads that parallel_for_dynamic runs `chunks` chunks on: its `worker` ids are below this
// (size per-thread scratch with it).
inline int64_t dynamic_workers(int64_t chunks) {
  if (chunks <= 1 || at::in_parallel_region()) return 1;
  return std::clamp<int64_t>(at::get_num_threads(), 1, chunks);
}

// Calls fn(chunk_begin, chunk_end, worker) for the chunks [begin + c·chunk, ...) of [begin, end),
// each exactly once, on up to dynamic_workers(chunks) threads; `worker` identifies the calling
// thread (the same for every chunk it runs, distinct between threads running at the same time).
// Inside another parallel region the chunks run in order on the calling thread. An exception in
// fn stops the claiming of further chunks and is rethrown by at::parallel_for.
template <typename F>
void parallel_for_dynamic(int64_t begin, int64_t end, int64_t chunk, const F& fn) {
  if (begin >= end) return;
  chunk = std::max<int64_t>(chunk, 1);
  const int64_t chunks = (end - begin + chunk - 1) / chunk;
  const int64_t workers = dynamic_workers(chunks);
  if (workers == 1) {
    for (int64_t lo = begin; lo < end; lo += chunk) fn(lo, std::min(end, lo + chunk), int64_t{0});
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t worker, int64_t) {
    try {
      for (int64_t c = next.fetch_add(1, std::memory_order_relaxed); c < chunks;
           c = next.fetch_add(1, std::memory_order_relaxed)) {
        const int64_t lo = begin + c * chunk;
        fn(lo, std::min(end, lo + chunk), worker);
      }
    } catch (...) {
      next.store(chunks, std::memory_order_relaxed);
      throw;
    }
  });
}

}  // namespace sparsenas
