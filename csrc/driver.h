// driver.h: the recurrence driver shared by every cell (cells.h supplies the step).
//
// forward:  preact = x @ wx for all steps (one GEMM, rows split over threads), then the
//           time loop, where a step is the cell's recurrent GEMM + fused elementwise pass.
// backward: the reverse time loop produces dG (gradient of the pre-activations) for all
//           steps, then dwx = x^T dG, dwh = h_prev^T dG_h, dx = dG wx^T are one GEMM each
//           and the biases are column sums, all split over output rows/columns.
// One workspace a call, sized before the loops (and kept for the next call of this thread);
// nothing is allocated inside the loops.
#pragma once

#include "isa.h"
#include "memops.h"

#include <algorithm>
#include <vector>

#include "blas.h"
#include "cells.h"
#include "parallel.h"
#include "problem.h"

RNNCORE_NS_BEGIN

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

// Threads for the time loop: one unless a step's recurrent GEMM pays for a team.
inline int step_threads(int B, int H, int G) {
  return threads_for((double)B * H * (double)G * H, num_chunks((long)G * H), 262144.0);
}

template <typename T, typename Cell>
void forward(Problem<T>& p) {
  blas_single_thread();
  DenormalGuard guard;
  const int B = p.B, H = p.H, D = p.D, GH = Cell::G * H;
  const long rows = p.rows();
  const size_t nzeros = std::max((size_t)B * H, (size_t)GH);  // stands in for h0, c0 or b_hh
  Workspace<T>& ws = Workspace<T>::local(Workspace<T>::kForward);
  T* scratch = ws.get((size_t)B * GH + nzeros + GH);
  T* zeros = scratch + (size_t)B * GH;
  T* bsum = zeros + nzeros;
  fill(zeros, zeros + nzeros, T(0));
  for (int j = 0; j < GH; ++j) bsum[j] = p.bx[j] + (p.bh ? p.bh[j] : T(0));
  StepContext<T> ctx{p, scratch, bsum, zeros};
  if (B <= kSmallBatch) {
    T* buf = Workspace<T>::local(Workspace<T>::kPacked).get(packed_size<T>(H, GH));
    ctx.wrec = pack(p.wh, GH, 1, H, GH, buf, p.wh, GH);
    if (Cell::RESET_BEFORE) {
      T* buf2 = Workspace<T>::local(Workspace<T>::kPacked2).get(packed_size<T>(H, H));
      ctx.wrec2 = pack(p.wh + 2 * H, GH, 1, H, H, buf2, p.wh + 2 * H, GH);
    }
  } else {
    ctx.wrec = plain(p.wh, H, GH, GH);
    if (Cell::RESET_BEFORE) ctx.wrec2 = plain(p.wh + 2 * H, H, H, GH);
  }

  int F = 0;
  T* pre = Cell::preact(p, F);
  parallel_region(bulk_threads((double)rows * D * GH, num_chunks(rows)), [&](int tid, int nt) {
    for_chunks(rows, tid, nt, [&](long lo, long hi) {
      gemm(false, false, (int)(hi - lo), GH, D, T(1), p.x + lo * D, D, p.wx, GH, T(0), pre + lo * F, F);
    });
  });

  parallel_region(step_threads(B, H, Cell::G), [&](int tid, int nt) {
    for (int t = 0; t < p.T_; ++t) {
      Cell::forward_step(ctx, t, tid, nt);
      barrier();
    }
  });
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

// Cells whose hidden-side GEMM input is not h_{t-1} for every block override this.
template <typename T, typename Cell>
struct HiddenWeightGrad {
  static void run(const Problem<T>& p, const T* dGh, const PrevStates<T>& prev, long lo, long hi) {
    hidden_weight_grad(p, dGh, Cell::G * p.H, prev, lo, hi, p.dwh);
  }
};

template <typename T>
struct HiddenWeightGrad<T, GRUResetBeforeCell> {
  static void run(const Problem<T>& p, const T* dG, const PrevStates<T>& prev, long lo, long hi) {
    const int H = p.H, GH = 3 * H;
    hidden_weight_grad(p, dG, GH, prev, lo, std::min<long>(hi, 2 * H), p.dwh);
    long a = std::max<long>(lo, 2 * H);
    if (hi > a)  // the n block multiplies r * h_{t-1}, cached as the fourth gate block
      gemm(true, false, H, (int)(hi - a), (int)p.rows(), T(1), p.gates + 3 * H, 4 * H, dG + a, GH, T(0),
           p.dwh + a, GH);
  }
};

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
  const int B = p.B, H = p.H, D = p.D, GH = Cell::G * H;
  const long rows = p.rows();
  const size_t nG = (size_t)rows * GH, nBH = (size_t)B * H;
  // dG (and dGh) are written whole by the backward steps; only the zeros must be cleared
  Workspace<T>& ws = Workspace<T>::local(Workspace<T>::kBackward);
  T* dG = ws.get(nG * (Cell::SPLIT ? 2 : 1) + 2 * nBH + (p.batch_first ? (size_t)rows * H : 0));
  T* dGh = Cell::SPLIT ? dG + nG : dG;
  T* tmp = dG + nG * (Cell::SPLIT ? 2 : 1);
  T* zeros = tmp + nBH;
  T* prev_buf = zeros + nBH;  // batch-first: the previous states, filled after the loop
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
  ctx.dGh = dGh;
  ctx.tmp = tmp;
  ctx.dh_rec = p.dh0;  // carried down the loop; after step 0 it is dh0
  ctx.dc_rec = p.dc0;
  fill(p.dh0, p.dh0 + nBH, T(0));
  if (Cell::HAS_C) fill(p.dc0, p.dc0 + nBH, T(0));

  parallel_region(step_threads(B, H, Cell::G), [&](int tid, int nt) {
    for (int t = p.T_ - 1; t >= 0; --t) {
      Cell::backward_step(ctx, t, tid, nt);
      barrier();
    }
  });

  const PrevStates<T> prev = previous_states(p, prev_buf);

  const long units = std::max(num_chunks(GH), num_chunks(rows));
  parallel_region(bulk_threads((double)rows * GH * (2.0 * D + H), units), [&](int tid, int nt) {
    for_chunks(GH, tid, nt, [&](long lo, long hi) {
      gemm(true, false, D, (int)(hi - lo), (int)rows, T(1), p.x, D, dG + lo, GH, T(0), p.dwx + lo, GH);
      HiddenWeightGrad<T, Cell>::run(p, dGh, prev, lo, hi);
      column_sums(dG, rows, GH, lo, hi, p.dbx);
      if (p.dbh) column_sums(dGh, rows, GH, lo, hi, p.dbh);
    });
    for_chunks(rows, tid, nt, [&](long lo, long hi) {
      gemm(false, true, (int)(hi - lo), D, GH, T(1), dG + lo * GH, GH, p.wx, GH, T(0), p.dx + lo * D, D);
    });
  });
  Workspace<T>::release_all_large();
}

RNNCORE_NS_END
