// dense.h: the non-recurrent work of a training step, on rnncore's team and BLAS, so that a
// step through rnncore's layers wakes no other thread pool: the affine (output) layer, the
// embedding's gradient, Adam's update and the squared norm that gradient clipping needs.
//
// Every split is a function of the shapes alone (fixed chunks, parallel.h), never of the thread
// count, and each output element is computed by one chunk: results are the same bits for any
// thread count. The NumPy twins are in rnncore.reference, the Python entry rnncore.dense.
#pragma once

#include "isa.h"

#include <cmath>
#include <cstdint>

#include "blas.h"
#include "parallel.h"
#include "small_gemm.h"

RNNCORE_NS_BEGIN

// op(W) is W (D, M) row-major, or, when wt, the transpose of a row-major (M, D) matrix (a
// tied weight passed as a transposed view needs no copy).

// A chunk of an (R, C) output: rows [r0, r0 + n), columns [c0, c0 + m).
struct Tile {
  long r0, n, c0, m;
};

// f(tile) for each chunk of an (R, C) output this thread claims: the output cut in fixed chunks
// of its longer axis (rows on a tie; a small batch before a wide layer, 50 rows of 418 outputs,
// is cut by columns), a function of the shape alone; tile_units of them.
template <typename F>
inline void for_tiles(Claims& cl, long R, long C, F&& f) {
  const bool rows = R >= C;
  cl.for_chunks(rows ? R : C, [&](long lo, long hi) {
    f(rows ? Tile{lo, hi - lo, 0, C} : Tile{0, R, lo, hi - lo});
  });
}

inline long tile_units(long R, long C) { return num_chunks(std::max(R, C)); }

// Panels [p0, p1) of op(W) (K, M) for small_gemm: op(W) is W (K, M) row-major, or, when wt,
// the transpose of a row-major (M, K) matrix.
template <typename T>
void pack_columns(const T* W, bool wt, long K, long M, long p0, long p1, T* buf) {
  constexpr int NB = Vec<T>::NB;
  for (long q = p0; q < p1; ++q) {
    const long c = q * NB;
    pack_panel(wt ? W + c * K : W + c, wt ? 1 : M, wt ? K : 1, (int)K, (int)std::min<long>(NB, M - c),
               buf + q * K * NB);
  }
}

// Rows of A a small_gemm call takes: 64 KiB of them (at least one 12-row block), which then stay
// in L2 for every panel; one call over a whole 1024-row tile read its 1 MiB of rows from L3
// again for each panel (rnncore train's output layer, 2048 x 256 @ 256 x 96, took 0.91x the
// time a call in row groups, 8 alternating runs on the 2-core Xeon).
template <typename T>
long gemm_rows(long K) {
  return std::max(12L, 65536 / std::max(1L, (long)(K * sizeof(T))) / 12 * 12);  // K 0: a layer of no inputs
}

// Whether a product over K goes to the packed kernel: panels of at most 32 KiB (K 256 in
// float32 with AVX-512), which stay in L1 for a block of rows. Longer ones go to OpenBLAS,
// whose K blocking the packed kernel lacks: the textbook Rnnlm's dx (K 10000) took 1.37x
// OpenBLAS's time packed, the SimpleRnnlm's (K 418) 1.24x.
template <typename T>
bool packed_k(long K) {
  return K * Vec<T>::NB * (long)sizeof(T) <= 32768;
}

// C (n, c0:c0+m) (+)= A (n, K) @ the packed panels P (columns c0.. on a panel boundary), in row
// groups (gemm_rows); beta 0 or 1.
template <typename T>
void packed_gemm(long n, long c0, long m, const T* A, long lda, const Packed<T>& P, T beta, T* C, long ldc) {
  const long rows = gemm_rows<T>(P.K);
  for (long r = 0; r < n; r += rows)
    small_gemm((int)std::min(rows, n - r), (int)c0, (int)(c0 + m), A + r * lda, lda, P, beta, C + r * ldc, ldc);
}

// The tile t of y (row stride M) set to the bias b.
template <typename T>
void fill_bias(const Tile& t, const T* b, T* y, long M) {
  for (long r = t.r0; r < t.r0 + t.n; ++r)
    for (long j = t.c0; j < t.c0 + t.m; ++j) y[r * M + j] = b[j];
}

// The right operand B (K, Nc) of a bulk region's tiled product, op(W) as pack_columns reads it,
// on the recurrent steps' packed kernel (small_gemm.h) when its panels fit (packed_k): packed
// once a call, where OpenBLAS repacked it for every chunk, and each panel streamed from L1 for
// a block of up to 12 rows at a time. Row tiles (for_tiles: no fewer rows than columns) read
// every panel, so the caller packs them all here; a column tile packs its own (product). Else
// OpenBLAS. Each output element is one sum over k in order whoever computes it: the same bits
// for any thread count. `rnncore train`'s output layer (2048 x 256 @ 256 x 96): 0.32 ms a
// 1024-row chunk alone against 0.41 for OpenBLAS's sgemm (one thread); the whole forward on 2
// threads 0.91-0.96x OpenBLAS's time, the backward (dx so, dW on OpenBLAS) 0.91-1.00x
// (alternating runs on the 2-core Xeon).
template <typename T>
struct ColumnOperand {
  static constexpr int NB = Vec<T>::NB;
  const T* W;
  bool wt;
  long K, Nc;
  bool packed, per_tile;
  T* buf = nullptr;
  Packed<T> P{};

  // rows: the output's; used: false when the region will not take the product (nothing packed)
  ColumnOperand(const T* W_, bool wt_, long K_, long Nc_, long rows, bool used = true)
      : W(W_), wt(wt_), K(K_), Nc(Nc_), packed(used && packed_k<T>(K_)), per_tile(rows < Nc_) {
    if (!packed) return;
    const long panels = (Nc + NB - 1) / NB;
    buf = Workspace<T>::local(Workspace<T>::kPacked).get(panels_size<T>(panels, (int)K));
    P = packed_view<T>(buf, (int)K);
    if (!per_tile) pack_columns(W, wt, K, Nc, 0, panels, buf);
  }

  // C[:, c0:c0+m] (+)= A @ B[:, c0:c0+m] over the tile's rows, A and C at its first row; beta 0 or 1.
  void product(const Tile& t, const T* A, long lda, T beta, T* C, long ldc) const {
    if (!packed) {
      gemm(false, wt, (int)t.n, (int)t.m, (int)K, T(1), A, (int)lda, wt ? W + t.c0 * K : W + t.c0,
           wt ? (int)K : (int)Nc, beta, C + t.c0, (int)ldc);
      return;
    }
    if (per_tile) pack_columns(W, wt, K, Nc, t.c0 / NB, (t.c0 + t.m + NB - 1) / NB, buf);
    packed_gemm(t.n, t.c0, t.m, A, lda, P, beta, C, ldc);
  }
};

// y (N, M) = x (N, D) @ op(W) + b (M, or null).
template <typename T>
void affine_forward(const T* x, const T* W, bool wt, const T* b, long N, long D, long M, T* y) {
  const double work = (double)N * D * M;
  const ColumnOperand<T> B(W, wt, D, M, N);
  bulk_region(bulk_threads(work, tile_units(N, M)), [&](Claims& cl) {
    for_tiles(cl, N, M, [&](const Tile& t) {
      if (b) fill_bias(t, b, y, M);
      B.product(t, x + t.r0 * D, D, b ? T(1) : T(0), y + t.r0 * M, M);
    });
  }, work);
  Workspace<T>::release_all_large();
}

// C (P, Q) = A^T B for A (N, P), B (N, Q).
template <typename T>
void gram_chunks(const T* A, long P, const T* B, long Q, long N, T* C, Claims& cl) {
  for_tiles(cl, P, Q, [&](const Tile& t) {
    gemm(true, false, (int)t.n, (int)t.m, (int)N, T(1), A + t.r0, (int)P, B + t.c0, (int)Q, T(0),
         C + t.r0 * Q + t.c0, (int)Q);
  });
}

// dW = x^T dy (D, M), or its transpose (M, D) = dy^T x when dwt; db (M) = column sums of dy
// (if db); dx (N, D) = dy op(W)^T (if dx).
template <typename T>
void affine_backward(const T* dy, const T* x, const T* W, bool wt, long N, long D, long M, T* dW, bool dwt, T* db,
                     T* dx) {
  const long units = std::max(tile_units(D, M), dx ? tile_units(N, D) : 1L);
  const double work = (double)N * D * M * (dx ? 2.0 : 1.0);
  const ColumnOperand<T> Wt(W, !wt, M, D, N, dx != nullptr);  // op(W)^T (M, D): W^T, or W itself when wt
  bulk_region(bulk_threads(work, units), [&](Claims& cl) {
    if (dwt)
      gram_chunks(dy, M, x, D, N, dW, cl);
    else
      gram_chunks(x, D, dy, M, N, dW, cl);
    if (db) {
      cl.for_chunks(M, [&](long lo, long hi) {
        for (long j = lo; j < hi; ++j) db[j] = T(0);
        for (long r = 0; r < N; ++r) {
          const T* d = dy + r * M;
#pragma omp simd
          for (long j = lo; j < hi; ++j) db[j] += d[j];
        }
      });
    }
    if (dx) for_tiles(cl, N, D, [&](const Tile& t) { Wt.product(t, dy + t.r0 * M, M, T(0), dx + t.r0 * D, D); });
  }, work);
  Workspace<T>::release_all_large();
}

// dW (V, D) = sum over n of onehot(ids[n]) dout[n]: rows added in the order of n, the columns
// split in fixed chunks (so duplicate ids accumulate in the same order for any thread count).
template <typename T>
void embedding_backward(const int64_t* ids, const T* dout, long N, long V, long D, T* dW) {
  bulk_region(bulk_threads((double)N * D * 4.0 + (double)V * D, num_chunks(D)), [&](Claims& cl) {
    cl.for_chunks(D, [&](long lo, long hi) {
      for (long v = 0; v < V; ++v)
        for (long j = lo; j < hi; ++j) dW[v * D + j] = T(0);
      for (long n = 0; n < N; ++n) {
        T* w = dW + ids[n] * D;
        const T* d = dout + n * D;
#pragma omp simd
        for (long j = lo; j < hi; ++j) w[j] += d[j];
      }
    });
  });
}

// Adam, in place and in the order of the NumPy twin's expressions, with no fused multiply-add,
// so both backends give the same bits:
//   m = b1 m + a1 g;  v = b2 v + a2 g g;  p -= lr_c1 m / (sqrt(v / c2) + eps)
// a1 = 1 - b1 and a2 = 1 - b2 come rounded from double, as NumPy rounds them.
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
template <typename T>
void adam_range(T* p, const T* g, T* m, T* v, long lo, long hi, T lr_c1, T b1, T a1, T b2, T a2, T eps, T c2) {
#pragma omp simd
  for (long i = lo; i < hi; ++i) {
    const T mi = m[i] * b1 + a1 * g[i];
    const T vi = v[i] * b2 + (a2 * g[i]) * g[i];
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] - (lr_c1 * mi) / (std::sqrt(vi / c2) + eps);
  }
}
#pragma GCC pop_options

template <typename T>
void adam_update(T* p, const T* g, T* m, T* v, long n, T lr_c1, T b1, T a1, T b2, T a2, T eps, T c2) {
  bulk_region(bulk_threads((double)n * 16.0, num_chunks(n)), [&](Claims& cl) {
    cl.for_chunks(n, [&](long lo, long hi) { adam_range(p, g, m, v, lo, hi, lr_c1, b1, a1, b2, a2, eps, c2); });
  });
}

// sum of a[i]^2 in double: fixed chunks, each summed in 8 lanes (element i of a chunk into lane
// i % 8, in order: 8 independent additions, where one running sum waits 4 cycles an element,
// 0.5 ms for the 360 K gradients of rnncore train's model), the lanes in a fixed tree, then the
// chunks in order. The lanes are explicit, so every ISA variant adds the same way.
template <typename T>
double sum_squares(const T* a, long n, double* partial) {
  const long nc = num_chunks(n), w = chunk_width(n);
  bulk_region(bulk_threads((double)n * 4.0, nc), [&](Claims& cl) {
    cl.for_chunks(n, [&](long lo, long hi) {
      constexpr int L = 8;
      double s[L] = {};
      long i = lo;
      for (; i + L <= hi; i += L)
#pragma omp simd
        for (int j = 0; j < L; ++j) s[j] += (double)a[i + j] * (double)a[i + j];
      for (int j = 0; i < hi; ++i, ++j) s[j] += (double)a[i] * (double)a[i];
      partial[lo / w] = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    });
  });
  double s = 0;
  for (long c = 0; c < nc; ++c) s += partial[c];
  return s;
}

RNNCORE_NS_END
