// small_gemm.h: C (M, N) = A (M, K) @ W (K, N) (+ beta * C) for the few-row products of a
// recurrent step at small batch.
//
// OpenBLAS runs its full packing GEMM even for one row, which makes a batch-1 step as slow
// as a batch-8 one. Here W streams through once, four rows at a time, into a panel of C that
// stays in L1. Every output element sums over k in the same order whatever panel or chunk it
// is in, so results do not depend on how the columns are split between threads.
#pragma once

#include <algorithm>

namespace rnncore {

template <typename T>
struct SmallGemm {
  static constexpr int P = 1024 / sizeof(T);  // columns of a C panel (1 KiB a row)

  static void run(int M, int N, int K, const T* A, long lda, const T* W, long ldw, T beta, T* C, long ldc) {
    for (int n0 = 0; n0 < N; n0 += P) {
      const int np = std::min(P, N - n0);
      if (beta != T(0) && beta != T(1))
        for (int r = 0; r < M; ++r)
          for (int j = 0; j < np; ++j) C[r * ldc + n0 + j] *= beta;
      // W streams through row by row (contiguous runs of np), four rows at a time, each W
      // vector feeding every row of the M x np panel of C, which stays in L1.
      switch (M) {
        case 1: panel<1>(np, K, A, lda, W + n0, ldw, beta == T(0), C + n0, ldc); break;
        case 2: panel<2>(np, K, A, lda, W + n0, ldw, beta == T(0), C + n0, ldc); break;
        case 3: panel<3>(np, K, A, lda, W + n0, ldw, beta == T(0), C + n0, ldc); break;
        case 4: panel<4>(np, K, A, lda, W + n0, ldw, beta == T(0), C + n0, ldc); break;
        default:
          for (int r = 0; r < M; r += 4) {
            const int rows = std::min(4, M - r);
            const T* Ar = A + r * lda;
            T* Cr = C + r * ldc + n0;
            if (rows == 4) panel<4>(np, K, Ar, lda, W + n0, ldw, beta == T(0), Cr, ldc);
            else if (rows == 3) panel<3>(np, K, Ar, lda, W + n0, ldw, beta == T(0), Cr, ldc);
            else if (rows == 2) panel<2>(np, K, Ar, lda, W + n0, ldw, beta == T(0), Cr, ldc);
            else panel<1>(np, K, Ar, lda, W + n0, ldw, beta == T(0), Cr, ldc);
          }
      }
    }
  }

  // C[:R, :np] (+)= A[:R, :K] @ W[:K, :np]; `overwrite` ignores what C held (beta == 0).
  template <int R>
  static void panel(int np, int K, const T* A, long lda, const T* W, long ldw, bool overwrite, T* C, long ldc) {
    int k = 0;
    if (overwrite) {  // the first row of W initializes C: no separate clearing pass
      T a[R];
      for (int r = 0; r < R; ++r) a[r] = A[r * lda];
#pragma omp simd
      for (int j = 0; j < np; ++j) {
        const T v0 = W[j];
        for (int r = 0; r < R; ++r) C[r * ldc + j] = a[r] * v0;
      }
      k = 1;
    }
    for (; k + 4 <= K; k += 4) {
      const T* w0 = W + (long)k * ldw;
      const T* w1 = w0 + ldw;
      const T* w2 = w1 + ldw;
      const T* w3 = w2 + ldw;
      T a[R][4];
      for (int r = 0; r < R; ++r)
        for (int i = 0; i < 4; ++i) a[r][i] = A[r * lda + k + i];
#pragma omp simd
      for (int j = 0; j < np; ++j) {
        const T v0 = w0[j], v1 = w1[j], v2 = w2[j], v3 = w3[j];
        for (int r = 0; r < R; ++r) {
          T* c = C + r * ldc;
          c[j] = c[j] + a[r][0] * v0 + a[r][1] * v1 + a[r][2] * v2 + a[r][3] * v3;
        }
      }
    }
    for (; k < K; ++k) {
      const T* w0 = W + (long)k * ldw;
      T a[R];
      for (int r = 0; r < R; ++r) a[r] = A[r * lda + k];
#pragma omp simd
      for (int j = 0; j < np; ++j) {
        const T v0 = w0[j];
        for (int r = 0; r < R; ++r) {
          T* c = C + r * ldc;
          c[j] = c[j] + a[r] * v0;
        }
      }
    }
  }
};

// Where SmallGemm beats the BLAS (measured on Zen 3, AVX2): one or two rows always, up to
// four for panels up to 512 columns. Depends on the shape only, never on the thread count.
inline bool use_small_gemm(int M, int N) { return M <= 2 || (M <= 4 && N <= 512); }

template <typename T>
inline void small_gemm(int M, int N, int K, const T* A, long lda, const T* W, long ldw, T beta, T* C, long ldc) {
  SmallGemm<T>::run(M, N, K, A, lda, W, ldw, beta, C, ldc);
}

}  // namespace rnncore
