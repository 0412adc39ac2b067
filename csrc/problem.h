// problem.h: one recurrent call, its tensors and their layout.
//
// Sizes: T steps, B sequences, D input features, H hidden units; a cell has G weight blocks
// (wx (D, G*H), wh (H, G*H)) and keeps GC blocks of H per (t, b) in its `gates` cache.
// Every per-(t, b) tensor with F features (x, hs, gates, dG, dx) lives in the caller's
// layout: time-major (T, B, F) or batch-first (B, T, F). Either way it is a (T*B, F) matrix
// in memory order, and step t is a (B, F) block at off(t, F) with row stride ld(F): that is
// what lets the GEMMs read batch-first input without copying it.
#pragma once

#include "isa.h"

#include "kernels.h"
#include "small_gemm.h"

RNNCORE_NS_BEGIN

// The fields are kernels.h's RecurrentArgs (what the bindings fill in):
//   x (T, B, D) or (B, T, D); wx (D, G*H); wh (H, G*H); bx (G*H) input-side bias; bh (G*H) or
//   null, hidden-side bias; h0, c0 (B, H) or null (zeros); len (B), 1 <= len[b] <= T, never
//   null inside a driver; act the Elman activation (activations.h).
//   Forward outputs, and the cache the backward reads: hs (T, B, H) layout, zero past a
//   sequence's length; hn, cn (B, H) the states at each sequence's last step; gates (T, B, GC*H)
//   layout, the post-activation gates (cell specific); cs (T, B, H) layout, LSTM cell states.
//   Backward inputs (any may be null: zeros): dhs (T, B, H) layout, dhn, dcn (B, H).
//   Backward outputs: dx (T, B, D) layout, dwx, dwh, dbx, dbh (or null), dh0, dc0.
template <typename T>
struct Problem : RecurrentArgs<T> {
  explicit Problem(const RecurrentArgs<T>& a) : RecurrentArgs<T>(a) {}

  long rows() const { return (long)this->T_ * this->B; }
  long off(int t, int F) const { return this->batch_first ? (long)t * F : (long)t * this->B * F; }
  long ld(int F) const { return this->batch_first ? (long)this->T_ * F : (long)F; }
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

RNNCORE_NS_END
