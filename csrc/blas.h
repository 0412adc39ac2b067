// blas.h: the one GEMM entry point of rnncore.
//
// Every matrix product in csrc/ goes through gemm() below: row-major, leading dimensions
// explicit, so strided views (a time step of a batch-first tensor) need no copy. The BLAS is
// the vendored scipy-openblas32 build (symbols prefixed scipy_), kept at one thread: rnncore
// parallelizes with OpenMP itself and calls the BLAS from inside its own parallel regions.
#pragma once

#include "isa.h"

#include <cblas.h>

RNNCORE_NS_BEGIN

// C *= beta for an empty product (k == 0); beta == 0 clears C whatever it held.
template <typename T>
inline void scale_rows(int m, int n, T beta, T* C, int ldc) {
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) C[(long)i * ldc + j] = beta == T(0) ? T(0) : beta * C[(long)i * ldc + j];
}

// C (m, n) = alpha * op(A) @ op(B) + beta * C, all row-major.
// op(A) is (m, k): A is (m, k) with ld lda, or (k, m) when ta. Likewise op(B) is (k, n).
inline void gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float* A, int lda,
                 const float* B, int ldb, float beta, float* C, int ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) return scale_rows(m, n, beta, C, ldc);
  scipy_cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

inline void gemm(bool ta, bool tb, int m, int n, int k, double alpha, const double* A, int lda,
                 const double* B, int ldb, double beta, double* C, int ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) return scale_rows(m, n, beta, C, ldc);
  scipy_cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}

// rnncore calls the BLAS from its own OpenMP threads, so the BLAS itself must stay serial.
inline void blas_single_thread() {
  if (scipy_openblas_get_num_threads() != 1) scipy_openblas_set_num_threads(1);
}

inline const char* blas_corename() { return scipy_openblas_get_corename(); }
inline const char* blas_config() { return scipy_openblas_get_config(); }

RNNCORE_NS_END
