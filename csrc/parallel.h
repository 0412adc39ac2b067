// parallel.h: threads, work partitioning and the floating-point mode of a native call.
//
// One source of truth for threads: rnncore's count (team.h: set_num_threads or threadpoolctl,
// else RNNCORE_NUM_THREADS / OMP_NUM_THREADS / the CPUs). Work is split into contiguous,
// aligned ranges of rows or columns; a reduction is never split across threads, so results
// do not depend on the thread count.
#pragma once

#include "isa.h"

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <new>

#include "kernels.h"
#include "team.h"
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <xmmintrin.h>
#define RNNCORE_HAVE_MXCSR 1
#endif

RNNCORE_NS_BEGIN

// A spin-wait's pause between two looks at a word another thread will change.
inline void pause() {
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
  _mm_pause();
#endif
}

// The threads of a native call: rnncore's count, under the calling thread's cap (kernels.h:
// rnncore's Python side sets one when it runs independent calls side by side, the two
// directions of a layer). The cap is one variable for all variants, defined in dispatch.cpp.
inline int call_threads() {
  const int n = rnncore_get_num_threads();
  const int cap = ::rnncore::local_thread_cap();
  return cap > 0 ? std::min(n, cap) : n;
}

// A region of at least kLongRegion multiply-adds (about a millisecond) checks the cores first
// (team.h: rnncore_team_run_long).
constexpr double kLongRegion = 67108864.0;

// parallel_region's entry: f(tid, nt) on nt threads of the team (team.h); flexible: the
// threads that join in time (bulk_region); `work` the region's multiply-adds, where known.
template <typename F>
inline int team_run(int nt, F& f, bool flexible = false, double work = 0) {
  auto fn = [](void* ctx, int tid, int n) { (*static_cast<F*>(ctx))(tid, n); };
  if (work >= kLongRegion) return rnncore_team_run_long(nt, fn, &f, flexible ? 1 : 0);
  return flexible ? rnncore_team_run_flexible(nt, fn, &f) : rnncore_team_run(nt, fn, &f);
}

inline void barrier() { rnncore_team_barrier(); }

// Threads worth opening for `work` multiply-adds spread over `parallel_units` independent
// units: one thread for small work, never more threads than units.
inline int threads_for(double work, long parallel_units, double min_work_per_thread = 65536.0) {
  int nt = call_threads();
  nt = (int)std::min<double>(nt, std::max(1.0, work / min_work_per_thread));
  nt = (int)std::min<long>(nt, std::max(1L, parallel_units));
  return std::max(1, nt);
}

// Threads for a bulk operation (a large GEMM, an elementwise pass) of `work` multiply-adds:
// at least 4M a thread (some 30 us), so that waking a sleeping worker (microseconds, far more
// when other processes hold the cores) pays for itself. Nor does a smaller share pay in a
// whole program: at 0.5M the textbook SimpleRnnlm's output-layer backward (50 x 100 x 418)
// took 69-111 us on two threads against 96-135 on one, but the NumPy SGD update that follows,
// reading the gradients the worker wrote from the other core's cache, went from 39-57 to
// 71-124 us, and the training step gained nothing (5 alternating runs each, the 2-core Xeon).
// While the bulk calls come briskly (team.h: rnncore_team_pace), the workers stay awake between
// them, and a share of kBulkBrisk pays: the textbook SimpleRnnlm's output layer (50 x 100 x 418)
// took 16.6 us forward and 33 backward on two threads against 23 and 49 on one, its whole
// iteration 150-155 us against 171-187 (the 2-core AMD VM, its cores near each other), although
// the NumPy SGD that follows reads the half of the gradients the worker wrote from the other
// core (18 -> 23 us). While the cores are far apart (rnncore_team_far), pace says no.
constexpr double kBulkWork = 4194304.0;
constexpr double kBulkBrisk = 524288.0;
inline int bulk_threads(double work, long units) {
  if (work < 2 * kBulkBrisk || call_threads() <= 1) return 1;
  return threads_for(work, units, rnncore_team_pace() ? kBulkBrisk : kBulkWork);
}

// [lo, hi) of n items for part `tid` of `nt`, boundaries on multiples of `align`.
inline void split_range(long n, int nt, int tid, long align, long& lo, long& hi) {
  long chunks = (n + align - 1) / align;
  long per = chunks / nt, rem = chunks % nt;
  long c0 = tid * per + std::min<long>(tid, rem);
  long c1 = c0 + per + (tid < rem ? 1 : 0);
  lo = std::min(n, c0 * align);
  hi = std::min(n, c1 * align);
}

// Fixed chunks of n items, independent of the thread count: as many chunks as the machine
// has cores (at least 2), each at least kMinChunk items. Each chunk is one BLAS call whoever
// runs it, so a GEMM's bits do not depend on how many threads share it (OpenBLAS blocks
// differently for different shapes). Fewer, larger chunks waste less BLAS packing.
constexpr long kMinChunk = 64;

constexpr long kMaxChunks = 16;

inline long max_chunks() {
  static const long n = std::min((int)kMaxChunks, std::max(2, rnncore_num_cpus()));
  return n;
}

inline long chunk_width(long n) {
  long w = (n + max_chunks() - 1) / max_chunks();
  w = (w + 31) / 32 * 32;  // whole panels of small_gemm.h
  return std::max(kMinChunk, w);
}

inline long num_chunks(long n) { return (n + chunk_width(n) - 1) / chunk_width(n); }

// The loops of a bulk region (bulk_region): each cut into the fixed chunks above, which the
// region's threads claim one at a time, whoever comes first. Every thread runs the region's
// loops in the same order (at most kMaxLoops), and its k-th loop claims from the k-th counter;
// the loops need no barrier between them (no loop reads what another writes). Each chunk is
// one piece of work whoever runs it, so the bits do not depend on the thread count or on who
// ran what.
class Claims {
 public:
  static constexpr int kMaxLoops = 8;
  // whole: every loop is one chunk (a region too small for two threads at any thread count)
  Claims(std::atomic<long>* next, int threads, bool whole = false)
      : next_(next), threads_(threads), whole_(whole) {}
  // The threads the region was opened for; 1 when it runs on the caller alone (no worker will
  // come: the team was busy or backing off), where a caller free to choose its chunks may take
  // larger ones.
  int threads() const { return threads_; }
  // f(lo, hi) for each chunk of [0, n) this thread claims (all of it in one, in a whole region).
  template <typename F>
  void for_chunks(long n, F&& f) {
    for_chunks(n, whole_ ? std::max(1L, n) : chunk_width(n), f);
  }
  // The same with chunks of w items.
  template <typename F>
  void for_chunks(long n, long w, F&& f) {
    if (loop_ >= kMaxLoops) std::abort();  // a region with more loops than counters: a bug here
    std::atomic<long>& next = next_[loop_++];
    const long nc = (n + w - 1) / w;
    for (long c; (c = next.fetch_add(1, std::memory_order_relaxed)) < nc;) f(c * w, std::min(n, (c + 1) * w));
  }

 private:
  std::atomic<long>* next_;
  int threads_;
  bool whole_;
  int loop_ = 0;
};

// The calling thread's workspace for one native call: at least n elements, contents
// undefined. Kept between calls (up to kKeep bytes) so that a training loop does
// not pay the page faults of fresh memory every step; one per calling thread, so concurrent
// calls from several Python threads never share it. 256 MiB: a GRU backward at T 100, B 64,
// H 512 needs 79 MB (dG and dGh); with 64 MiB it was freed after every call and faulted in
// again, 19,000 page faults and 7% of the call.
template <typename T>
class Workspace {
 public:
  static constexpr size_t kKeep = ((size_t)256 << 20) / sizeof(T);  // elements: 256 MiB a slot
  T* get(size_t n) {
    if (n > size_) {
      free_buf();
      buf_ = static_cast<T*>(std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64));
      if (!buf_) throw std::bad_alloc();
      size_ = n;
    }
    return buf_;
  }
  void release_if_large() {
    if (size_ > kKeep) free_buf();
  }
  enum Slot { kForward, kBackward, kPacked, kPacked2, kPackedInput, kSlots };
  static Workspace& local(Slot slot) {
    thread_local Workspace ws[kSlots];
    return ws[slot];
  }
  static void release_all_large() {
    for (int s = 0; s < kSlots; ++s) local((Slot)s).release_if_large();
  }
  Workspace() = default;
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  ~Workspace() { free_buf(); }

 private:
  // a plain allocation, not std::vector: the standard library's templates are shared by name
  // between the variants (isa.h)
  void free_buf() {
    std::free(buf_);
    buf_ = nullptr;
    size_ = 0;
  }
  T* buf_ = nullptr;
  size_t size_ = 0;
};

// Flush denormals to zero (FTZ and DAZ) while alive; restore the caller's mode afterwards.
// MXCSR is per thread: every thread of a parallel region holds its own guard.
struct DenormalGuard {
#ifdef RNNCORE_HAVE_MXCSR
  unsigned saved;
  DenormalGuard() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040u); }
  ~DenormalGuard() { _mm_setcsr(saved); }
#endif
};

// Run f(tid, nt) on nt threads of the team (inline when nt == 1 or the team is busy), each
// with denormals flushed. Phases inside f are separated by barrier() (team.h). `work`: the
// region's multiply-adds, where known (a long region checks the cores first: team_run).
template <typename F>
inline void parallel_region(int nt, F&& f, double work = 0) {
  auto body = [&](int tid, int n) {
    DenormalGuard guard;
    f(tid, n);
  };
  team_run(nt, body, false, work);
}

// Run f(claims) on up to nt threads of the team, each with denormals flushed: the work of bulk
// operations, whose loops (claims.for_chunks) share their chunks among the threads that come.
// The caller claims from the start and waits only for workers that joined before it ran out of
// chunks (team.h: a flexible region), so a sleeping or descheduled worker never holds it up.
// `work` as for parallel_region. No barrier inside.
// A region of known work too small for a second thread whatever the thread count and pace
// (below twice kBulkBrisk) runs each loop as one chunk, one BLAS call instead of one a fixed
// chunk (two GEMMs of 50 x 100 x 418 took 92-103 us as single calls against 98.5-109 in two
// chunks each, 3 alternating runs on the 2-core Xeon). The choice depends on the work alone, so
// the bits do not depend on the thread count, nor on the pace of the calls.
template <typename F>
inline void bulk_region(int nt, F&& f, double work = 0) {
  std::atomic<long> next[Claims::kMaxLoops];
  for (auto& a : next) a.store(0, std::memory_order_relaxed);
  const bool whole = work > 0 && work < 2 * kBulkBrisk;
  auto body = [&](int, int n) {
    DenormalGuard guard;
    Claims claims(next, n, whole);
    f(claims);
  };
  team_run(nt, body, true, work);
}

RNNCORE_NS_END
