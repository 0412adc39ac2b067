// driver.h: the recurrence driver shared by every cell (cells.h describes the cells).
//
// forward:  the time loop, where a step is the recurrent GEMM h_{t-1} @ wh[:, :R*H] and the
//           cell's fused elementwise pass over its rows (and, for a cell with extra blocks, a
//           first pass, the extra GEMM and then the second pass); preact = x @ wx is computed
//           inside the loop a chunk of steps ahead (input_projection). Without a cache
//           (inference) a step's gate rows and cell states live in rings (StepContext).
// backward: the reverse time loop produces dG (gradient of the pre-activations) for all
//           steps, then dwx = x^T dG, dwh = h_prev^T dG_h, dx = dG wx^T are one GEMM each
//           and the biases are column sums, all split over output rows/columns.
// The time loop runs on the step team with a fixed plan (the step plan, below): each thread
// owns the same blocks of hidden units at every step, with all their gates' weights, which it
// packs itself, until the threads' speeds say to move some (Balance); a step has one barrier
// (two with extra blocks). When the recurrent weights fit
// a core's cache the loop is cut by batch rows instead (UnitRange, split_rows): groups of rows
// claimed one at a time, each run through all steps with all units, no barrier. Every cell-independent part
// lives here: row addressing, masking past a sequence's length (a padded row's output, whole
// cache and gradients are 0, and the cell never sees it), final states, dh_n / dc_n, the cache
// layout (GC blocks of H a row). One workspace a call, sized before the loops (and kept for
// the next call of this thread); nothing is allocated inside the loops.
#pragma once

#include "isa.h"
#include "memops.h"

#include <algorithm>
#include <chrono>
#include <thread>

#include "blas.h"
#include "cells.h"
#include "parallel.h"
#include "problem.h"
#include "small_gemm.h"

RNNCORE_NS_BEGIN

// The step plan. Hidden units go in blocks of NB (the panel width of small_gemm.h), and each
// thread owns the same consecutive blocks at every step of a call (moved only as Balance says,
// every 16 steps at most). Forward, the G gates of a
// block are packed side by side (G panels of the recurrent weights, one per gate), so a
// thread's step GEMM computes exactly the gate pre-activations its cell pass then reads, into
// its own columns of the scratch, from panels it packed itself and that stay in its core's
// cache for the whole sequence. Backward, the recurrent GEMM's output columns are the units
// themselves (wh^T packed by unit block), again the thread's own. A thread thus reads only
// what it wrote, except h_{t-1} (forward) and dG_t (backward): one barrier a step, the one that
// publishes them. Every output element is a sum over k in order whichever thread computes it,
// so the bits do not depend on the thread count.
template <typename T>
constexpr int kUnitBlock = Vec<T>::NB;

template <typename T>
inline long unit_blocks(int H) { return (H + kUnitBlock<T> - 1) / kUnitBlock<T>; }

// Multiply-adds of one step's GEMMs (D 0: the backward's, no input projection).
inline double step_work(int B, int H, int G, int D) { return (double)B * G * H * ((double)H + D); }

// Threads for the time loop of T steps: one unless a step's GEMMs pay for a team: 48K
// multiply-adds a thread (the recurrent GEMM, and forward the input projection of D features),
// so a batch-1 step from about 100K on (LSTM from H = 111, GRU from 128, RNN from 222; the
// weights split over the cores, each part staying in that core's cache) runs on two threads
// (steps of 96-131K, which 64K kept on one thread, measured on the 2-core Xeon: forward 16-24%
// faster a step at batch 1-2, forward + backward 6-8%; steps of 64-96K gain nothing from a
// second thread); and the whole loop at least 4M a thread (some 30
// us, bulk_threads), so that waking a sleeping worker pays for itself: a call of a few tiny steps
// (the textbook's SimpleRnnlm: T 5, B 10, H 100) stays on the caller. Never more threads than
// unit blocks. The team falls back to one thread by itself when other work holds the cores.
// While the cores are far apart (team.h: rnncore_team_far), a step's meeting of the threads costs
// some microseconds more (a barrier and the other thread's part of h_{t-1}, each a few cache
// lines from the other core), and a step pays for a team from 128K multiply-adds a thread: so
// measured on the 2-core AMD VM, whose host moved its vCPUs apart every few seconds (GRU B 1,
// H 128, 49K a thread: 0.20 ms on two threads against 0.16 on one; LSTM H 128, 66K: 0.23
// against 0.22; GRU H 256, 196K: 0.46 against 0.59, forward at T 100).
template <typename T>
inline int step_threads(int B, int H, int G, int D, int steps) {
  const double step = step_work(B, H, G, D);
  const double per_thread = rnncore_team_far() ? 131072.0 : 49152.0;
  return std::min(threads_for(step, unit_blocks<T>(H), per_thread), bulk_threads(step * steps, unit_blocks<T>(H)));
}

// A thread's share of every step: unit blocks [u0, u1) (hidden units [j0, j1)) of batch rows
// [b0, b1). The step plan above gives each thread its units of all rows. When the recurrent
// weights fit a core's cache, the loop is instead cut by rows (`by_rows`): rows never read each
// other's states, so a group of rows runs through all steps on one thread, with all units and
// no barrier. The groups are claimed one at a time like bulk work (parallel.h: Claims): the
// caller starts at once and waits only for workers that joined, so a worker whose core another
// process holds costs the loop nothing, and no barrier waits for whichever core is slowest at a
// step (10-25% of a 2-thread LSTM loop at B 32 went to those waits on the shared VMs here); a
// thread that is done takes rows from a slower one (RowSteal, below).
struct Balance;

struct UnitRange {
  long u0, u1, j0, j1;
  int b0, b1;
  bool by_rows;
  int slot;  // this share's (B, D) block of the input stage (StepContext::xstage)
  Balance* bal = nullptr;  // a unit split's rebalancing (below), where it runs
};

// The unit split: thread tid's blocks of all rows.
template <typename T>
inline void set_blocks(UnitRange& u, int H, long u0, long u1) {
  u.u0 = u0, u.u1 = u1;
  u.j0 = std::min<long>(H, u0 * kUnitBlock<T>);
  u.j1 = std::min<long>(H, u1 * kUnitBlock<T>);
}

template <typename T>
inline UnitRange unit_range(int H, int B, int tid, int nt) {
  UnitRange u;
  long u0, u1;
  split_range(unit_blocks<T>(H), nt, tid, 1, u0, u1);
  set_blocks<T>(u, H, u0, u1);
  u.b0 = 0, u.b1 = B, u.by_rows = false, u.slot = tid;
  return u;
}

// The row split: all units of rows [b0, b1).
template <typename T>
inline UnitRange row_range(int H, long b0, long b1) {
  return UnitRange{0, unit_blocks<T>(H), 0, H, (int)b0, (int)b1, true, 0, nullptr};  // groups: rows of one block
}

// Rebalancing a unit split. The cores of a shared machine do not run at one speed: on the
// 2-core Xeon VM the same one-thread LSTM loop (B 8, H 256) took 72 us a step on one core and
// 99 on the other, and the other way round minutes later; in a 2-thread loop the caller waited
// at the barriers for 18% of its time. A fixed split runs at the pace of the slowest core. So
// each thread counts the ticks it works between barriers, and at the end of an interval of
// steps (kBalanceSteps; forward whole chunks of at least that) publishes them before the barrier; after it,
// every thread computes from the same numbers the split they predict fastest (unit blocks in
// proportion to each thread's rate, at least one each), and all move to it when it beats the
// current one by more than a tenth: no extra barrier. Which thread computes a unit changes no
// sum, so the bits stay the same; a block that moves takes its packed panels from the shared
// buffer (packed before the first barrier) and its pre-activations from its new owner's input
// projection at the chunk's start (forward). Backward, the split may change only right after a
// step's barrier, where dG_t is complete and the step's GEMM has not yet written dh_{t-1}.
// step_balance_mode(): 0 rebalance (the default), 1 the fixed split, 2 (tests) another split at
// every interval.
constexpr int kMaxBalance = 8;  // unit splits of more threads keep the fixed split
constexpr int kBalanceSteps = 16;

inline int balance_interval(int chunk) { return chunk * ((kBalanceSteps + chunk - 1) / chunk); }

inline long long balance_ticks() {
#if defined(__x86_64__) || defined(__i386__)
  return (long long)__builtin_ia32_rdtsc();
#else
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
#endif
}

struct Balance {
  long long* shared = nullptr;  // [2][nt]: ticks each thread worked in an interval, by its parity
  int nt = 0, tid = 0, H = 0;
  long blocks = 0;
  long counts[kMaxBalance] = {};  // unit blocks of each thread, in thread order
  long long left = 0, work = 0;   // when this thread left its last barrier; ticks since
  unsigned interval = 0;
  bool probe = false;  // step_balance_mode 2

  // At a barrier: the work since the last one; at an interval's end, published.
  void arrive(bool publish) {
    work += balance_ticks() - left;
    if (publish) {
      shared[(interval & 1) * nt + tid] = work;
      work = 0;
    }
  }
  void leave() { left = balance_ticks(); }

  // Into next: blocks in proportion to each thread's rate over the last interval (ticks w), at
  // least one each (largest remainders first); whether it predicts a tenth off the interval.
  bool faster_split(const long long* w, long* next) const {
    double rate[kMaxBalance], rest[kMaxBalance], total = 0, now = 0, then = 0;
    for (int i = 0; i < nt; ++i) {
      const double ticks = (double)std::max(w[i], 1LL);
      rate[i] = (double)counts[i] / ticks;
      total += rate[i];
      now = std::max(now, ticks);
    }
    long given = 0;
    for (int i = 0; i < nt; ++i) {
      const double want = (double)blocks * rate[i] / total;
      next[i] = std::max(1L, (long)want);
      rest[i] = want - (double)next[i];
      given += next[i];
    }
    while (given != blocks) {  // one block at a time: to the largest remainder, or from the least
      const long d = given < blocks ? 1 : -1;
      int k = -1;
      for (int i = 0; i < nt; ++i)
        if (d > 0 ? (k < 0 || rest[i] > rest[k]) : (next[i] > 1 && (k < 0 || rest[i] < rest[k]))) k = i;
      next[k] += d;
      rest[k] -= (double)d;
      given += d;
    }
    for (int i = 0; i < nt; ++i) then = std::max(then, (double)next[i] / rate[i]);
    return then < 0.9 * now;
  }

  // After the barrier that ended an interval: the split for the next one, into u.
  template <typename T>
  void rebalance(UnitRange& u) {
    const long long* w = shared + (interval & 1) * nt;
    ++interval;
    long next[kMaxBalance];
    if (probe) {  // tests: every interval another split, all the spare blocks on one thread
      for (int i = 0; i < nt; ++i) next[i] = i == (int)(interval % nt) ? blocks - (nt - 1) : 1;
    } else if (!faster_split(w, next)) {
      return;
    }
    long u0 = 0;
    for (int i = 0; i < nt; ++i) {
      counts[i] = next[i];
      if (i < tid) u0 += next[i];
    }
    set_blocks<T>(u, H, u0, u0 + counts[tid]);
  }
};

// Rows in a group of the row split: the batch cut into one group a thread of the region (each
// group streams all of wh at every step, so no more groups than threads; a thread that finds no
// worker beside it runs them all). The bits do not depend on the groups: every row's sums are
// the same whichever rows share its GEMMs.
inline long row_group(int B, int nt) { return std::max(1L, (long)((B + nt - 1) / std::max(1, nt))); }

// Moving rows between the threads of a row split. Rows never read each other's states, so a
// group's remaining rows can change hands between two steps: a thread that has finished its
// own rows takes the upper half of the rows of the group with the most work left, from that
// group's next step on, while the timed split of a shared machine's cores (Balance, above) has
// no other way to reach a row split (its groups ran 1.10x the time of an even share of their
// work at the median, 1.3x at the 90th percentile, LSTM B 32, H 256 on the 2-core Xeon). It also
// lets a worker that wakes after the caller has claimed every group share the work. Each group
// has a slot, one word: the steps its owner has claimed (n: step n - 1 is running or done) and
// its rows [b0, end). The owner claims each step with a compare-and-swap that reads `end`; a
// thief swaps in a smaller end, and starts at step n once the owner has claimed it (its writes
// of step n - 1, which the thief's rows read, are then visible). Which thread runs a row changes
// none of its sums: the bits stay the same. step_balance_mode(): 0 moves rows when each side
// keeps kStealRows and kStealSteps are left, 1 never, 2 (tests) one group for all rows, which
// every other thread must take rows from, down to one row and one step.
constexpr int kRowSlots = 64;      // groups and moved parts of a call; later thefts are refused
constexpr int kStealRows = 4;      // the fewest rows a side keeps (each streams all of wh a step)
constexpr int kStealSteps = 4;     // the fewest steps worth the wait for the owner's next step
constexpr int kSlotRowBits = 20;   // the word: n (24 bits) | b0 (20) | end (20)
constexpr long kSlotRows = 1L << kSlotRowBits, kSlotSteps = 1L << 24;

struct alignas(64) RowSlot {
  std::atomic<unsigned long long> word{0};
  static unsigned long long pack(long n, long b0, long end) {
    return ((unsigned long long)n << (2 * kSlotRowBits)) | ((unsigned long long)b0 << kSlotRowBits) |
           (unsigned long long)end;
  }
  static long n_of(unsigned long long w) { return (long)(w >> (2 * kSlotRowBits)); }
  static long b0_of(unsigned long long w) { return (long)((w >> kSlotRowBits) & (kSlotRows - 1)); }
  static long end_of(unsigned long long w) { return (long)(w & (kSlotRows - 1)); }

  // The owner, before step k (its rows from b0): claims it; returns the rows' end for it.
  long claim(long k, long b0) {
    unsigned long long w = word.load(std::memory_order_relaxed);
    while (!word.compare_exchange_weak(w, pack(k + 1, b0, end_of(w)), std::memory_order_acq_rel,
                                       std::memory_order_relaxed)) {
    }
    return end_of(w);
  }
};

// A part of the rows for a thread: rows [b0, end) from step n, with the slot that tracks it.
struct RowPart {
  long n = 0, b0 = 0, end = 0;
  RowSlot* slot = nullptr;
};

struct RowSteal {
  RowSlot slots[kRowSlots];
  std::atomic<int> used{0};
  long T = 0, min_rows = kStealRows, min_steps = kStealSteps;
  bool on = false;

  RowSteal(int mode, long B, long T_) : T(T_) {
    on = mode != 1 && B < kSlotRows && T_ < kSlotSteps;
    if (mode == 2) min_rows = min_steps = 1;
  }

  // A slot for rows [b0, end) from step n (null when moving is off or the slots ran out: those
  // rows then stay with their thread).
  RowSlot* open(long n, long b0, long end) {
    if (!on) return nullptr;
    const int i = used.fetch_add(1, std::memory_order_relaxed);
    if (i >= kRowSlots) return nullptr;
    slots[i].word.store(RowSlot::pack(n, b0, end), std::memory_order_release);
    return &slots[i];
  }

  // Rows taken from the group with the most work left, into part; false when none has rows
  // enough for two (min_rows a side) and min_steps left.
  bool take(RowPart& part) {
    if (!on) return false;
    for (;;) {
      const int nused = std::min(used.load(std::memory_order_acquire), kRowSlots);
      int best = -1;
      unsigned long long bw = 0;
      double most = 0;
      for (int i = 0; i < nused; ++i) {
        const unsigned long long w = slots[i].word.load(std::memory_order_acquire);
        const long rows = RowSlot::end_of(w) - RowSlot::b0_of(w), steps = T - RowSlot::n_of(w);
        if (rows >= 2 * min_rows && steps >= min_steps && (double)rows * steps > most)
          best = i, bw = w, most = (double)rows * steps;
      }
      if (best < 0) return false;
      const long n = RowSlot::n_of(bw), b0 = RowSlot::b0_of(bw), end = RowSlot::end_of(bw);
      const long mid = b0 + (end - b0) / 2;  // the owner keeps [b0, mid)
      RowSlot& victim = slots[best];
      if (!victim.word.compare_exchange_strong(bw, RowSlot::pack(n, b0, mid), std::memory_order_acq_rel,
                                               std::memory_order_relaxed))
        continue;  // the owner claimed a step, or another thief came first: look again
      // at most one of the owner's steps; past some 50 us (its core taken?) the wait yields
      for (int spins = 0; RowSlot::n_of(victim.word.load(std::memory_order_acquire)) <= n; ++spins) {
        if (spins < 1024) pause();
        else std::this_thread::yield();
      }
      ::rnncore::row_moves().fetch_add(1, std::memory_order_relaxed);
      part = RowPart{n, mid, end, open(n, mid, end)};
      return true;
    }
  }
};

// Whether the time loop on nt threads splits rows, for recurrent weights of `wbytes`: the
// setting (step_split_mode: 1 units, 2 rows from 2 rows on), else (0) when all of wh fits in
// half a core's L2, where each group keeps it for the whole loop, and either it is small (an
// eighth of L2) or there are 8 rows a thread: each thread streams all of wh from its L2 every
// step, which takes as long as the step's multiply-adds of 4 rows. Measured on the 2-core Xeon
// (2 MiB L2) against the unit split: forward + backward 1.10-1.21x faster at H 128 (LSTM, GRU,
// B 2-8), 1.00-1.05x at H 256 (LSTM 1 MiB, GRU 768 KiB) from B 16; forward alone at H 256
// 0.59-0.66x at B 4 and 0.86-0.91x at B 8 (LSTM, GRU), 0.97-1.05x at B 16, 1.09-1.21x at
// H 128, B 8; an LSTM at H 512 (4 MiB) 0.90x at B 16 and 0.96-0.98x at B 32. The forward's
// groups also keep all of wx (`xbytes`), so the forward splits rows only while both fit in 70%
// of L2: the unit split (which moves its blocks to the faster core: Balance) took 0.76-0.92x the
// row split's time at B 16-64, H = D = 256 (LSTM, 2 MiB of weights; GRU, 1.5 MiB, 0.87-0.88x),
// the row split 0.89x the unit split's at B 32, H 256, D 64 (LSTM, 1.25 MiB: the default `rnncore
// train` model) and 0.90-0.96x at H 128 (medians of 4-8 alternating runs). Since rows move to
// the faster core (RowSteal), the row split's forward is faster beyond that too from 12 rows a
// thread, where wx is no larger than wh: 0.86-0.94x the unit split's time at B 24-128, H = D =
// 256 (LSTM; at B 16, 8 rows a thread, 1.08x), GRU 0.83-0.91x at B 32-64 (4 alternating runs).
// While the cores are far apart (team.h: rnncore_team_far), every step of a unit split meets
// the other core, and rows split whenever wh fits half of L2: LSTM B 8, H 128 forward 0.75 ms
// against 0.92 (the AMD VM, its vCPUs apart).
inline bool split_rows(int B, int nt, double wbytes, double xbytes, bool backward) {
  if (nt <= 1 || B < 2) return false;
  const int mode = step_split_mode();
  if (mode != 0) return mode == 2;
  const double l2 = (double)l2_cache_bytes();
  if (!backward && 10 * (wbytes + xbytes) > 7 * l2 && !(xbytes <= wbytes && B >= 12 * nt)) return false;
  return 2 * wbytes <= l2 && (8 * wbytes <= l2 || B >= 8 * nt || rnncore_team_far());
}

// A barrier between the threads of a unit split (a row split needs none); `publish`: the last
// of a rebalancing interval (Balance).
inline void step_barrier(const UnitRange& u, bool publish = false) {
  if (u.by_rows) return;
  if (u.bal) u.bal->arrive(publish);
  barrier();
  if (u.bal) u.bal->leave();
}

// Units [j0, j1) of `blocks` consecutive blocks of H set to zero.
template <typename T>
inline void zero_blocks(T* a, int blocks, int H, long j0, long j1) {
  for (int k = 0; k < blocks; ++k)
    for (long j = j0; j < j1; ++j) a[(long)k * H + j] = T(0);
}

// Ask for units [j0, j1) of `blocks` consecutive blocks of H at a to be brought into this core's
// L2 (for writing, when `write`). The time loop issues these for the rows its cell pass is about
// to read or write right before the step's GEMM, which keeps the core busy meanwhile: backward,
// the gate cache the forward wrote (8 MB at B 32, H 256) lives in L3 or memory by then.
template <typename T>
inline void prefetch_blocks(const T* a, int blocks, int H, long j0, long j1, bool write) {
  if (j1 <= j0) return;
  for (int k = 0; k < blocks; ++k) {
    const char* e = reinterpret_cast<const char*>(a + (long)k * H + j1);
    const char* q = reinterpret_cast<const char*>(
        reinterpret_cast<uintptr_t>(a + (long)k * H + j0) & ~static_cast<uintptr_t>(63));
    for (; q < e; q += 64) {
      if (write) __builtin_prefetch(q, 1, 2);
      else __builtin_prefetch(q, 0, 2);
    }
  }
}

// What the steps of one call share besides the problem: the workspace.
template <typename T>
struct StepContext {
  const Problem<T>& p;
  T* scratch;       // forward: (B, sld) results of the step GEMMs, unit block by unit block
  long sld = 0;     // forward: the scratch's row stride, unit_blocks * G * NB
  const T* bsum;    // forward: (G*H) b_ih + b_hh
  const T* zeros;   // at least (B, H) and (G*H) zeros: stands in for a missing h0, c0, b_hh, dh
  T* wbuf = nullptr;   // packed recurrent weights, each thread packing its own blocks:
  T* wbuf2 = nullptr;  // forward wh[:, :R*H] (and wh[:, R*H:] in wbuf2), backward wh^T
  Packed<T> wrec{};   // views of them
  Packed<T> wrec2{};
  // forward: x @ wx, computed a chunk of steps ahead by each thread for its own units
  T* wxbuf = nullptr;  // wx packed like wh (all G gates of a block side by side)
  Packed<T> wx{};
  T* pre = nullptr;    // where x @ wx lands: the first G blocks of the gate cache, or hs
  long F = 0;          // pre's row stride
  // forward of a single step on one thread (in_place_step): wx and wh read where they are,
  // unpacked; wbuf then holds the step GEMM's (B, G*H) result before it goes to the scratch
  bool in_place = false;
  // backward only
  T* dG = nullptr;      // (T, B, G*H) layout: gradient of the input-side pre-activations
  T* dGh = nullptr;     // same for the hidden side when a cell splits them, else == dG
  T* dh = nullptr;      // (B, H) total gradient reaching h_t
  T* dc = nullptr;      // (B, H) total gradient reaching c_t (has_c)
  T* dextra = nullptr;  // (B, H) the backward extra GEMM's result (extra blocks)
  T* dh_rec = nullptr;  // (B, H) gradient reaching h_{t-1} through the recurrence
  T* dc_rec = nullptr;  // (B, H) gradient reaching c_{t-1}
  // Forward, batch-first (B > 1): a step's rows lie T rows apart in the caller's arrays (64 KiB
  // and more), so the step GEMM's rows of h_{t-1} fall into the same few cache sets and evict
  // each other (the forward took 1.12x the time of an sgemm of its size time-major, 1.34x
  // batch-first, one thread). Each thread therefore also writes its units of h_t into `hstage`,
  // two (B, H) buffers taking turns step by step, from which the next step's GEMM reads them
  // contiguous. Two, because a thread may write step t + 1's while another still reads step
  // t's, never step t + 2's before every thread has done step t + 1's GEMM (the barrier). (The
  // backward's rows of dG_t, staged the same way, measured no faster: not done.)
  T* hstage = nullptr;
  // The same holds for the input projection's rows of x (16 KiB apart at T 64, D 64: a GEMM of
  // 16 such rows took twice the time of contiguous ones): each share copies its rows of a step
  // into its block of `xstage` (one (B, D) block a thread of a unit split; the groups of a row
  // split share one, each in its own rows) and multiplies them there.
  T* xstage = nullptr;
  int xslots = 0;  // its blocks: a time loop runs on at most this many threads
  // Forward without a cache (Problem::no_cache, inference): a step's gate rows and cell states
  // are needed only until the step is done, and the input projection's a chunk ahead. So they
  // live in rings, time-major: the gate cache (GC blocks of H a row) in `ring` steps (the
  // forward's chunks of steps are cut to fit: ring_chunk), and the cell states in two. Each
  // thread reads only the ring rows it wrote itself, or, after a barrier or a step claimed by
  // the owner (Balance, RowSteal), rows another thread wrote for that step; the same holds
  // in the caller's arrays. Writing all of them out (6 H floats a
  // row for an LSTM: 39 MB a call at T 100, B 64, H 256) filled L2 with lines no one would read.
  T* gring = nullptr;
  T* cring = nullptr;
  int ring = 0;  // 0: the caller's gates and cs

  // Row (t, b) of the gate cache and of the cell states; the gate cache's row stride.
  long gates_ld() const { return ring ? (long)gF : p.ld(gF); }
  T* gates_at(int t, int b) const {
    return ring ? gring + ((long)(t % ring) * p.B + b) * gF : p.gates + p.off(t, gF) + b * p.ld(gF);
  }
  T* cs_at(int t, int b) const {
    return ring ? cring + ((long)(t & 1) * p.B + b) * p.H : p.cs + p.off(t, p.H) + b * p.ld(p.H);
  }
  int gF = 0;  // GC * H (both directions set it)
  // Where x_t @ wx of row (t, b) lands (pre: the gate cache, or hs for a cell without one), and
  // the rows between two steps of a row and between two rows of a step.
  long pre_row(int t, int b) const {
    return pre_ring ? (long)(t % pre_ring) * p.B + b : p.off(t, 1) + b * p.ld(1);
  }
  long pre_step() const { return pre_ring || !p.batch_first ? p.B : 1; }
  long pre_rows() const { return pre_ring || !p.batch_first ? 1 : p.T_; }
  int pre_ring = 0;  // ring when pre is the gate cache, else 0

  // Step t's half of the stage.
  T* stage_of(int t) const { return hstage + (long)(t & 1) * p.B * p.H; }

  // h_{t-1} / c_{t-1} of every row: step t - 1 of the cached sequence, or the initial state
  // (zeros without one) at t = 0, with its row stride.
  const T* prev_of(const T* seq, const T* init, int t, long& ld) const {
    if (t > 0) {
      ld = p.ld(p.H);
      return seq + p.off(t - 1, p.H);
    }
    ld = p.H;
    return init ? init : zeros;
  }
  const T* hprev(int t, long& ldh) const {
    if (hstage && t > 0) {
      ldh = p.H;
      return stage_of(t - 1);
    }
    return prev_of(p.hs, p.h0, t, ldh);
  }
  const T* cprev(int t, long& ldc) const {
    if (ring && t > 0) {
      ldc = p.H;
      return cs_at(t - 1, 0);
    }
    return prev_of(p.cs, p.c0, t, ldc);
  }
};

// Forward: the panels of unit blocks [u0, u1) for gates [k0, k1) of W (K, G*H) (wh: K = H, wx:
// K = D), gate by gate within a block: panel (u, k) at (u * (k1 - k0) + k - k0). wt: W is
// PyTorch's (G*H, K).
template <typename T>
void pack_gate_blocks(const T* W, bool wt, int K, int H, int G, int k0, int k1, long u0, long u1, T* buf) {
  constexpr int NB = kUnitBlock<T>;
  const long GH = (long)G * H, ps = (long)K * NB;
  for (long u = u0; u < u1; ++u)
    for (int k = k0; k < k1; ++k) {
      const long col = (long)k * H + u * NB;  // the block's first column of W (row of PyTorch's)
      pack_panel(wt ? W + col * K : W + col, wt ? 1 : GH, wt ? K : 1, K, (int)std::min<long>(NB, H - u * NB),
                 buf + (u * (k1 - k0) + k - k0) * ps);
    }
}

// Backward: the panels of wh^T (G*H, H) for unit blocks [u0, u1). wt: wh is PyTorch's (G*H, H),
// that is wh^T itself.
template <typename T>
void pack_unit_blocks(const T* wh, bool wt, int H, int G, long u0, long u1, T* buf) {
  constexpr int NB = kUnitBlock<T>;
  const long GH = (long)G * H;
  for (long u = u0; u < u1; ++u)
    pack_panel(wt ? wh + u * NB : wh + u * NB * GH, wt ? H : 1, wt ? 1 : GH, (int)GH,
               (int)std::min<long>(NB, H - u * NB), buf + u * GH * NB);
}

// C (m, N) = A (m, K) @ W (K, N), W row-major with row stride ldw, streamed a row of W at a time
// (four rows a pass over C's row): one call of a single step reads the weights once, in order,
// instead of packing them first, which costs the step several times over when they come from
// memory. Every column of C is the same sum over k in order, from zero, as in the packed step
// kernel (small_gemm.h), so the bits are the same as on the packed path.
template <typename T>
void rowwise_gemm(int m, int K, int N, const T* A, long lda, const T* W, long ldw, T* C, long ldc) {
  for (int r = 0; r < m; ++r) {
    const T* a = A + r * lda;
    T* c = C + r * ldc;
    for (int j = 0; j < N; ++j) c[j] = T(0);
    int k = 0;
    for (; k + 4 <= K; k += 4) {
      const T a0 = a[k], a1 = a[k + 1], a2 = a[k + 2], a3 = a[k + 3];
      const T* w0 = W + (long)k * ldw;
      const T *w1 = w0 + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw;
#pragma omp simd
      for (int j = 0; j < N; ++j) {
        T v = c[j];
        v += a0 * w0[j];
        v += a1 * w1[j];
        v += a2 * w2[j];
        v += a3 * w3[j];
        c[j] = v;
      }
    }
    for (; k < K; ++k) {
      const T ak = a[k];
      const T* w = W + (long)k * ldw;
#pragma omp simd
      for (int j = 0; j < N; ++j) c[j] += ak * w[j];
    }
  }
}

// Forward: scratch[:, blocks u0..u1, gates k0..k1) = A @ (those panels of W), W packed by
// pack_gate_blocks for the same gates. In place (one step, one thread, all gates): A @ wh
// row-wise into wbuf, then its columns into the scratch's unit-block order.
template <typename T>
inline void gate_gemm(const StepContext<T>& c, int G, int k0, int k1, const UnitRange& u, const T* A, long lda,
                      const Packed<T>& W, bool reverse) {
  constexpr int NB = kUnitBlock<T>;
  const int nk = k1 - k0;
  if (c.in_place) {
    const Problem<T>& p = c.p;
    const int H = p.H, GH = G * H;
    rowwise_gemm(p.B, H, GH, A, lda, p.wh, GH, c.wbuf, GH);
    for (int b = 0; b < p.B; ++b)
      for (long ub = u.u0; ub < u.u1; ++ub) {
        const long valid = std::min<long>(NB, H - ub * NB);  // the cell pass reads no more
        for (int k = 0; k < G; ++k)
          std::memcpy(c.scratch + b * c.sld + (ub * G + k) * NB, c.wbuf + (long)b * GH + (long)k * H + ub * NB,
                      valid * sizeof(T));
      }
    return;
  }
  const int m = u.b1 - u.b0;  // this thread's rows
  A += u.b0 * lda;
  T* S = c.scratch + u.b0 * c.sld;
  if (nk == G) {  // the blocks' columns are contiguous in the scratch: one call
    small_gemm(m, (int)(u.u0 * G * NB), (int)(u.u1 * G * NB), A, lda, W, T(0), S, c.sld, reverse);
    return;
  }
  for (long i = u.u0; i < u.u1; ++i) {
    const long b = reverse ? u.u1 - 1 - (i - u.u0) : i;
    const long n = b * nk * NB;  // the block's first packed column; its scratch column b*G*NB + k0*NB
    small_gemm(m, (int)n, (int)(n + nk * NB), A, lda, W, T(0), S + b * G * NB + k0 * NB - n, c.sld, reverse);
  }
}

// Forward: x @ wx for steps [t0, t1) into the first G blocks of c.pre, for this thread's unit
// blocks only. Each thread thus writes the pre-activations its own cell pass reads, a chunk of
// steps ahead, into its own cache (a chunk is sized to stay in L2), where one GEMM over all
// steps split by rows left them in the other core's cache or in memory; and it multiplies
// them with the packed step kernel, which keeps its panel of wx in L1 across all the chunk's
// rows. Time-major the chunk's rows are consecutive in x and in pre; batch-first each call
// takes either one step's B rows or one sequence's steps, whichever run is longer.
template <typename T>
void input_projection(const StepContext<T>& c, int G, int t0, int t1, const UnitRange& u) {
  constexpr int NB = kUnitBlock<T>;
  const Problem<T>& p = c.p;
  const int H = p.H, D = p.D;
  if (c.pre_ring && t0 % c.pre_ring + (t1 - t0) > c.pre_ring) {  // a chunk's steps that wrap round the ring
    const int tw = t0 + (c.pre_ring - t0 % c.pre_ring);
    input_projection(c, G, t0, tw, u);
    input_projection(c, G, tw, t1, u);
    return;
  }
  // m rows from row (t, b): steps t.. of row b (along_t), or rows b.. of step t (x's rows read
  // from xs, contiguous, when given)
  auto rows = [&](int t, int b, int m, bool along_t, const T* xs = nullptr) {
    const long xstep = p.batch_first ? 1 : p.B, xrow = p.batch_first ? p.T_ : 1;
    const T* A = xs ? xs : p.x + (p.off(t, 1) + b * p.ld(1)) * D;
    const long lda = xs ? D : (along_t ? xstep : xrow) * D;
    T* C = c.pre + c.pre_row(t, b) * c.F;
    const long ldc = (along_t ? c.pre_step() : c.pre_rows()) * c.F;
    if (c.in_place) {  // all G*H columns, gate by gate as the cache keeps them
      rowwise_gemm(m, D, G * H, A, lda, p.wx, (long)G * H, C, ldc);
      return;
    }
    for (long b = u.u0; b < u.u1; ++b) {
      const int valid = (int)std::min<long>(NB, H - b * NB);  // past H: the next gate's columns
      for (int k = 0; k < G; ++k) {
        const long n = (b * G + k) * NB;  // the panel's first packed column
        small_gemm(m, (int)n, (int)(n + valid), A, lda, c.wx, T(0), C + (long)k * H + b * NB - n, ldc);
      }
    }
  };
  const int b0 = u.b0, m = u.b1 - u.b0;  // this thread's rows of a step
  if (!p.batch_first && m == p.B)  // whole steps: consecutive rows of x and of pre
    rows(t0, 0, (t1 - t0) * p.B, false);
  else if (!p.batch_first && m >= t1 - t0)  // the longer run of rows: a step's rows of this thread ...
    for (int t = t0; t < t1; ++t) rows(t, b0, m, false);
  else if (!p.batch_first)  // ... or a row's steps, B rows apart (4 rows a thread at batch 8: the
    for (int b = b0; b < u.b1; ++b) rows(t0, b, t1 - t0, true);  // 4-row kernel ran at 60%)
  else if (m >= t1 - t0) {  // the longer run of rows: a step's rows (T rows apart, copied when staged) ...
    T* xs = c.xstage ? c.xstage + ((long)u.slot * p.B + b0) * D : nullptr;
    for (int t = t0; t < t1; ++t) {
      const long r0 = (long)b0 * p.T_ + t;
      if (xs)
        for (int i = 0; i < m; ++i) copy(p.x + (r0 + i * p.T_) * D, p.x + (r0 + i * p.T_ + 1) * D, xs + (long)i * D);
      rows(t, b0, m, false, xs);
    }
  } else  // ... or a sequence's steps
    for (int b = b0; b < u.b1; ++b) rows(t0, b, t1 - t0, true);
}

// Steps of a forward chunk: the thread's share of a chunk's pre-activations (G*H/nt columns of
// B rows a step) within about 256 KiB, half its L2 on the CPUs at hand.
template <typename T>
int chunk_steps(int T_, int B, int GH, int nt) {
  const double bytes = (double)B * GH * sizeof(T) / std::max(1, nt);
  return (int)std::max(1.0, std::min((double)T_, 262144.0 / bytes));
}

// Per row and phase, so inlined whatever the compiler's estimate of its size.
#define RNNCORE_INLINE inline __attribute__((always_inline))

// Row b of step t: every pointer the cell declares, addressed in the caller's layout, for the
// forward or (BWD) the backward step. Forward, s and sh are set per unit block (for_blocks).
template <typename T, typename Cell, bool BWD>
RNNCORE_INLINE Row<T> row_of(const StepContext<T>& c, int t, int b) {
  const Problem<T>& p = c.p;
  const int H = p.H, GH = Cell::G * H;
  Row<T> r{};
  r.H = H;
  r.bsum = c.bsum;
  r.b_ih = p.b_ih;
  r.b_hh = p.b_hh ? p.b_hh : c.zeros;
  long ldh;
  r.hp = c.hprev(t, ldh) + b * ldh;
  r.h = p.hs + p.off(t, H) + b * p.ld(H);
  if constexpr (Cell::GC > 0) r.g = c.gates_at(t, b);
  if constexpr (Cell::has_c) {
    long ldc;
    r.c = c.cs_at(t, b);
    r.cp = c.cprev(t, ldc) + b * ldc;
  }
  if constexpr (!BWD) {
    r.s = c.scratch + (long)b * c.sld;
  } else {
    r.dg = c.dG + p.off(t, GH) + b * p.ld(GH);
    r.dgh = c.dGh + p.off(t, GH) + b * p.ld(GH);
    r.dh = c.dh + (long)b * H;
    r.dh_prev = c.dh_rec + (long)b * H;
    if constexpr (Cell::has_c) {
      r.dc = c.dc + (long)b * H;
      r.dc_prev = c.dc_rec + (long)b * H;
    }
    if constexpr (Cell::R < Cell::G) r.dextra = c.dextra + (long)b * H;
  }
  return r;
}

// f(row, j0, j1) for each of this thread's unit blocks of the forward row r, its s pointing at
// the block's gates: gate k of unit j at s[k * NB + j].
template <typename T, int G, typename F>
RNNCORE_INLINE void for_blocks(const Row<T>& r, const UnitRange& u, F&& f) {
  constexpr int NB = kUnitBlock<T>;
  Row<T> rb = r;
  rb.sh = NB;
  for (long b = u.u0; b < u.u1; ++b) {
    rb.s = r.s + b * (G - 1) * NB;  // + k * NB + j lands on scratch column b*G*NB + k*NB + (j - b*NB)
    f(rb, b * NB, std::min<long>(r.H, (b + 1) * NB));
  }
}

// One forward step on this thread's units: h_{t-1} -> h_t for every row.
template <typename T, typename Cell, int ACT>
RNNCORE_INLINE void forward_step(const StepContext<T>& c, int t, const UnitRange& u) {
  constexpr int G = Cell::G, R = Cell::R, GC = Cell::GC;
  constexpr bool extra = R < G;
  const Problem<T>& p = c.p;
  const int H = p.H;
  const long j0 = u.j0, j1 = u.j1;
  long ldh;
  const T* hp = c.hprev(t, ldh);
  // the outputs the cell pass writes, while the GEMM runs (its gate rows this thread's
  // input_projection wrote a moment ago)
  for (int b = u.b0; b < u.b1; ++b) {
    if (t >= p.len[b]) continue;
    const long r = p.off(t, 1) + b * p.ld(1);  // row (t, b)
    prefetch_blocks(p.hs + r * H, 1, H, j0, j1, true);
    if constexpr (Cell::has_c) prefetch_blocks(c.cs_at(t, b), 1, H, j0, j1, true);
  }
  gate_gemm(c, G, 0, R, u, hp, ldh, c.wrec, t & 1);
  // A padded row (t >= len[b]) is zeroed at the first pass, and the cell never sees it: both
  // backends' caches then hold the same numbers there (no uninitialised memory).
  auto padded = [&](const Row<T>& r, int b) {
    if (t < p.len[b]) return false;
    for (long j = j0; j < j1; ++j) r.h[j] = T(0);
    if constexpr (Cell::has_c)
      for (long j = j0; j < j1; ++j) r.c[j] = T(0);
    if constexpr (GC > 0) zero_blocks(r.g, GC, H, j0, j1);
    return true;
  };
  if constexpr (extra) {  // the extra GEMM reads every unit of the vector forward_pre caches
    for (int b = u.b0; b < u.b1; ++b) {
      const Row<T> r = row_of<T, Cell, false>(c, t, b);
      if (!padded(r, b))
        for_blocks<T, G>(r, u, [](const Row<T>& rb, long a, long e) { Cell::template forward_pre<ACT>(rb, a, e); });
    }
    step_barrier(u);
    gate_gemm(c, G, R, G, u, c.gates_at(t, 0) + (long)Cell::extra_in * H, c.gates_ld(), c.wrec2, t & 1);
  }
  for (int b = u.b0; b < u.b1; ++b) {
    const Row<T> r = row_of<T, Cell, false>(c, t, b);
    if (extra ? t >= p.len[b] : padded(r, b)) continue;
    for_blocks<T, G>(r, u, [](const Row<T>& rb, long a, long e) { Cell::template forward_row<ACT>(rb, a, e); });
    if (t == p.len[b] - 1) {  // the final states
      for (long j = j0; j < j1; ++j) p.h_n[(long)b * H + j] = r.h[j];
      if constexpr (Cell::has_c)
        for (long j = j0; j < j1; ++j) p.c_n[(long)b * H + j] = r.c[j];
    }
  }
  if (c.hstage) {  // this thread's units of h_t, contiguous for the next step's GEMM
    T* st = c.stage_of(t);
    for (int b = u.b0; b < u.b1; ++b) {
      const T* h = p.hs + p.off(t, H) + b * p.ld(H);
      copy(h + j0, h + j1, st + (long)b * H + j0);
    }
  }
}

// dh_t (and dc_t) of row b: upstream gradient + recurrent gradient (+ dh_n / dc_n at the
// sequence's last step).
template <typename T, typename Cell>
RNNCORE_INLINE void gather_grads(const StepContext<T>& c, int t, int b, long j0, long j1) {
  const Problem<T>& p = c.p;
  const bool last = t == p.len[b] - 1;
  const T* up = p.dhs ? p.dhs + p.off(t, p.H) + b * p.ld(p.H) : c.zeros;
  const T* dhn = (p.dhn && last) ? p.dhn + (long)b * p.H : c.zeros;
  const T* rec = c.dh_rec + (long)b * p.H;
  T* dh = c.dh + (long)b * p.H;
#pragma omp simd
  for (long j = j0; j < j1; ++j) dh[j] = rec[j] + up[j] + dhn[j];
  if constexpr (Cell::has_c) {
    const T* dcn = (p.dcn && last) ? p.dcn + (long)b * p.H : c.zeros;
    const T* crec = c.dc_rec + (long)b * p.H;
    T* dc = c.dc + (long)b * p.H;
#pragma omp simd
    for (long j = j0; j < j1; ++j) dc[j] = crec[j] + dcn[j];
  }
}

// One backward step on this thread's units: dh_t -> dG_t, and dh_{t-1} into c.dh_rec. The
// recurrent gradient this thread reads at the start of a step is the one its own GEMM wrote
// at the end of the previous one.
template <typename T, typename Cell, int ACT>
RNNCORE_INLINE void backward_step(const StepContext<T>& c, int t, UnitRange& u, bool rebalance) {
  constexpr int G = Cell::G, R = Cell::R;
  constexpr bool extra = R < G;
  const Problem<T>& p = c.p;
  const int H = p.H, GH = G * H, m = u.b1 - u.b0;
  long j0 = u.j0, j1 = u.j1;
  for (int b = u.b0; b < u.b1; ++b) {
    const Row<T> r = row_of<T, Cell, true>(c, t, b);
    if (t >= p.len[b]) {  // no gradient past the length
      zero_blocks(r.dg, G, H, j0, j1);
      if constexpr (Cell::split) zero_blocks(r.dgh, G, H, j0, j1);
      if constexpr (Cell::direct_dh) zero_blocks(r.dh_prev, 1, H, j0, j1);
      if constexpr (Cell::has_c) zero_blocks(r.dc_prev, 1, H, j0, j1);
      continue;
    }
    gather_grads<T, Cell>(c, t, b, j0, j1);
    Cell::template backward_row<ACT>(r, j0, j1);
  }
  step_barrier(u, rebalance);  // dG_t complete: every thread's GEMM reads all of it
  if (rebalance) {  // this step's GEMM on, the units of the new split (Balance)
    u.bal->template rebalance<T>(u);
    j0 = u.j0, j1 = u.j1;
  }
  if (t > 0) {  // what the cell pass of step t - 1 reads and writes, while the GEMMs run
    const int s = t - 1;
    for (int b = u.b0; b < u.b1; ++b) {
      if (s >= p.len[b]) continue;
      const long r = p.off(s, 1) + b * p.ld(1);
      if constexpr (Cell::GC > 0) prefetch_blocks(p.gates + r * Cell::GC * H, Cell::GC, H, j0, j1, false);
      if constexpr (Cell::has_c) prefetch_blocks(p.cs + r * H, 1, H, j0, j1, false);
      if (p.dhs) prefetch_blocks(p.dhs + r * H, 1, H, j0, j1, false);
      prefetch_blocks(c.dG + r * GH, G, H, j0, j1, true);
      if constexpr (Cell::split) prefetch_blocks(c.dGh + r * GH, G, H, j0, j1, true);
    }
  }
  if constexpr (extra) {  // dextra = dG[:, R*H:] @ wh[:, R*H:]^T (own units), then the cell's second pass
    small_gemm(m, (int)j0, (int)j1, c.dG + p.off(t, GH) + u.b0 * p.ld(GH) + (long)R * H, p.ld(GH),
               c.wrec.rows(R * H, GH), T(0), c.dextra + (long)u.b0 * H, H, t & 1);
    for (int b = u.b0; b < u.b1; ++b)
      if (t < p.len[b]) Cell::template backward_post<ACT>(row_of<T, Cell, true>(c, t, b), j0, j1);
    step_barrier(u);  // backward_post wrote dG_t's first block
  }
  small_gemm(m, (int)j0, (int)j1, c.dGh + p.off(t, GH) + u.b0 * p.ld(GH), p.ld(GH), c.wrec.rows(0, R * H),
             T(Cell::direct_dh ? 1 : 0), c.dh_rec + (long)u.b0 * H, H, t & 1);
}

// The weight panels of unit blocks [u0, u1): forward all gates of wx and wh (wh's extra
// blocks in wbuf2), backward wh^T.
template <typename T, typename Cell, bool BWD>
void pack_blocks(StepContext<T>& c, long u0, long u1) {
  constexpr int G = Cell::G, R = Cell::R;
  const Problem<T>& p = c.p;
  const int H = p.H;
  if constexpr (BWD) {
    pack_unit_blocks(p.wh, p.wt, H, G, u0, u1, c.wbuf);
  } else {
    pack_gate_blocks(p.wx, p.wt, p.D, H, G, 0, G, u0, u1, c.wxbuf);
    pack_gate_blocks(p.wh, p.wt, H, H, G, 0, R, u0, u1, c.wbuf);
    if constexpr (R < G) pack_gate_blocks(p.wh, p.wt, H, H, G, R, G, u0, u1, c.wbuf2);
  }
}

// All steps of the share u, in order from the k0-th: forward t = 0 .. T-1 (the input projection a
// chunk of `chunk` steps ahead, at multiples of it), or (BWD) backward t = T-1 .. 0; a barrier
// after each step of a unit split. A row part with a slot reads its rows' end at every step.
// With u.bal, the split is rebalanced every balance_interval steps (forward, at a chunk's start,
// before its input projection) or every kBalanceSteps steps (backward, at the step's barrier).
template <typename T, typename Cell, bool BWD, int ACT>
void run_steps(StepContext<T>& c, const UnitRange& share, int chunk, int k0 = 0, RowSlot* slot = nullptr) {
  const Problem<T>& p = c.p;
  UnitRange u = share;
  const int every = balance_interval(chunk);  // forward
  for (int k = k0; k < p.T_; ++k) {
    if (slot) u.b1 = (int)slot->claim(k, u.b0);  // a row part: its rows for this step (RowSteal)
    if constexpr (BWD) {
      backward_step<T, Cell, ACT>(c, p.T_ - 1 - k, u, u.bal && k % kBalanceSteps == kBalanceSteps - 1);
    } else {
      if (k % chunk == 0) {
        if (k > 0 && u.bal && k % every == 0) u.bal->template rebalance<T>(u);
        input_projection(c, Cell::G, k, std::min(p.T_, k + chunk), u);
      }
      forward_step<T, Cell, ACT>(c, k, u);
      // h_t complete: the next step's GEMM reads all of it
      step_barrier(u, u.bal && k % every == every - 1 && k + 1 < p.T_);
    }
  }
}

// A forward chunk of steps within the ring of the gate cache, if it has one (StepContext: ring).
template <typename T>
int ring_chunk(const StepContext<T>& c, int chunk) {
  return c.ring ? std::min(chunk, c.ring) : chunk;
}

// The time loop on the step team. Unit split: each thread packs the panels of its own unit
// blocks (no one else reads them) and runs every step on them. Row split: the caller packs all
// panels (every group reads them all), then the groups of rows are claimed one at a time.
template <typename T, typename Cell, bool BWD, int ACT>
void steps(StepContext<T>& c) {
  constexpr int G = Cell::G;
  const Problem<T>& p = c.p;
  const int H = p.H;
  const int D = BWD ? 0 : p.D;
  int nt = step_threads<T>(p.B, H, G, D, p.T_);
  const double work = step_work(p.B, H, G, D) * p.T_;
  if (c.xstage) nt = std::min(nt, c.xslots);  // (the count may have changed since the stage was sized)
  if (!c.in_place && split_rows(p.B, nt, (double)H * G * H * sizeof(T), (double)p.D * G * H * sizeof(T), BWD)) {
    pack_blocks<T, Cell, BWD>(c, 0, unit_blocks<T>(H));
    const int mode = step_balance_mode();
    RowSteal steal(mode, p.B, p.T_);
    bulk_region(nt, [&](Claims& cl) {
      // a group a thread of the region (the probe: one), the same chunk for all, whoever moves
      // rows mid-chunk. On the caller alone (team.h: the cores were taken; no worker will come)
      // all rows, with no slot to claim steps from and none to take.
      const long even = row_group(p.B, cl.threads());
      const int chunk = ring_chunk(c, chunk_steps<T>(p.T_, (int)even, G * H, 1));
      const bool moves = cl.threads() > 1;
      cl.for_chunks(p.B, mode == 2 ? p.B : even, [&](long b0, long b1) {
        run_steps<T, Cell, BWD, ACT>(c, row_range<T>(H, b0, b1), chunk, 0, moves ? steal.open(0, b0, b1) : nullptr);
      });
      for (RowPart part; moves && steal.take(part);)
        run_steps<T, Cell, BWD, ACT>(c, row_range<T>(H, part.b0, part.end), chunk, (int)part.n, part.slot);
    }, work);
    return;
  }
  long long shared[2 * kMaxBalance];  // Balance: the threads' ticks, two intervals
  parallel_region(nt, [&](int tid, int n) {
    UnitRange u = unit_range<T>(H, p.B, tid, n);
    if (!c.in_place) pack_blocks<T, Cell, BWD>(c, u.u0, u.u1);
    Balance bal;
    if (n > 1 && n <= kMaxBalance && step_balance_mode() != 1) {
      bal.shared = shared, bal.nt = n, bal.tid = tid, bal.H = H, bal.blocks = unit_blocks<T>(H);
      bal.probe = step_balance_mode() == 2;
      for (int i = 0; i < n; ++i) {
        const UnitRange ui = unit_range<T>(H, p.B, i, n);
        bal.counts[i] = ui.u1 - ui.u0;
      }
      bal.leave();
      u.bal = &bal;
    }
    run_steps<T, Cell, BWD, ACT>(c, u, ring_chunk(c, chunk_steps<T>(p.T_, p.B, G * H, n)));
  }, work);
}

// The time loop for the call's Rnn activation (a cell without one ignores ACT).
template <typename T, typename Cell, bool BWD>
void time_loop(StepContext<T>& c) {
  if constexpr (Cell::has_activation) {
    switch (c.p.act) {
      case kTanh: steps<T, Cell, BWD, kTanh>(c); break;
      case kRelu: steps<T, Cell, BWD, kRelu>(c); break;
      default: steps<T, Cell, BWD, kSigmoid>(c); break;
    }
  } else {
    steps<T, Cell, BWD, kTanh>(c);
  }
}

// Whether a forward call reads its weights in place instead of packing them: a single step of
// a batch of at most 4 rows on one thread (streaming inference, sampling a token at a time),
// where packing would read and write every weight once more than the step itself reads it. The
// weights in rnncore's row-vector layout (a row of wx or wh is a row of the GEMM) and no second
// recurrent GEMM (R = G).
template <typename T, typename Cell>
bool in_place_step(const Problem<T>& p) {
  return p.T_ == 1 && p.B <= 4 && !p.wt && Cell::R == Cell::G && step_threads<T>(p.B, p.H, Cell::G, p.D, 1) == 1;
}

// Whether the forward reads its rows of h_{t-1} and x_t from the stages (StepContext::hstage,
// xstage): batch-first, with rows that are apart, and a step after the first.
template <typename T>
bool staged_rows(const Problem<T>& p) {
  return p.batch_first && p.B > 1 && p.T_ > 1;
}

template <typename T, typename Cell>
void forward(Problem<T>& p) {
  blas_single_thread();
  DenormalGuard guard;
  constexpr int G = Cell::G, R = Cell::R, GC = Cell::GC;
  const int B = p.B, H = p.H, D = p.D, GH = G * H;
  const long nub = unit_blocks<T>(H), sld = nub * G * kUnitBlock<T>;
  const size_t nzeros = std::max((size_t)B * H, (size_t)GH);  // stands in for h0, c0 or b_hh
  Workspace<T>& ws = Workspace<T>::local(Workspace<T>::kForward);
  const bool staged = staged_rows(p);
  const int xslots = std::max(1, call_threads());
  const size_t nxstage = staged ? (size_t)xslots * B * D : 0;  // a block a thread
  // no cache: rings of the longest chunk any split takes (steps: a group of B / threads rows)
  const int ring = p.no_cache ? chunk_steps<T>(p.T_, std::max(1, B / xslots), GH, 1) : 0;
  const size_t ngring = (size_t)ring * B * GC * H, ncring = p.no_cache && Cell::has_c ? 2 * (size_t)B * H : 0;
  T* scratch = ws.get((size_t)B * sld + nzeros + GH + (staged ? 2 * (size_t)B * H : 0) + nxstage + ngring + ncring);
  T* zeros = scratch + (size_t)B * sld;
  T* bsum = zeros + nzeros;
  fill(zeros, zeros + nzeros, T(0));
  for (int j = 0; j < GH; ++j) bsum[j] = p.b_ih[j] + (p.b_hh ? p.b_hh[j] : T(0));
  StepContext<T> ctx{p, scratch, sld, bsum, zeros};
  if (staged) {
    ctx.hstage = bsum + GH;
    ctx.xstage = ctx.hstage + 2 * (size_t)B * H;
    ctx.xslots = xslots;
  }
  ctx.gF = GC * H;
  if (p.no_cache) {
    ctx.gring = bsum + GH + (staged ? 2 * (size_t)B * H : 0) + nxstage;
    ctx.cring = ctx.gring + ngring;
    ctx.ring = ring;
    ctx.pre_ring = GC > 0 ? ring : 0;
  }
  ctx.in_place = in_place_step<T, Cell>(p);
  ctx.wbuf = Workspace<T>::local(Workspace<T>::kPacked)
                 .get(ctx.in_place ? (size_t)B * GH : panels_size<T>(nub * R, H));
  ctx.wrec = packed_view<T>(ctx.wbuf, H);
  if constexpr (R < G) {
    ctx.wbuf2 = Workspace<T>::local(Workspace<T>::kPacked2).get(panels_size<T>(nub * (G - R), H));
    ctx.wrec2 = packed_view<T>(ctx.wbuf2, H);
  }

  // x @ wx lands in the first G blocks of the gate cache (or in hs, without one), a chunk of
  // steps ahead of the cell (input_projection), which overwrites it step by step
  if (!ctx.in_place) ctx.wxbuf = Workspace<T>::local(Workspace<T>::kPackedInput).get(panels_size<T>(nub * G, D));
  ctx.wx = packed_view<T>(ctx.wxbuf, D);
  ctx.pre = GC > 0 ? (p.no_cache ? ctx.gring : p.gates) : p.hs;
  ctx.F = GC > 0 ? (long)GC * H : H;

  time_loop<T, Cell, false>(ctx);
  Workspace<T>::release_all_large();
}

// The previous hidden states h_{t-1} of every row, as the hidden-weight gradient reads them.
// Time-major, they are hs shifted by one step (B rows), with h0 (or zeros) for the first step.
// Batch-first, shifting by one row would pair hs[b-1, T-1] with step 0 of sequence b, so they
// are copied into `prev` (rows, H) of the workspace, h0[b] first in every sequence: the product
// is then exact (a correction GEMM that subtracted the wrong pairs again lost precision).
template <typename T>
struct PrevStates {
  const T* m = nullptr;  // batch-first: (rows, H), row (b, t) = h_{t-1} of sequence b
};

template <typename T>
PrevStates<T> previous_states(const Problem<T>& p, T* prev) {
  PrevStates<T> s;
  if (!p.batch_first) return s;
  const int H = p.H, T_ = p.T_;
  for (int b = 0; b < p.B; ++b) {
    T* dst = prev + (long)b * T_ * H;
    if (p.h0)
      copy(p.h0 + (long)b * H, p.h0 + (long)(b + 1) * H, dst);
    else
      fill(dst, dst + H, T(0));
    copy(p.hs + (long)b * T_ * H, p.hs + ((long)b * T_ + T_ - 1) * H, dst + H);
  }
  s.m = prev;
  return s;
}

// dW[:, lo:hi] (F, GH) = A^T dGc over `rows` rows (+ dW when beta is 1), A (rows, F) with row
// stride lda, dGc the columns lo.. of dG (row stride GH). wt: dW is PyTorch's (GH, F), and its
// rows lo..hi get dGc^T A.
template <typename T>
inline void weight_grad(bool wt, int F, long lo, long hi, int rows, const T* A, int lda, const T* dGc, int GH, T beta,
                        T* dW) {
  const int n = (int)(hi - lo);
  if (wt)
    gemm(true, false, n, F, rows, T(1), dGc, GH, A, lda, beta, dW + lo * F, F);
  else
    gemm(true, false, F, n, rows, T(1), A, lda, dGc, GH, beta, dW + lo, GH);
}

// dW[:, lo:hi] = sum over (t, b) of h_{t-1}[b]^T dG_t[b][lo:hi], as one GEMM over all rows (plus,
// time-major, one k = B GEMM for h0 at step 0).
template <typename T>
void hidden_weight_grad(const Problem<T>& p, const T* dG, int GH, const PrevStates<T>& prev, long lo, long hi,
                        T* dW) {
  if (hi <= lo) return;
  const int H = p.H;
  if (prev.m) {
    weight_grad(p.wt, H, lo, hi, (int)p.rows(), prev.m, H, dG + lo, GH, T(0), dW);
    return;
  }
  const long shift = p.B;
  weight_grad(p.wt, H, lo, hi, (int)(p.rows() - shift), p.hs, H, dG + shift * GH + lo, GH, T(0), dW);
  if (p.h0) weight_grad(p.wt, H, lo, hi, p.B, p.h0, H, dG + lo, GH, T(1), dW);
}

// dwh[:, lo:hi]: the blocks [0, R) multiply h_{t-1}; the extra blocks [R, G) the vector the
// cell cached in gate block extra_in at the same step.
template <typename T, typename Cell>
void hidden_weight_grad(const Problem<T>& p, const T* dGh, const PrevStates<T>& prev, long lo, long hi) {
  const int H = p.H, GH = Cell::G * H;
  const long RH = (long)Cell::R * H;
  hidden_weight_grad(p, dGh, GH, prev, lo, std::min<long>(hi, RH), p.dwh);
  if constexpr (Cell::R < Cell::G) {
    const long a = std::max<long>(lo, RH);
    if (hi > a)
      weight_grad(p.wt, H, a, hi, (int)p.rows(), p.gates + (long)Cell::extra_in * H, Cell::GC * H, dGh + a, GH, T(0),
                  p.dwh);
  }
}

// out[lo:hi] = column sums of the (rows, ld) matrix M, rows in order.
template <typename T>
void column_sums(const T* M, long rows, long ld, long lo, long hi, T* out) {
  for (long j = lo; j < hi; ++j) out[j] = T(0);
  for (long r = 0; r < rows; ++r) {
    const T* m = M + r * ld;
#pragma omp simd
    for (long j = lo; j < hi; ++j) out[j] += m[j];
  }
}

template <typename T, typename Cell>
void backward(Problem<T>& p) {
  blas_single_thread();
  DenormalGuard guard;
  constexpr int G = Cell::G;
  constexpr bool split = Cell::split, has_c = Cell::has_c, extra = Cell::R < Cell::G;
  const int B = p.B, H = p.H, D = p.D, GH = G * H;
  const long rows = p.rows();
  const size_t nG = (size_t)rows * GH, nBH = (size_t)B * H;
  const size_t nvec = 2 + has_c + extra;  // dh, zeros, dc, dextra: (B, H) each
  // dG (and dGh) are written whole by the backward steps; only the zeros must be cleared
  Workspace<T>& ws = Workspace<T>::local(Workspace<T>::kBackward);
  T* dG = ws.get(nG * (split ? 2 : 1) + nvec * nBH + (p.batch_first ? (size_t)rows * H : 0));
  T* vec = dG + nG * (split ? 2 : 1);
  T* zeros = vec + nBH;
  T* prev_buf = vec + nvec * nBH;  // batch-first: the previous states, filled after the loop
  fill(zeros, zeros + nBH, T(0));
  StepContext<T> ctx{p, nullptr, 0, nullptr, zeros};
  ctx.gF = Cell::GC * H;
  const long nub = unit_blocks<T>(H);
  ctx.wbuf = Workspace<T>::local(Workspace<T>::kPacked).get(panels_size<T>(nub, GH));  // wh^T by unit block
  ctx.wrec = packed_view<T>(ctx.wbuf, GH);
  ctx.dG = dG;
  ctx.dGh = split ? dG + nG : dG;
  ctx.dh = vec;
  if constexpr (has_c) ctx.dc = vec + 2 * nBH;
  if constexpr (extra) ctx.dextra = vec + (2 + has_c) * nBH;
  ctx.dh_rec = p.dh0;  // carried down the loop; after step 0 it is dh0
  ctx.dc_rec = p.dc0;
  fill(p.dh0, p.dh0 + nBH, T(0));
  if constexpr (has_c) fill(p.dc0, p.dc0 + nBH, T(0));

  time_loop<T, Cell, true>(ctx);

  const PrevStates<T> prev = previous_states(p, prev_buf);
  const T* dGh = ctx.dGh;

  const long units = std::max(num_chunks(GH), num_chunks(rows));
  const double bulk_work = (double)rows * GH * (2.0 * D + H);
  bulk_region(bulk_threads(bulk_work, units), [&](Claims& cl) {
    cl.for_chunks(GH, [&](long lo, long hi) {
      weight_grad(p.wt, D, lo, hi, (int)rows, p.x, D, dG + lo, GH, T(0), p.dwx);
      hidden_weight_grad<T, Cell>(p, dGh, prev, lo, hi);
      column_sums(dG, rows, GH, lo, hi, p.db_ih);
      if (p.db_hh && split) column_sums(dGh, rows, GH, lo, hi, p.db_hh);
      else if (p.db_hh) copy(p.db_ih + lo, p.db_ih + hi, p.db_hh + lo);  // the same sums (dGh is dG)
    });
    cl.for_chunks(rows, [&](long lo, long hi) {
      gemm(false, !p.wt, (int)(hi - lo), D, GH, T(1), dG + lo * GH, GH, p.wx, p.wt ? D : GH, T(0), p.dx + lo * D,
           D);
    });
  }, bulk_work);
  Workspace<T>::release_all_large();
}

#undef RNNCORE_INLINE

RNNCORE_NS_END
