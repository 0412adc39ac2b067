// buffers.h: the memory of rnncore's large outputs (hs, caches, gradients, logits, probabilities).
//
// A training loop asks for outputs of the same sizes at every step. Fresh memory from the
// operating system page-faults on first touch: 7,000 faults, milliseconds, for the 28 MB of a
// 700 x 10000 logit matrix, every step. Outputs of 1 MiB and more therefore come from a cache of
// buffers that earlier outputs gave back when NumPy freed them (the array's base is a capsule
// that returns its buffer here). At most 512 MiB wait in the cache; beyond that the largest are
// freed. Smaller outputs are NumPy's own allocations. Buffers are 64-byte aligned.
#pragma once

#include <pybind11/numpy.h>

#include <cstdlib>
#include <iterator>
#include <map>
#include <mutex>
#include <new>
#include <vector>

namespace rnncore {

class BufferCache {
 public:
  static constexpr size_t kMinBytes = (size_t)1 << 20;    // smaller outputs: NumPy's allocation
  static constexpr size_t kMaxCached = (size_t)512 << 20;  // bytes waiting in the cache at most
  static constexpr size_t kHeader = 64;                    // holds the capacity, keeps alignment

  static BufferCache& instance() {
    static BufferCache* cache = new BufferCache();  // never destroyed: arrays may outlive exit
    return *cache;
  }

  // A buffer of at least `bytes`: a cached one of at most 1.25x the size, else a new one.
  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first <= bytes + bytes / 4) {
        void* p = it->second;
        cached_ -= it->first;
        free_.erase(it);
        return p;
      }
    }
    const size_t cap = (bytes + 63) / 64 * 64;
    void* raw = std::aligned_alloc(64, cap + kHeader);
    if (!raw) throw std::bad_alloc();
    *static_cast<size_t*>(raw) = cap;
    return static_cast<char*>(raw) + kHeader;
  }

  // Called when NumPy frees the array that owned `data`.
  void give(void* data) {
    void* raw = static_cast<char*>(data) - kHeader;
    const size_t cap = *static_cast<size_t*>(raw);
    std::lock_guard<std::mutex> lock(mutex_);
    if (cap > kMaxCached) {
      std::free(raw);
      return;
    }
    while (cached_ + cap > kMaxCached && !free_.empty()) {  // make room: free the largest
      auto last = std::prev(free_.end());
      std::free(static_cast<char*>(last->second) - kHeader);
      cached_ -= last->first;
      free_.erase(last);
    }
    free_.emplace(cap, data);
    cached_ += cap;
  }

  size_t cached_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return cached_;
  }

 private:
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;  // capacity -> buffer
  size_t cached_ = 0;
};

// A new C-contiguous array of T (contents undefined), from the cache when it is large.
template <typename T>
pybind11::array_t<T> new_array(std::vector<pybind11::ssize_t> shape) {
  size_t n = 1;
  for (auto s : shape) n *= (size_t)s;
  if (n * sizeof(T) < BufferCache::kMinBytes) return pybind11::array_t<T>(shape);
  void* p = BufferCache::instance().take(n * sizeof(T));
  pybind11::capsule owner(p, [](void* q) { BufferCache::instance().give(q); });
  return pybind11::array_t<T>(shape, static_cast<T*>(p), owner);
}

}  // namespace rnncore
