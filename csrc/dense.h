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

// y (N, M) = x (N, D) @ op(W) + b (M, or null).
template <typename T>
void affine_forward(const T* x, const T* W, bool wt, const T* b, long N, long D, long M, T* y) {
  const double work = (double)N * D * M;
  bulk_region(bulk_threads(work, tile_units(N, M)), [&](Claims& cl) {
    for_tiles(cl, N, M, [&](const Tile& t) {
      T* yc = y + t.r0 * M + t.c0;
      if (b) {
        for (long r = 0; r < t.n; ++r)
          for (long j = 0; j < t.m; ++j) yc[r * M + j] = b[t.c0 + j];
      }
      gemm(false, wt, (int)t.n, (int)t.m, (int)D, T(1), x + t.r0 * D, (int)D, wt ? W + t.c0 * D : W + t.c0,
           wt ? (int)D : (int)M, b ? T(1) : T(0), yc, (int)M);
    });
  }, work);
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
    if (dx) {  // columns c0.. of op(W)^T are rows c0.. of op(W)
      for_tiles(cl, N, D, [&](const Tile& t) {
        gemm(false, !wt, (int)t.n, (int)t.m, (int)M, T(1), dy + t.r0 * M, (int)M, wt ? W + t.c0 : W + t.c0 * M,
             wt ? (int)D : (int)M, T(0), dx + t.r0 * D + t.c0, (int)D);
      });
    }
  }, work);
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
