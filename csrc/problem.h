// problem.h: one recurrent call, its tensors and their layout.
//
// Sizes: T steps, B sequences, D input features, H hidden units; a cell has G weight blocks
// (wx (D, G*H), wh (H, G*H)) and keeps GC blocks of H per (t, b) in its `gates` cache.
// Every per-(t, b) tensor with F features (x, hs, gates, dG, dx) lives in the caller's
// layout: time-major (T, B, F) or batch-first (B, T, F). Either way it is a (T*B, F) matrix
// in memory order, and step t is a (B, F) block at off(t, F) with row stride ld(F): that is
// what lets the GEMMs read batch-first input without copying it.
#pragma once

#include <vector>

#include "small_gemm.h"

namespace rnncore {

template <typename T>
struct Problem {
  int T_ = 0, B = 0, D = 0, H = 0;  // T_: steps
  bool batch_first = false;
  int act = 0;  // Elman activation (activations.h)

  // inputs
  const T* x = nullptr;   // (T, B, D) or (B, T, D)
  const T* wx = nullptr;  // (D, G*H)
  const T* wh = nullptr;  // (H, G*H)
  const T* bx = nullptr;  // (G*H), input-side bias
  const T* bh = nullptr;  // (G*H) or null, hidden-side bias
  const T* h0 = nullptr;  // (B, H) or null (zeros)
  const T* c0 = nullptr;  // (B, H) or null (zeros), LSTM
  const int* len = nullptr;  // (B), 1 <= len[b] <= T; never null inside a driver

  // forward outputs, and the cache the backward reads
  T* hs = nullptr;     // (T, B, H) layout; zero past a sequence's length
  T* hn = nullptr;     // (B, H) state at each sequence's last step
  T* cn = nullptr;     // (B, H) LSTM cell state at the last step
  T* gates = nullptr;  // (T, B, GC*H) layout: post-activation gates (cell specific)
  T* cs = nullptr;     // (T, B, H) layout: LSTM cell states

  // backward inputs (any may be null: zeros)
  const T* dhs = nullptr;  // (T, B, H) layout
  const T* dhn = nullptr;  // (B, H)
  const T* dcn = nullptr;  // (B, H)
  // backward outputs
  T* dx = nullptr;   // (T, B, D) layout
  T* dwx = nullptr;  // (D, G*H)
  T* dwh = nullptr;  // (H, G*H)
  T* dbx = nullptr;  // (G*H)
  T* dbh = nullptr;  // (G*H) or null
  T* dh0 = nullptr;  // (B, H)
  T* dc0 = nullptr;  // (B, H)

  long rows() const { return (long)T_ * B; }
  long off(int t, int F) const { return batch_first ? (long)t * F : (long)t * B * F; }
  long ld(int F) const { return batch_first ? (long)T_ * F : (long)F; }
};

// What a cell step sees besides the problem: the per-call workspace.
template <typename T>
struct StepContext {
  const Problem<T>& p;
  T* scratch;       // (B, G*H) result of the step's recurrent GEMM
  const T* bsum;    // (G*H) bx + bh
  const T* zeros;   // at least (B, H) and (G*H) zeros: stands in for a missing h0, c0, b_hh, dh
  Packed<T> wrec{};   // forward: wh (H, G*H); backward: wh^T (G*H, H)
  Packed<T> wrec2{};  // forward of the reset-before GRU: W_hn (H, H)
  // backward only
  T* dG = nullptr;      // (T, B, G*H) layout: gradient of the input-side pre-activations
  T* dGh = nullptr;     // same for the hidden side when a cell distinguishes them, else == dG
  T* dh_rec = nullptr;  // (B, H) gradient reaching h_{t-1} through the recurrence
  T* dc_rec = nullptr;  // (B, H) gradient reaching c_{t-1}
  T* tmp = nullptr;     // (B, H)

  const T* hprev(int t, long& ldh) const {
    if (t > 0) {
      ldh = p.ld(p.H);
      return p.hs + p.off(t - 1, p.H);
    }
    ldh = p.H;
    return p.h0 ? p.h0 : zeros;
  }
  const T* cprev(int t, long& ldc) const {
    if (t > 0) {
      ldc = p.ld(p.H);
      return p.cs + p.off(t - 1, p.H);
    }
    ldc = p.H;
    return p.c0 ? p.c0 : zeros;
  }
};

}  // namespace rnncore
