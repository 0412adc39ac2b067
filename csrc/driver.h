// driver.h: the recurrence driver shared by every cell (cells.h describes the cells).
//
// forward:  preact = x @ wx for all steps (one GEMM, rows split over threads), then the
//           time loop, where a step is the recurrent GEMM h_{t-1} @ wh[:, :R*H], the cell's
//           fused elementwise pass over its rows (and, for a cell with extra blocks, a
//           first pass, the extra GEMM and then the second pass).
// backward: the reverse time loop produces dG (gradient of the pre-activations) for all
//           steps, then dwx = x^T dG, dwh = h_prev^T dG_h, dx = dG wx^T are one GEMM each
//           and the biases are column sums, all split over output rows/columns.
// A step runs on all nt threads of the driver's region: recurrent GEMMs are split over
// output columns (fixed chunks), elementwise passes over hidden units; barrier() (team.h)
// separates the phases. Every cell-independent part lives here: row addressing, masking
// past a sequence's length (a padded row's output, whole cache and gradients are 0, and the
// cell never sees it), final states, dh_n / dc_n, the cache layout (GC blocks of H a row).
// One workspace a call, sized before the loops (and kept for the next call of this thread);
// nothing is allocated inside the loops.
#pragma once

#include "isa.h"
#include "memops.h"

#include <algorithm>

#include "blas.h"
#include "cells.h"
#include "parallel.h"
#include "problem.h"
#include "small_gemm.h"

RNNCORE_NS_BEGIN

// out[:, cols of this thread] = A (B, W.K) @ W[:, cols] + beta * out (beta 0 or 1), in fixed
// column chunks. Small batches use the packed register-blocked kernel, larger ones the BLAS.
template <typename T>
inline void step_gemm(int tid, int nt, int B, int N, const T* A, long lda, const Packed<T>& W, T beta, T* out,
                      long ldo) {
  for_chunks(N, tid, nt, [&](long lo, long hi) {
    if (B <= kSmallBatch)
      small_gemm(B, (int)lo, (int)hi, A, lda, W, beta, out, ldo);
    else
      gemm(false, false, B, (int)(hi - lo), W.K, T(1), A, (int)lda, W.plain + lo, (int)W.ldw, beta, out + lo,
           (int)ldo);
  });
}

// An unpacked (K, N) matrix for the BLAS path of step_gemm.
template <typename T>
Packed<T> plain(const T* W, int K, int N, long ldw) {
  Packed<T> w;
  w.K = K;
  w.N = N;
  w.plain = W;
  w.ldw = ldw;
  return w;
}

// Threads for the time loop: one unless a step's recurrent GEMM pays for a team: 64K
// multiply-adds a thread, so a batch-1 LSTM step from H = 128 on (its 4H x H weights split over
// the cores, each half staying in that core's cache) runs on two threads. Measured at B = 1,
// H = 256: the forward 1.7x faster than with the former 256K bound; the team falls back to one
// thread by itself when other work holds the cores.
inline int step_threads(int B, int H, int G) {
  return threads_for((double)B * H * (double)G * H, num_chunks((long)G * H), 65536.0);
}

// This thread's hidden units [j0, j1).
inline void unit_range(int H, int tid, int nt, long& j0, long& j1) { split_range(H, nt, tid, 8, j0, j1); }

// Units [j0, j1) of `blocks` consecutive blocks of H set to zero.
template <typename T>
inline void zero_blocks(T* a, int blocks, int H, long j0, long j1) {
  for (int k = 0; k < blocks; ++k)
    for (long j = j0; j < j1; ++j) a[(long)k * H + j] = T(0);
}

// What the steps of one call share besides the problem: the workspace.
template <typename T>
struct StepContext {
  const Problem<T>& p;
  T* scratch;       // forward: (B, G*H) results of the step GEMMs
  const T* bsum;    // forward: (G*H) b_ih + b_hh
  const T* zeros;   // at least (B, H) and (G*H) zeros: stands in for a missing h0, c0, b_hh, dh
  Packed<T> wrec{};   // forward: wh (H, G*H); backward: wh^T (G*H, H)
  Packed<T> wrec2{};  // forward, extra blocks: wh[:, R*H:] (H, (G-R)*H)
  // backward only
  T* dG = nullptr;      // (T, B, G*H) layout: gradient of the input-side pre-activations
  T* dGh = nullptr;     // same for the hidden side when a cell splits them, else == dG
  T* dh = nullptr;      // (B, H) total gradient reaching h_t
  T* dc = nullptr;      // (B, H) total gradient reaching c_t (has_c)
  T* dextra = nullptr;  // (B, H) the backward extra GEMM's result (extra blocks)
  T* dh_rec = nullptr;  // (B, H) gradient reaching h_{t-1} through the recurrence
  T* dc_rec = nullptr;  // (B, H) gradient reaching c_{t-1}

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
  const T* hprev(int t, long& ldh) const { return prev_of(p.hs, p.h0, t, ldh); }
  const T* cprev(int t, long& ldc) const { return prev_of(p.cs, p.c0, t, ldc); }
};

// Per row and phase, so inlined whatever the compiler's estimate of its size.
#define RNNCORE_INLINE inline __attribute__((always_inline))

// Row b of step t: every pointer the cell declares, addressed in the caller's layout, for the
// forward or (BWD) the backward step.
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
  if constexpr (Cell::GC > 0) r.g = p.gates + p.off(t, Cell::GC * H) + b * p.ld(Cell::GC * H);
  if constexpr (Cell::has_c) {
    long ldc;
    r.c = p.cs + p.off(t, H) + b * p.ld(H);
    r.cp = c.cprev(t, ldc) + b * ldc;
  }
  if constexpr (!BWD) {
    r.s = c.scratch + (long)b * GH;
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

// One forward step on thread tid of nt: h_{t-1} -> h_t for every row.
template <typename T, typename Cell, int ACT>
RNNCORE_INLINE void forward_step(const StepContext<T>& c, int t, int tid, int nt) {
  constexpr int G = Cell::G, R = Cell::R, GC = Cell::GC;
  constexpr bool extra = R < G;
  const Problem<T>& p = c.p;
  const int H = p.H;
  long ldh;
  const T* hp = c.hprev(t, ldh);
  step_gemm(tid, nt, p.B, R * H, hp, ldh, c.wrec, T(0), c.scratch, G * H);
  barrier();
  long j0, j1;
  unit_range(H, tid, nt, j0, j1);
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
  if constexpr (extra) {
    for (int b = 0; b < p.B; ++b) {
      const Row<T> r = row_of<T, Cell, false>(c, t, b);
      if (!padded(r, b)) Cell::template forward_pre<ACT>(r, j0, j1);
    }
    barrier();
    step_gemm(tid, nt, p.B, (G - R) * H, p.gates + p.off(t, GC * H) + (long)Cell::extra_in * H, p.ld(GC * H),
              c.wrec2, T(0), c.scratch + (long)R * H, G * H);
    barrier();
  }
  for (int b = 0; b < p.B; ++b) {
    const Row<T> r = row_of<T, Cell, false>(c, t, b);
    if (extra ? t >= p.len[b] : padded(r, b)) continue;
    Cell::template forward_row<ACT>(r, j0, j1);
    if (t == p.len[b] - 1) {  // the final states
      for (long j = j0; j < j1; ++j) p.h_n[(long)b * H + j] = r.h[j];
      if constexpr (Cell::has_c)
        for (long j = j0; j < j1; ++j) p.c_n[(long)b * H + j] = r.c[j];
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

// One backward step on thread tid of nt: dh_t -> dG_t and dh_{t-1} (into c.dh_rec).
template <typename T, typename Cell, int ACT>
RNNCORE_INLINE void backward_step(const StepContext<T>& c, int t, int tid, int nt) {
  constexpr int G = Cell::G, R = Cell::R;
  constexpr bool extra = R < G;
  const Problem<T>& p = c.p;
  const int H = p.H, GH = G * H;
  long j0, j1;
  unit_range(H, tid, nt, j0, j1);
  for (int b = 0; b < p.B; ++b) {
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
  barrier();
  if constexpr (extra) {  // dextra = dG[:, R*H:] @ wh[:, R*H:]^T, then the cell's second pass
    step_gemm(tid, nt, p.B, H, c.dG + p.off(t, GH) + (long)R * H, p.ld(GH), c.wrec.rows(R * H, GH), T(0),
              c.dextra, H);
    barrier();
    for (int b = 0; b < p.B; ++b)
      if (t < p.len[b]) Cell::template backward_post<ACT>(row_of<T, Cell, true>(c, t, b), j0, j1);
    barrier();
  }
  step_gemm(tid, nt, p.B, H, c.dGh + p.off(t, GH), p.ld(GH), c.wrec.rows(0, R * H), T(Cell::direct_dh ? 1 : 0),
            c.dh_rec, H);
}

// The time loop on the step team: forward t = 0 .. T-1, or (BWD) backward t = T-1 .. 0.
template <typename T, typename Cell, bool BWD, int ACT>
void steps(const StepContext<T>& c) {
  const Problem<T>& p = c.p;
  parallel_region(step_threads(p.B, p.H, Cell::G), [&](int tid, int nt) {
    for (int k = 0; k < p.T_; ++k) {
      if constexpr (BWD)
        backward_step<T, Cell, ACT>(c, p.T_ - 1 - k, tid, nt);
      else
        forward_step<T, Cell, ACT>(c, k, tid, nt);
      barrier();
    }
  });
}

// The time loop for the call's Rnn activation (a cell without one ignores ACT).
template <typename T, typename Cell, bool BWD>
void time_loop(const StepContext<T>& c) {
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

template <typename T, typename Cell>
void forward(Problem<T>& p) {
  blas_single_thread();
  DenormalGuard guard;
  constexpr int G = Cell::G, R = Cell::R, GC = Cell::GC;
  const int B = p.B, H = p.H, D = p.D, GH = G * H;
  const long rows = p.rows();
  const size_t nzeros = std::max((size_t)B * H, (size_t)GH);  // stands in for h0, c0 or b_hh
  Workspace<T>& ws = Workspace<T>::local(Workspace<T>::kForward);
  T* scratch = ws.get((size_t)B * GH + nzeros + GH);
  T* zeros = scratch + (size_t)B * GH;
  T* bsum = zeros + nzeros;
  fill(zeros, zeros + nzeros, T(0));
  for (int j = 0; j < GH; ++j) bsum[j] = p.b_ih[j] + (p.b_hh ? p.b_hh[j] : T(0));
  StepContext<T> ctx{p, scratch, bsum, zeros};
  const T* wh2 = p.wh + (long)R * H;  // the extra blocks' columns
  if (B <= kSmallBatch) {
    T* buf = Workspace<T>::local(Workspace<T>::kPacked).get(packed_size<T>(H, GH));
    ctx.wrec = pack(p.wh, GH, 1, H, GH, buf, p.wh, GH);
    if constexpr (R < G) {
      T* buf2 = Workspace<T>::local(Workspace<T>::kPacked2).get(packed_size<T>(H, (G - R) * H));
      ctx.wrec2 = pack(wh2, GH, 1, H, (G - R) * H, buf2, wh2, GH);
    }
  } else {
    ctx.wrec = plain(p.wh, H, GH, GH);
    if constexpr (R < G) ctx.wrec2 = plain(wh2, H, (G - R) * H, GH);
  }

  // x @ wx lands in the first G blocks of the gate cache (or in hs, without one) and is
  // overwritten by the cell step by step
  T* pre = GC > 0 ? p.gates : p.hs;
  const int F = GC > 0 ? GC * H : H;
  parallel_region(bulk_threads((double)rows * D * GH, num_chunks(rows)), [&](int tid, int nt) {
    for_chunks(rows, tid, nt, [&](long lo, long hi) {
      gemm(false, false, (int)(hi - lo), GH, D, T(1), p.x + lo * D, D, p.wx, GH, T(0), pre + lo * F, F);
    });
  });

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

// dW[:, lo:hi] = sum over (t, b) of h_{t-1}[b]^T dG_t[b][lo:hi], as one GEMM over all rows (plus,
// time-major, one k = B GEMM for h0 at step 0).
template <typename T>
void hidden_weight_grad(const Problem<T>& p, const T* dG, int GH, const PrevStates<T>& prev, long lo, long hi,
                        T* dW) {
  if (hi <= lo) return;
  const int H = p.H, n = (int)(hi - lo);
  if (prev.m) {
    gemm(true, false, H, n, (int)p.rows(), T(1), prev.m, H, dG + lo, GH, T(0), dW + lo, GH);
    return;
  }
  const long shift = p.B;
  gemm(true, false, H, n, (int)(p.rows() - shift), T(1), p.hs, H, dG + shift * GH + lo, GH, T(0), dW + lo, GH);
  if (p.h0) gemm(true, false, H, n, p.B, T(1), p.h0, H, dG + lo, GH, T(1), dW + lo, GH);
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
      gemm(true, false, H, (int)(hi - a), (int)p.rows(), T(1), p.gates + (long)Cell::extra_in * H, Cell::GC * H,
           dGh + a, GH, T(0), p.dwh + a, GH);
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
  StepContext<T> ctx{p, nullptr, nullptr, zeros};
  Workspace<T>& wt = Workspace<T>::local(Workspace<T>::kPacked);  // wh^T: packed, or plain for the BLAS
  if (B <= kSmallBatch) {
    ctx.wrec = pack(p.wh, 1, GH, GH, H, wt.get(packed_size<T>(GH, H)), (const T*)nullptr, 0);
  } else {
    T* whT = wt.get((size_t)H * GH);
    for (int i = 0; i < H; ++i)
      for (int j = 0; j < GH; ++j) whT[(long)j * H + i] = p.wh[(long)i * GH + j];
    ctx.wrec = plain(whT, GH, H, H);
  }
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
  parallel_region(bulk_threads((double)rows * GH * (2.0 * D + H), units), [&](int tid, int nt) {
    for_chunks(GH, tid, nt, [&](long lo, long hi) {
      gemm(true, false, D, (int)(hi - lo), (int)rows, T(1), p.x, D, dG + lo, GH, T(0), p.dwx + lo, GH);
      hidden_weight_grad<T, Cell>(p, dGh, prev, lo, hi);
      column_sums(dG, rows, GH, lo, hi, p.db_ih);
      if (p.db_hh) column_sums(dGh, rows, GH, lo, hi, p.db_hh);
    });
    for_chunks(rows, tid, nt, [&](long lo, long hi) {
      gemm(false, true, (int)(hi - lo), D, GH, T(1), dG + lo * GH, GH, p.wx, GH, T(0), p.dx + lo * D, D);
    });
  });
  Workspace<T>::release_all_large();
}

#undef RNNCORE_INLINE

RNNCORE_NS_END
