// cells.h: the cells, each a small traits struct. Everything else is the driver (driver.h).
//
// A cell declares its sizes and its per-row elementwise math, nothing more:
//   name              the cell's name in the bindings and the Python API
//   G                 weight blocks of H: wx (D, G*H), wh (H, G*H), the biases (G*H)
//   R                 the first R blocks of wh multiply h_{t-1} (the step GEMM); blocks [R, G)
//                     (the "extra" blocks, if any) multiply another H-vector the cell computes
//                     in forward_pre and caches in gate block `extra_in` (the driver then runs
//                     a second step GEMM between forward_pre and forward_row, and in backward
//                     between backward_row and backward_post)
//   GC                cache blocks of H per (t, b) in `gates` (0: none, x @ wx lands in hs)
//   has_c             carries a cell state c (cache cs, c0/c_n, dc0/dc_n)
//   split             its hidden-side pre-activation gradient dGh differs from dG (input side)
//   direct_dh         backward_row writes a direct-path gradient into dh_prev, to which the
//                     recurrent GEMM then adds dGh @ wh^T (otherwise the GEMM writes it)
//   has_activation    runs the Rnn activation `act` (the row functions get it as ACT)
// and the row functions, over hidden units [j0, j1) of one row (a Row, below) of a step
// t < len[b]: forward_row (h_{t-1} -> h_t and the cache), backward_row (dh_t, dc_t -> dG,
// dGh, dh_prev, dc_prev), and with extra blocks forward_pre / backward_post.
//
// The driver owns the rest, the same for every cell: the hoisted input GEMM, the step GEMMs,
// barriers, the unit range of a thread, row addressing, sequence lengths (a row at
// t >= len[b] is never passed to a cell: its output, whole cache and gradients are zeroed),
// final states (h_n, c_n captured at t == len[b] - 1), dh_n/dc_n (added into dh_t/dc_t), the
// cache layout (gate stride GC*H) and the hidden-weight gradient of the extra blocks.
//
// Adding a cell: its struct here and its name in AllCells (the end of this file); the bindings'
// table, the ops and the checks of the C++ side follow from the traits. (Python: its spec
// entry and twin step functions.)
//
// Gate orders (PyTorch's): LSTM i, f, g, o; GRU r, z, n.
#pragma once

#include "isa.h"

#include "activations.h"

RNNCORE_NS_BEGIN

// One row b of step t as a cell sees it (the driver fills in what the cell declares).
template <typename T>
struct Row {
  int H;
  const T *bsum, *b_ih, *b_hh;  // (G*H) b_ih + b_hh; b_ih; b_hh or zeros
  // forward
  T* h;          // h_t (H); with GC == 0 it holds x_t @ wx on entry
  T* g;          // gate cache (GC*H); its first G blocks hold x_t @ wx on entry
  T* c;          // c_t (H), has_c
  const T* s;    // step GEMM result: gate k of unit j at s[k * sh + j]; gates [0, R) h_{t-1} @ wh,
  int sh;        // [R, G) the extra GEMM's (the driver lays them out unit block by unit block)
  const T* hp;   // h_{t-1} (H)
  const T* cp;   // c_{t-1} (H), has_c
  // backward (h, g, c, hp, cp as above, read only)
  const T* dh;   // total gradient reaching h_t: upstream + recurrent (+ dh_n)
  const T* dc;   // total gradient reaching c_t from the next step (+ dc_n), has_c
  const T* dextra;  // (H) backward_post: dG[extra blocks] @ wh[:, extra blocks]^T
  T* dg;         // (G*H) gradient of the input-side pre-activations
  T* dgh;        // (G*H) of the hidden-side ones; == dg unless split
  T* dh_prev;    // (H) direct_dh: the direct-path gradient reaching h_{t-1}
  T* dc_prev;    // (H) has_c: the gradient reaching c_{t-1}
};

struct CellDefaults {
  static constexpr bool has_c = false, split = false, direct_dh = false, has_activation = false;
  static constexpr int extra_in = -1;
};

// ---------------------------------------------------------------------------------------
// Rnn: h_t = f(x_t @ wx + h_{t-1} @ wh + b). No cache beyond hs: f' comes from h_t.
struct Rnn : CellDefaults {
  static constexpr const char* name = "rnn";
  static constexpr int G = 1, R = 1, GC = 0;
  static constexpr bool has_activation = true;

  template <int ACT, typename T>
  static void forward_row(const Row<T>& r, long j0, long j1) {
    T* h = r.h;
    const T *s = r.s, *bs = r.bsum;
#pragma omp simd
    for (long j = j0; j < j1; ++j) h[j] = activate<T>(ACT, h[j] + s[j] + bs[j]);
  }

  template <int ACT, typename T>
  static void backward_row(const Row<T>& r, long j0, long j1) {
    const T *h = r.h, *dh = r.dh;
    T* da = r.dg;
#pragma omp simd
    for (long j = j0; j < j1; ++j) da[j] = dh[j] * activate_grad<T>(ACT, h[j]);
  }
};

// ---------------------------------------------------------------------------------------
// LSTM: [i f g o] = x_t @ wx + h_{t-1} @ wh + b_ih + b_hh; i, f, o sigmoid, g tanh;
// c_t = f * c_{t-1} + i * g; h_t = o * tanh(c_t). Cache: the four gates and c_t.
struct Lstm : CellDefaults {
  static constexpr const char* name = "lstm";
  static constexpr int G = 4, R = 4, GC = 4;
  static constexpr bool has_c = true;

  template <int, typename T>
  static void forward_row(const Row<T>& r, long j0, long j1) {
    const int H = r.H;
    const int sh = r.sh;
    T *g = r.g, *h = r.h, *cc = r.c;
    const T *s = r.s, *bs = r.bsum, *cpr = r.cp;
#pragma omp simd
    for (long j = j0; j < j1; ++j) {
      T gi = vsigmoid(g[j] + s[j] + bs[j]);
      T gf = vsigmoid(g[H + j] + s[sh + j] + bs[H + j]);
      T gg = vtanh(g[2 * H + j] + s[2 * sh + j] + bs[2 * H + j]);
      T go = vsigmoid(g[3 * H + j] + s[3 * sh + j] + bs[3 * H + j]);
      T cn = gf * cpr[j] + gi * gg;
      g[j] = gi;
      g[H + j] = gf;
      g[2 * H + j] = gg;
      g[3 * H + j] = go;
      cc[j] = cn;
      h[j] = go * vtanh(cn);
    }
  }

  template <int, typename T>
  static void backward_row(const Row<T>& r, long j0, long j1) {
    const int H = r.H;
    const T *g = r.g, *cc = r.c, *cpr = r.cp, *dh = r.dh, *dcn = r.dc;
    T *dg = r.dg, *dcr = r.dc_prev;
#pragma omp simd
    for (long j = j0; j < j1; ++j) {
      T gi = g[j], gf = g[H + j], gg = g[2 * H + j], go = g[3 * H + j];
      T tc = vtanh(cc[j]);
      T dc = dcn[j] + dh[j] * go * (T(1) - tc * tc);
      dg[j] = dc * gg * gi * (T(1) - gi);
      dg[H + j] = dc * cpr[j] * gf * (T(1) - gf);
      dg[2 * H + j] = dc * gi * (T(1) - gg * gg);
      dg[3 * H + j] = dh[j] * tc * go * (T(1) - go);
      dcr[j] = dc * gf;
    }
  }
};

// ---------------------------------------------------------------------------------------
// GRU, PyTorch/cuDNN flavour (reset after the hidden matmul):
//   r = s(x W_ir + b_ir + h W_hr + b_hr), z = s(x W_iz + b_iz + h W_hz + b_hz),
//   n = tanh(x W_in + b_in + r * (h W_hn + b_hn)), h' = (1 - z) * n + z * h.
// Cache: r, z, n and hw_n = h W_hn + b_hn.
struct Gru : CellDefaults {
  static constexpr const char* name = "gru";
  static constexpr int G = 3, R = 3, GC = 4;
  static constexpr bool split = true, direct_dh = true;

  template <int, typename T>
  static void forward_row(const Row<T>& rw, long j0, long j1) {
    const int H = rw.H;
    const int sh = rw.sh;
    T *g = rw.g, *h = rw.h;
    const T *s = rw.s, *bs = rw.bsum, *b_ih = rw.b_ih, *b_hh = rw.b_hh, *hpr = rw.hp;
#pragma omp simd
    for (long j = j0; j < j1; ++j) {
      T r = vsigmoid(g[j] + s[j] + bs[j]);
      T z = vsigmoid(g[H + j] + s[sh + j] + bs[H + j]);
      T hw_n = s[2 * sh + j] + b_hh[2 * H + j];
      T n = vtanh(g[2 * H + j] + b_ih[2 * H + j] + r * hw_n);
      g[j] = r;
      g[H + j] = z;
      g[2 * H + j] = n;
      g[3 * H + j] = hw_n;
      h[j] = (T(1) - z) * n + z * hpr[j];
    }
  }

  template <int, typename T>
  static void backward_row(const Row<T>& rw, long j0, long j1) {
    const int H = rw.H;
    const T *g = rw.g, *hpr = rw.hp, *dh = rw.dh;
    T *dgx = rw.dg, *dgh = rw.dgh, *dhr = rw.dh_prev;
#pragma omp simd
    for (long j = j0; j < j1; ++j) {
      T r = g[j], z = g[H + j], n = g[2 * H + j], hw_n = g[3 * H + j];
      T dn = dh[j] * (T(1) - z) * (T(1) - n * n);
      T dr = dn * hw_n * r * (T(1) - r);
      T dz = dh[j] * (hpr[j] - n) * z * (T(1) - z);
      dgx[j] = dgh[j] = dr;
      dgx[H + j] = dgh[H + j] = dz;
      dgx[2 * H + j] = dn;
      dgh[2 * H + j] = dn * r;
      dhr[j] = dh[j] * z;  // the direct path h' = ... + z * h
    }
  }
};

// ---------------------------------------------------------------------------------------
// GRU, reset-before flavour (the textbook's; Keras reset_after=False), same r, z, n order:
//   n = tanh(x W_in + b_in + (r * h) W_hn + b_hn), everything else as Gru.
// The n block multiplies rh = r * h_{t-1} (the extra block, cached as gate block 3), so a
// step has two recurrent GEMMs. Cache: r, z, n and rh.
struct GruResetBefore : CellDefaults {
  static constexpr const char* name = "gru_reset_before";
  static constexpr int G = 3, R = 2, GC = 4, extra_in = 3;
  static constexpr bool direct_dh = true;

  template <int, typename T>
  static void forward_pre(const Row<T>& rw, long j0, long j1) {  // r, z and rh
    const int H = rw.H;
    const int sh = rw.sh;
    T* g = rw.g;
    const T *s = rw.s, *bs = rw.bsum, *hpr = rw.hp;
#pragma omp simd
    for (long j = j0; j < j1; ++j) {
      T r = vsigmoid(g[j] + s[j] + bs[j]);
      g[H + j] = vsigmoid(g[H + j] + s[sh + j] + bs[H + j]);
      g[j] = r;
      g[3 * H + j] = r * hpr[j];
    }
  }

  template <int, typename T>
  static void forward_row(const Row<T>& rw, long j0, long j1) {  // s block 2 is rh @ W_hn
    const int H = rw.H;
    const int sh = rw.sh;
    T *g = rw.g, *h = rw.h;
    const T *s = rw.s, *bs = rw.bsum, *hpr = rw.hp;
#pragma omp simd
    for (long j = j0; j < j1; ++j) {
      T z = g[H + j];
      T n = vtanh(g[2 * H + j] + s[2 * sh + j] + bs[2 * H + j]);
      g[2 * H + j] = n;
      h[j] = (T(1) - z) * n + z * hpr[j];
    }
  }

  template <int, typename T>
  static void backward_row(const Row<T>& rw, long j0, long j1) {  // dz, dn and the direct path
    const int H = rw.H;
    const T *g = rw.g, *hpr = rw.hp, *dh = rw.dh;
    T *dg = rw.dg, *dhr = rw.dh_prev;
#pragma omp simd
    for (long j = j0; j < j1; ++j) {
      T z = g[H + j], n = g[2 * H + j];
      dg[H + j] = dh[j] * (hpr[j] - n) * z * (T(1) - z);
      dg[2 * H + j] = dh[j] * (T(1) - z) * (T(1) - n * n);
      dhr[j] = dh[j] * z;
    }
  }

  template <int, typename T>
  static void backward_post(const Row<T>& rw, long j0, long j1) {  // dextra = d(r * h) = dn @ W_hn^T
    const T *g = rw.g, *hpr = rw.hp, *drh = rw.dextra;
    T *dg = rw.dg, *dhr = rw.dh_prev;
#pragma omp simd
    for (long j = j0; j < j1; ++j) {
      T r = g[j];
      dg[j] = drh[j] * hpr[j] * r * (T(1) - r);
      dhr[j] += drh[j] * r;
    }
  }
};

// The cells the bindings offer (kernels.cpp builds their table from this list).
template <typename... Cells>
struct CellList {};
using AllCells = CellList<Rnn, Lstm, Gru, GruResetBefore>;

RNNCORE_NS_END
