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

// y (N, M) = x (N, D) @ op(W) + b (M, or null), on the recurrent steps' packed kernel
// (small_gemm.h): op(W) packed once a call into panels of its columns, each streamed from L1
// for a block of up to 12 rows of x at a time, where OpenBLAS repacked it for every chunk. The
// output layer of `rnncore train`'s model (2048 x 256 @ 256 x 96): 0.32 ms a 1024-row chunk
// alone against 0.41 for OpenBLAS's sgemm (one thread); the whole call on 2 threads 0.91-0.96x
// OpenBLAS's time, its backward (dx so, dW on OpenBLAS) 0.91-1.00x (alternating runs). Each output element is one sum over k in order, whoever computes
// it: the same bits for any thread count. Row tiles read every panel, so the caller packs them
// all first; a column tile (a wide layer, fewer rows than outputs) packs its own.
template <typename T>
void affine_forward(const T* x, const T* W, bool wt, const T* b, long N, long D, long M, T* y) {
  constexpr int NB = Vec<T>::NB;
  const double work = (double)N * D * M;
  if (!packed_k<T>(D)) {  // OpenBLAS
    bulk_region(bulk_threads(work, tile_units(N, M)), [&](Claims& cl) {
      for_tiles(cl, N, M, [&](const Tile& t) {
        T* yc = y + t.r0 * M + t.c0;
        if (b) fill_bias(t, b, y, M);
        gemm(false, wt, (int)t.n, (int)t.m, (int)D, T(1), x + t.r0 * D, (int)D, wt ? W + t.c0 * D : W + t.c0,
             wt ? (int)D : (int)M, b ? T(1) : T(0), yc, (int)M);
      });
    }, work);
    return;
  }
  const long panels = (M + NB - 1) / NB;
  T* buf = Workspace<T>::local(Workspace<T>::kPacked).get(panels_size<T>(panels, (int)D));
  const Packed<T> P = packed_view<T>(buf, (int)D);
  const bool by_rows = N >= M;  // for_tiles' choice
  if (by_rows) pack_columns(W, wt, D, M, 0, panels, buf);
  bulk_region(bulk_threads(work, tile_units(N, M)), [&](Claims& cl) {
    for_tiles(cl, N, M, [&](const Tile& t) {
      if (!by_rows) pack_columns(W, wt, D, M, t.c0 / NB, (t.c0 + t.m + NB - 1) / NB, buf);
      if (b) fill_bias(t, b, y, M);
      packed_gemm(t.n, t.c0, t.m, x + t.r0 * D, D, P, b ? T(1) : T(0), y + t.r0 * M, M);
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
  constexpr int NB = Vec<T>::NB;
  const long units = std::max(tile_units(D, M), dx ? tile_units(N, D) : 1L);
  const double work = (double)N * D * M * (dx ? 2.0 : 1.0);
  const bool packed = dx && packed_k<T>(M);
  const long panels = packed ? (D + NB - 1) / NB : 0;  // of op(W)^T (M, D), K = M
  T* buf = packed ? Workspace<T>::local(Workspace<T>::kPacked).get(panels_size<T>(panels, (int)M)) : nullptr;
  const Packed<T> P = packed_view<T>(buf, (int)M);
  const bool dx_by_rows = N >= D;  // for_tiles' choice for dx
  if (packed && dx_by_rows) pack_columns(W, !wt, M, D, 0, panels, buf);
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
    if (packed) {  // on the packed kernel, as affine_forward: op(W)^T (M, D) is W^T, or W itself when wt
      for_tiles(cl, N, D, [&](const Tile& t) {
        if (!dx_by_rows) pack_columns(W, !wt, M, D, t.c0 / NB, (t.c0 + t.m + NB - 1) / NB, buf);
        packed_gemm(t.n, t.c0, t.m, dy + t.r0 * M, M, P, T(0), dx + t.r0 * D, D);
      });
    } else if (dx) {  // columns c0.. of op(W)^T are rows c0.. of op(W)
      for_tiles(cl, N, D, [&](const Tile& t) {
        gemm(false, !wt, (int)t.n, (int)t.m, (int)M, T(1), dy + t.r0 * M, (int)M, wt ? W + t.c0 : W + t.c0 * M,
             wt ? (int)D : (int)M, T(0), dx + t.r0 * D + t.c0, (int)D);
      });
    }
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
