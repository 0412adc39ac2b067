// cells.h: the fused per-step kernels of each cell. Everything else is the shared driver.
//
// A cell supplies: G (weight blocks), GC (cache blocks of H per (t, b)), HAS_C (carries a
// cell state), SPLIT (its hidden-side pre-activation gradient differs from the input-side
// one), where its hoisted input projection x @ wx is written (preact), and two steps:
//   forward_step(ctx, t, tid, nt):  h_{t-1} -> h_t, caching what backward needs;
//   backward_step(ctx, t, tid, nt): dh_t -> dG_t and dh_{t-1} (into ctx.dh_rec).
// A step runs on all nt threads of the driver's region: recurrent GEMMs are split over
// output columns, elementwise passes over hidden units; `barrier()` (team.h) separates the
// phases. Past a sequence's length (t >= len[b]) a row's output and every block of its cache
// (gates, cs) are 0, its gradient is 0, and its final state was captured at t == len[b] - 1.
//
// Gate orders (PyTorch's): LSTM i, f, g, o; GRU r, z, n.
// The step GEMM's recurrent weights: ctx.wrec is wh (forward) or wh^T (backward), packed for
// small batches (small_gemm.h), plain for the BLAS.
#pragma once

#include "isa.h"

#include "activations.h"
#include "blas.h"
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

// This thread's hidden units [j0, j1).
inline void unit_range(int H, int tid, int nt, long& j0, long& j1) { split_range(H, nt, tid, 8, j0, j1); }

// Units [j0, j1) of each row given, and of the `blocks` blocks of H of a gate row, set to zero:
// a padded step (t >= len[b]) writes its whole cache, so that both backends' caches hold the
// same numbers there and either backward can read the other's (no uninitialised memory).
template <typename T, typename... R>
inline void zero_units(long j0, long j1, T* row, R*... rows) {
  for (long j = j0; j < j1; ++j) row[j] = T(0);
  if constexpr (sizeof...(rows) > 0) zero_units(j0, j1, rows...);
}

template <typename T>
inline void zero_blocks(T* g, int blocks, int H, long j0, long j1) {
  for (int k = 0; k < blocks; ++k) zero_units(j0, j1, g + (long)k * H);
}

// dh_t of row b: upstream gradient + recurrent gradient (+ dh_n at the sequence's last step).
template <typename T>
inline void gather_dh(const StepContext<T>& c, int t, int b, long j0, long j1, T* dh) {
  const Problem<T>& p = c.p;
  const T* up = p.dhs ? p.dhs + p.off(t, p.H) + b * p.ld(p.H) : c.zeros;
  const T* last = (p.dhn && t == p.len[b] - 1) ? p.dhn + (long)b * p.H : c.zeros;
  const T* rec = c.dh_rec + (long)b * p.H;
#pragma omp simd
  for (long j = j0; j < j1; ++j) dh[j] = rec[j] + up[j] + last[j];
}

struct CellBase {
  static constexpr bool RESET_BEFORE = false;  // true: the forward step needs W_hn apart (ctx.wrec2)
};

// Gated cells keep 4 blocks of H per (t, b) in `gates`; x @ wx lands in the first G of them
// and is overwritten by the post-activation gates step by step.
struct GatesCache : CellBase {
  template <typename T>
  static T* preact(const Problem<T>& p, int& F) {
    F = 4 * p.H;
    return p.gates;
  }
};

// ---------------------------------------------------------------------------------------
// Elman: h_t = f(x_t @ wx + h_{t-1} @ wh + b). No cache beyond hs: f' comes from h_t.
struct ElmanCell : CellBase {
  static constexpr int G = 1, GC = 0;
  static constexpr bool HAS_C = false, SPLIT = false;

  template <typename T>
  static T* preact(const Problem<T>& p, int& F) {
    F = p.H;
    return p.hs;  // x @ wx is written into hs and overwritten by h step by step
  }

  template <typename T, int ACT>
  static void forward_rows(const StepContext<T>& c, int t, long j0, long j1) {
    const Problem<T>& p = c.p;
    const int H = p.H;
    for (int b = 0; b < p.B; ++b) {
      T* h = p.hs + p.off(t, H) + b * p.ld(H);  // holds x_t @ wx on entry
      if (t >= p.len[b]) {
        for (long j = j0; j < j1; ++j) h[j] = T(0);
        continue;
      }
      const T* s = c.scratch + (long)b * H;
#pragma omp simd
      for (long j = j0; j < j1; ++j) h[j] = activate<T>(ACT, h[j] + s[j] + c.bsum[j]);
      if (t == p.len[b] - 1)
        for (long j = j0; j < j1; ++j) p.hn[(long)b * H + j] = h[j];
    }
  }

  template <typename T>
  static void forward_step(const StepContext<T>& c, int t, int tid, int nt) {
    const Problem<T>& p = c.p;
    long ldh;
    const T* hp = c.hprev(t, ldh);
    step_gemm(tid, nt, p.B, p.H, hp, ldh, c.wrec, T(0), c.scratch, p.H);
    barrier();
    long j0, j1;
    unit_range(p.H, tid, nt, j0, j1);
    switch (p.act) {
      case kTanh: forward_rows<T, kTanh>(c, t, j0, j1); break;
      case kRelu: forward_rows<T, kRelu>(c, t, j0, j1); break;
      default: forward_rows<T, kSigmoid>(c, t, j0, j1); break;
    }
  }

  template <typename T, int ACT>
  static void backward_rows(const StepContext<T>& c, int t, long j0, long j1) {
    const Problem<T>& p = c.p;
    const int H = p.H;
    for (int b = 0; b < p.B; ++b) {
      T* da = c.dG + p.off(t, H) + b * p.ld(H);
      if (t >= p.len[b]) {
        for (long j = j0; j < j1; ++j) da[j] = T(0);
        continue;
      }
      const T* h = p.hs + p.off(t, H) + b * p.ld(H);
      gather_dh(c, t, b, j0, j1, da);
#pragma omp simd
      for (long j = j0; j < j1; ++j) da[j] *= activate_grad<T>(ACT, h[j]);
    }
  }

  template <typename T>
  static void backward_step(const StepContext<T>& c, int t, int tid, int nt) {
    const Problem<T>& p = c.p;
    long j0, j1;
    unit_range(p.H, tid, nt, j0, j1);
    switch (p.act) {
      case kTanh: backward_rows<T, kTanh>(c, t, j0, j1); break;
      case kRelu: backward_rows<T, kRelu>(c, t, j0, j1); break;
      default: backward_rows<T, kSigmoid>(c, t, j0, j1); break;
    }
    barrier();
    step_gemm(tid, nt, p.B, p.H, c.dG + p.off(t, p.H), p.ld(p.H), c.wrec, T(0), c.dh_rec, p.H);
  }
};

// ---------------------------------------------------------------------------------------
// LSTM: [i f g o] = x_t @ wx + h_{t-1} @ wh + b_ih + b_hh; i, f, o sigmoid, g tanh;
// c_t = f * c_{t-1} + i * g; h_t = o * tanh(c_t). Cache: the four gates and c_t.
struct LSTMCell : GatesCache {
  static constexpr int G = 4, GC = 4;
  static constexpr bool HAS_C = true, SPLIT = false;

  template <typename T>
  static void forward_step(const StepContext<T>& c, int t, int tid, int nt) {
    const Problem<T>& p = c.p;
    const int H = p.H;
    long ldh, ldc;
    const T* hp = c.hprev(t, ldh);
    const T* cp = c.cprev(t, ldc);
    step_gemm(tid, nt, p.B, 4 * H, hp, ldh, c.wrec, T(0), c.scratch, 4 * H);
    barrier();
    long j0, j1;
    unit_range(H, tid, nt, j0, j1);
    const T* bs = c.bsum;
    for (int b = 0; b < p.B; ++b) {
      T* h = p.hs + p.off(t, H) + b * p.ld(H);
      T* g = p.gates + p.off(t, 4 * H) + b * p.ld(4 * H);  // holds x_t @ wx on entry
      T* cc = p.cs + p.off(t, H) + b * p.ld(H);
      if (t >= p.len[b]) {  // past the length the whole cache is zero, as in the twin
        zero_units(j0, j1, h, cc);
        zero_blocks(g, 4, H, j0, j1);
        continue;
      }
      const T* s = c.scratch + (long)b * 4 * H;
      const T* cpr = cp + b * ldc;
#pragma omp simd
      for (long j = j0; j < j1; ++j) {
        T gi = vsigmoid(g[j] + s[j] + bs[j]);
        T gf = vsigmoid(g[H + j] + s[H + j] + bs[H + j]);
        T gg = vtanh(g[2 * H + j] + s[2 * H + j] + bs[2 * H + j]);
        T go = vsigmoid(g[3 * H + j] + s[3 * H + j] + bs[3 * H + j]);
        T cn = gf * cpr[j] + gi * gg;
        g[j] = gi;
        g[H + j] = gf;
        g[2 * H + j] = gg;
        g[3 * H + j] = go;
        cc[j] = cn;
        h[j] = go * vtanh(cn);
      }
      if (t == p.len[b] - 1)
        for (long j = j0; j < j1; ++j) {
          p.hn[(long)b * H + j] = h[j];
          p.cn[(long)b * H + j] = cc[j];
        }
    }
  }

  template <typename T>
  static void backward_step(const StepContext<T>& c, int t, int tid, int nt) {
    const Problem<T>& p = c.p;
    const int H = p.H;
    long ldc;
    const T* cp = c.cprev(t, ldc);
    long j0, j1;
    unit_range(H, tid, nt, j0, j1);
    for (int b = 0; b < p.B; ++b) {
      T* dg = c.dG + p.off(t, 4 * H) + b * p.ld(4 * H);
      T* dcr = c.dc_rec + (long)b * H;
      if (t >= p.len[b]) {
        for (long j = j0; j < j1; ++j) dg[j] = dg[H + j] = dg[2 * H + j] = dg[3 * H + j] = dcr[j] = T(0);
        continue;
      }
      const T* g = p.gates + p.off(t, 4 * H) + b * p.ld(4 * H);
      const T* cc = p.cs + p.off(t, H) + b * p.ld(H);
      const T* cpr = cp + b * ldc;
      const T* dcl = (p.dcn && t == p.len[b] - 1) ? p.dcn + (long)b * H : c.zeros;
      T* dh = c.tmp + (long)b * H;
      gather_dh(c, t, b, j0, j1, dh);
#pragma omp simd
      for (long j = j0; j < j1; ++j) {
        T gi = g[j], gf = g[H + j], gg = g[2 * H + j], go = g[3 * H + j];
        T tc = vtanh(cc[j]);
        T dc = dcr[j] + dcl[j] + dh[j] * go * (T(1) - tc * tc);
        dg[j] = dc * gg * gi * (T(1) - gi);
        dg[H + j] = dc * cpr[j] * gf * (T(1) - gf);
        dg[2 * H + j] = dc * gi * (T(1) - gg * gg);
        dg[3 * H + j] = dh[j] * tc * go * (T(1) - go);
        dcr[j] = dc * gf;
      }
    }
    barrier();
    step_gemm(tid, nt, p.B, H, c.dG + p.off(t, 4 * H), p.ld(4 * H), c.wrec, T(0), c.dh_rec, H);
  }
};

// ---------------------------------------------------------------------------------------
// GRU, PyTorch/cuDNN flavour (reset after the hidden matmul):
//   r = s(x W_ir + b_ir + h W_hr + b_hr), z = s(x W_iz + b_iz + h W_hz + b_hz),
//   n = tanh(x W_in + b_in + r * (h W_hn + b_hn)), h' = (1 - z) * n + z * h.
// Cache: r, z, n and hn = h W_hn + b_hn.
struct GRUCell : GatesCache {
  static constexpr int G = 3, GC = 4;
  static constexpr bool HAS_C = false, SPLIT = true;

  template <typename T>
  static void forward_step(const StepContext<T>& c, int t, int tid, int nt) {
    const Problem<T>& p = c.p;
    const int H = p.H;
    long ldh;
    const T* hp = c.hprev(t, ldh);
    step_gemm(tid, nt, p.B, 3 * H, hp, ldh, c.wrec, T(0), c.scratch, 3 * H);
    barrier();
    long j0, j1;
    unit_range(H, tid, nt, j0, j1);
    const T* bs = c.bsum;
    const T* bx = p.bx;
    const T* bh = p.bh ? p.bh : c.zeros;
    for (int b = 0; b < p.B; ++b) {
      T* h = p.hs + p.off(t, H) + b * p.ld(H);
      T* g = p.gates + p.off(t, 4 * H) + b * p.ld(4 * H);
      if (t >= p.len[b]) {  // past the length the whole cache is zero, as in the twin
        zero_units(j0, j1, h);
        zero_blocks(g, 4, H, j0, j1);
        continue;
      }
      const T* s = c.scratch + (long)b * 3 * H;
      const T* hpr = hp + b * ldh;
#pragma omp simd
      for (long j = j0; j < j1; ++j) {
        T r = vsigmoid(g[j] + s[j] + bs[j]);
        T z = vsigmoid(g[H + j] + s[H + j] + bs[H + j]);
        T hn = s[2 * H + j] + bh[2 * H + j];
        T n = vtanh(g[2 * H + j] + bx[2 * H + j] + r * hn);
        g[j] = r;
        g[H + j] = z;
        g[2 * H + j] = n;
        g[3 * H + j] = hn;
        h[j] = (T(1) - z) * n + z * hpr[j];
      }
      if (t == p.len[b] - 1)
        for (long j = j0; j < j1; ++j) p.hn[(long)b * H + j] = h[j];
    }
  }

  template <typename T>
  static void backward_step(const StepContext<T>& c, int t, int tid, int nt) {
    const Problem<T>& p = c.p;
    const int H = p.H;
    long ldh;
    const T* hp = c.hprev(t, ldh);
    long j0, j1;
    unit_range(H, tid, nt, j0, j1);
    for (int b = 0; b < p.B; ++b) {
      T* dgx = c.dG + p.off(t, 3 * H) + b * p.ld(3 * H);
      T* dgh = c.dGh + p.off(t, 3 * H) + b * p.ld(3 * H);
      T* dhr = c.dh_rec + (long)b * H;
      if (t >= p.len[b]) {
        for (long j = j0; j < j1; ++j)
          dgx[j] = dgx[H + j] = dgx[2 * H + j] = dgh[j] = dgh[H + j] = dgh[2 * H + j] = dhr[j] = T(0);
        continue;
      }
      const T* g = p.gates + p.off(t, 4 * H) + b * p.ld(4 * H);
      const T* hpr = hp + b * ldh;
      T* dh = c.tmp + (long)b * H;
      gather_dh(c, t, b, j0, j1, dh);
#pragma omp simd
      for (long j = j0; j < j1; ++j) {
        T r = g[j], z = g[H + j], n = g[2 * H + j], hn = g[3 * H + j];
        T dn = dh[j] * (T(1) - z) * (T(1) - n * n);
        T dr = dn * hn * r * (T(1) - r);
        T dz = dh[j] * (hpr[j] - n) * z * (T(1) - z);
        dgx[j] = dgh[j] = dr;
        dgx[H + j] = dgh[H + j] = dz;
        dgx[2 * H + j] = dn;
        dgh[2 * H + j] = dn * r;
        dhr[j] = dh[j] * z;  // the direct path h' = ... + z * h
      }
    }
    barrier();
    step_gemm(tid, nt, p.B, H, c.dGh + p.off(t, 3 * H), p.ld(3 * H), c.wrec, T(1), c.dh_rec, H);
  }
};

// ---------------------------------------------------------------------------------------
// GRU, reset-before flavour (the textbook's; Keras reset_after=False), same r, z, n order:
//   n = tanh(x W_in + b_in + (r * h) W_hn + b_hn), everything else as GRUCell.
// Two recurrent GEMMs a step (the second needs r). Cache: r, z, n and rh = r * h_{t-1}.
struct GRUResetBeforeCell : GatesCache {
  static constexpr int G = 3, GC = 4;
  static constexpr bool HAS_C = false, SPLIT = false;
  static constexpr bool RESET_BEFORE = true;

  template <typename T>
  static void forward_step(const StepContext<T>& c, int t, int tid, int nt) {
    const Problem<T>& p = c.p;
    const int H = p.H;
    long ldh;
    const T* hp = c.hprev(t, ldh);
    step_gemm(tid, nt, p.B, 2 * H, hp, ldh, c.wrec, T(0), c.scratch, 3 * H);
    barrier();
    long j0, j1;
    unit_range(H, tid, nt, j0, j1);
    const T* bs = c.bsum;
    for (int b = 0; b < p.B; ++b) {
      T* g = p.gates + p.off(t, 4 * H) + b * p.ld(4 * H);
      const T* s = c.scratch + (long)b * 3 * H;
      const T* hpr = hp + b * ldh;
#pragma omp simd
      for (long j = j0; j < j1; ++j) {
        T r = vsigmoid(g[j] + s[j] + bs[j]);
        g[H + j] = vsigmoid(g[H + j] + s[H + j] + bs[H + j]);
        g[j] = r;
        g[3 * H + j] = r * hpr[j];
      }
    }
    barrier();
    step_gemm(tid, nt, p.B, H, p.gates + p.off(t, 4 * H) + 3 * H, p.ld(4 * H), c.wrec2, T(0), c.scratch + 2 * H,
              3 * H);
              barrier();
    for (int b = 0; b < p.B; ++b) {
      T* h = p.hs + p.off(t, H) + b * p.ld(H);
      T* g = p.gates + p.off(t, 4 * H) + b * p.ld(4 * H);
      if (t >= p.len[b]) {  // past the length the whole cache is zero (r, z and rh too), as in the twin
        zero_units(j0, j1, h);
        zero_blocks(g, 4, H, j0, j1);
        continue;
      }
      const T* s = c.scratch + (long)b * 3 * H;
      const T* hpr = hp + b * ldh;
#pragma omp simd
      for (long j = j0; j < j1; ++j) {
        T z = g[H + j];
        T n = vtanh(g[2 * H + j] + s[2 * H + j] + bs[2 * H + j]);
        g[2 * H + j] = n;
        h[j] = (T(1) - z) * n + z * hpr[j];
      }
      if (t == p.len[b] - 1)
        for (long j = j0; j < j1; ++j) p.hn[(long)b * H + j] = h[j];
    }
  }

  template <typename T>
  static void backward_step(const StepContext<T>& c, int t, int tid, int nt) {
    const Problem<T>& p = c.p;
    const int H = p.H;
    long ldh;
    const T* hp = c.hprev(t, ldh);
    long j0, j1;
    unit_range(H, tid, nt, j0, j1);
    for (int b = 0; b < p.B; ++b) {
      T* dg = c.dG + p.off(t, 3 * H) + b * p.ld(3 * H);
      T* dhr = c.dh_rec + (long)b * H;
      if (t >= p.len[b]) {
        for (long j = j0; j < j1; ++j) dg[j] = dg[H + j] = dg[2 * H + j] = dhr[j] = T(0);
        continue;
      }
      const T* g = p.gates + p.off(t, 4 * H) + b * p.ld(4 * H);
      const T* hpr = hp + b * ldh;
      T* dh = c.tmp + (long)b * H;
      gather_dh(c, t, b, j0, j1, dh);
#pragma omp simd
      for (long j = j0; j < j1; ++j) {
        T z = g[H + j], n = g[2 * H + j];
        dg[H + j] = dh[j] * (hpr[j] - n) * z * (T(1) - z);
        dg[2 * H + j] = dh[j] * (T(1) - z) * (T(1) - n * n);
        dhr[j] = dh[j] * z;
      }
    }
    barrier();
    // d(r * h) = dn @ W_hn^T, into tmp (dh is no longer needed)
    step_gemm(tid, nt, p.B, H, c.dG + p.off(t, 3 * H) + 2 * H, p.ld(3 * H), c.wrec.rows(2 * H, 3 * H), T(0),
              c.tmp, H);
              barrier();
    for (int b = 0; b < p.B; ++b) {
      T* dg = c.dG + p.off(t, 3 * H) + b * p.ld(3 * H);
      if (t >= p.len[b]) continue;
      const T* g = p.gates + p.off(t, 4 * H) + b * p.ld(4 * H);
      const T* hpr = hp + b * ldh;
      const T* drh = c.tmp + (long)b * H;
      T* dhr = c.dh_rec + (long)b * H;
#pragma omp simd
      for (long j = j0; j < j1; ++j) {
        T r = g[j];
        dg[j] = drh[j] * hpr[j] * r * (T(1) - r);
        dhr[j] += drh[j] * r;
      }
    }
    barrier();
    step_gemm(tid, nt, p.B, H, c.dG + p.off(t, 3 * H), p.ld(3 * H), c.wrec.rows(0, 2 * H), T(1), c.dh_rec, H);
  }
};

RNNCORE_NS_END
