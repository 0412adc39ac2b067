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

// Which axis of an (R, C) output a GEMM's chunks cut: rows, unless its columns make more
// chunks (a small batch before a wide layer: 50 rows of 418 outputs). A function of the shape.
inline bool chunk_rows(long R, long C) { return num_chunks(R) >= num_chunks(C); }

// y (N, M) = x (N, D) @ op(W) + b (M, or null), in fixed chunks of rows or columns.
template <typename T>
void affine_forward(const T* x, const T* W, bool wt, const T* b, long N, long D, long M, T* y) {
  const bool rows = chunk_rows(N, M);
  bulk_region(bulk_threads((double)N * D * M, rows ? num_chunks(N) : num_chunks(M)), [&](Claims& cl) {
    cl.for_chunks(rows ? N : M, [&](long lo, long hi) {
      const long r0 = rows ? lo : 0, n = rows ? hi - lo : N;  // the chunk: rows [r0, r0 + n) ...
      const long c0 = rows ? 0 : lo, m = rows ? M : hi - lo;  // ... of columns [c0, c0 + m)
      T* yc = y + r0 * M + c0;
      if (b) {
        for (long r = 0; r < n; ++r)
          for (long j = 0; j < m; ++j) yc[r * M + j] = b[c0 + j];
      }
      gemm(false, wt, (int)n, (int)m, (int)D, T(1), x + r0 * D, (int)D, wt ? W + c0 * D : W + c0,
           wt ? (int)D : (int)M, b ? T(1) : T(0), yc, (int)M);
    });
  });
}

// C (P, Q) = A^T B for A (N, P), B (N, Q), in fixed chunks of C's longer axis.
template <typename T>
void gram_chunks(const T* A, long P, const T* B, long Q, long N, T* C, Claims& cl) {
  if (P >= Q) {
    cl.for_chunks(P, [&](long lo, long hi) {
      gemm(true, false, (int)(hi - lo), (int)Q, (int)N, T(1), A + lo, (int)P, B, (int)Q, T(0), C + lo * Q, (int)Q);
    });
  } else {
    cl.for_chunks(Q, [&](long lo, long hi) {
      gemm(true, false, (int)P, (int)(hi - lo), (int)N, T(1), A, (int)P, B + lo, (int)Q, T(0), C + lo, (int)Q);
    });
  }
}

// dW = x^T dy (D, M), or its transpose (M, D) = dy^T x when dwt; db (M) = column sums of dy
// (if db); dx (N, D) = dy op(W)^T (if dx), in fixed chunks of its rows or columns.
template <typename T>
void affine_backward(const T* dy, const T* x, const T* W, bool wt, long N, long D, long M, T* dW, bool dwt, T* db,
                     T* dx) {
  const bool rows = chunk_rows(N, D);
  const long units = std::max(num_chunks(std::max(D, M)), dx ? (rows ? num_chunks(N) : num_chunks(D)) : 1L);
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
    if (dx) {
      cl.for_chunks(rows ? N : D, [&](long lo, long hi) {
        // rows [r0, r0 + n) of dx, columns [c0, c0 + m): columns c0.. of op(W)^T are rows c0.. of op(W)
        const long r0 = rows ? lo : 0, n = rows ? hi - lo : N;
        const long c0 = rows ? 0 : lo, m = rows ? D : hi - lo;
        gemm(false, !wt, (int)n, (int)m, (int)M, T(1), dy + r0 * M, (int)M, wt ? W + c0 : W + c0 * M,
             wt ? (int)D : (int)M, T(0), dx + r0 * D + c0, (int)D);
      });
    }
  });
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
