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

RNNCORE_NS_BEGIN

// The fields are kernels.h's RecurrentArgs (what the bindings fill in):
//   x (T, B, D) or (B, T, D); wx (D, G*H); wh (H, G*H) (wt: PyTorch's wx (G*H, D), wh (G*H, H), and
//   dwx, dwh in that layout too); b_ih (G*H) input-side bias; b_hh (G*H) or
//   null, hidden-side bias; h0, c0 (B, H) or null (zeros); len (B), 1 <= len[b] <= T, never
//   null inside a driver; act the Rnn activation (activations.h).
//   Forward outputs, and the cache the backward reads: hs (T, B, H) layout, zero past a
//   sequence's length; h_n, c_n (B, H) the states at each sequence's last step; gates (T, B, GC*H)
//   layout, the cell's cache blocks (cells.h); cs (T, B, H) layout, the cell states (has_c).
//   no_cache (inference): gates and cs null; the driver keeps them in rings of its workspace.
//   Backward inputs (any may be null: zeros): dhs (T, B, H) layout, dhn, dcn (B, H).
//   Backward outputs: dx (T, B, D) layout, dwx, dwh, db_ih, db_hh (or null), dh0, dc0.
template <typename T>
struct Problem : RecurrentArgs<T> {
  explicit Problem(const RecurrentArgs<T>& a) : RecurrentArgs<T>(a) {}

  long rows() const { return (long)this->T_ * this->B; }
  long off(int t, int F) const { return this->batch_first ? (long)t * F : (long)t * this->B * F; }
  long ld(int F) const { return this->batch_first ? (long)this->T_ * F : (long)F; }
};

RNNCORE_NS_END
