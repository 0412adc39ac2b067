// small_gemm.h: the recurrent step's GEMM, C (M, N) (+)= A (M, K) @ W (K, N).
//
// OpenBLAS packs W again on every call and runs its full blocked GEMM even for one row, so
// a batch-1 step costs as much as a batch-8 one. But W (the recurrent weights) is the same at
// every step: the driver packs it once per call into panels of NB columns, K-major (each
// thread the panels of its own hidden units: driver.h), and a register-blocked kernel streams
// each panel for up to 6 rows of A at a time (12 with 32 vector registers), the rows x NB
// block of C living in registers. Written with GCC vector
// extensions, as wide as the target's registers, so it compiles for any x86-64 level (and
// elsewhere). Every output element is a sum over k in order, whatever the
// panel, chunk or row group it falls in: results do not depend on the thread count.
#pragma once

#include "isa.h"
#include "memops.h"

#include <algorithm>
#include <cstring>

RNNCORE_NS_BEGIN

// The widest vectors the target has registers for: 512-bit with AVX-512 (twice the multiply-adds
// of 256-bit vectors on Zen 5 and Sapphire Rapids), 256-bit with AVX (AVX2), else 128-bit (a
// portable x86-64 build), where wider GCC vectors would be split badly. Panels are then 32
// floats wide at most, which is why fixed chunks are multiples of 32 (parallel.h).
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
constexpr bool kWideRegs = true;  // 32 vector registers: room for 12 x 2 accumulators
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
constexpr bool kWideRegs = false;
#else
constexpr int kVecBytes = 16;
constexpr bool kWideRegs = false;
#endif

template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(kVecBytes)));
  static constexpr int L = kVecBytes / sizeof(T);  // lanes
  static constexpr int NB = 2 * L;                 // columns of a panel
};

// Panels of (K, NB) columns, K-major, zero-padded past the valid columns, one after another
// (panel p at data + p * pstride). A K-range of them is a view (k0 offset inside every panel).
template <typename T>
struct Packed {
  const T* data = nullptr;
  long pstride = 0;
  int K = 0;

  Packed rows(int k0, int k1) const {
    Packed v = *this;
    v.data = data + (long)k0 * Vec<T>::NB;
    v.K = k1 - k0;
    return v;
  }
};

// Room for `panels` panels of K rows.
template <typename T>
size_t panels_size(long panels, int K) {
  return (size_t)panels * K * Vec<T>::NB;
}

// One panel: dst (K, NB) <- the `ncols` (<= NB) columns at src, element (k, j) at
// src[k * sk + j * sn], the columns past ncols zero. A row of the panel at a time, also when the
// columns are contiguous along k (sk == 1: wh^T for the backward, PyTorch's layout forward):
// writing whole rows, reading NB columns side by side, is 1.3x (K 100) to 4x (K 1024, an LSTM
// backward's wh^T at H 256: 0.53 -> 0.14 ms) faster than a column at a time, whose every
// element lands in another cache line of the panel.
template <typename T>
void pack_panel(const T* src, long sk, long sn, int K, int ncols, T* dst) {
  constexpr int NB = Vec<T>::NB;
  if (sn == 1 && ncols == NB) {  // whole rows of NB: fixed-size copies (the compiler's vector moves)
    for (int k = 0; k < K; ++k) std::memcpy(dst + (long)k * NB, src + k * sk, NB * sizeof(T));
    return;
  }
  for (int k = 0; k < K; ++k) {
    T* d = dst + (long)k * NB;
    for (int j = 0; j < ncols; ++j) d[j] = src[k * sk + j * sn];
    for (int j = ncols; j < NB; ++j) d[j] = T(0);
  }
}

// The view of the panels of K rows at buf.
template <typename T>
Packed<T> packed_view(const T* buf, int K) {
  Packed<T> w;
  w.data = buf;
  w.pstride = (long)K * Vec<T>::NB;
  w.K = K;
  return w;
}

// How far ahead small_kernel asks for its panels' rows, from 2 rows of A on: 768 bytes (6 rows
// of a 32-float panel). A step's weights live in L2 (a thread's share of wh, up to its 2 MiB),
// and the L1 prefetcher, following 2 to 4 panel streams and as many rows of A, fetched them
// late: alone, 2-8 rows at K 256 x 512 columns took 5-20% less time with these prefetches, 8-32
// rows at K 512 x 1024 columns (past L2) 5-14% less, 12 rows at K 256 the same (the 2-core
// Xeon); in the time loops 2-7% less at B 8-64 (LSTM, 5 alternating runs, within the noise).
// Not for a single row: the batch-1 GEMV ran 3-7% slower with them in the loops (B 1, H
// 128-512). (They made it 25% faster alone only in a harness whose panels were not 64-byte
// aligned, each vector load split over two lines; on aligned panels, as the workspace gives
// them, the 1-row kernel alone reads a thread's 512 KiB at K 256 in 3.9 us, as fast as a plain
// L2 read loop of 512 KiB (3.9-4.1 us), and the prefetches change nothing at 1-3 rows.) And
// only with AVX-512: the AVX2 kernels (a panel row one cache line) gained 0-10% from 4 rows on,
// but 2 rows ran 2.4x slower with the prefetches than without (7.5 -> 18 us, the same Xeon).
constexpr int kPrefetchBytes = 768;

// C[:R, :] (+)= A[:R, :K] @ (P consecutive panels); nb valid columns in all (<= P * NB).
// R * P * 2 vector accumulators: P grows for small R to keep the FMA units busy. With 2 or 3
// rows GCC folds the weight loads into every row's multiply-add (12 loads a k instead of 4 at
// 3 rows: 2.2x slower at K 256), so those keep their weight vectors in registers. Not inlined:
// inlined into small_gemm, the 2-row kernel so held ran slower than without (13.5 against 12.3
// us at K 256 x 512 columns; 7.0 not inlined).
template <typename T, int R, int P>
__attribute__((noinline)) void small_kernel(int K, const T* A, long lda, const T* Wp, long pstride, int nb,
                                            bool overwrite, T* C, long ldc) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::L, NB = Vec<T>::NB;
  constexpr int row_bytes = NB * (int)sizeof(T), ahead = std::max(1, kPrefetchBytes / row_bytes);
  V acc[R][2 * P];
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < 2 * P; ++q) acc[r][q] = V{};
  for (int k = 0; k < K; ++k) {
    V w[2 * P];
    for (int p = 0; p < P; ++p) {
      const T* row = Wp + p * pstride + (long)k * NB;
      if constexpr (R >= 2 && kWideRegs)
        for (int b = 0; b < row_bytes; b += 64)  // past the panel's end: a prefetch never faults
          __builtin_prefetch(reinterpret_cast<const char*>(row + (long)ahead * NB) + b, 0, 3);
      std::memcpy(&w[2 * p], row, sizeof(V));
      std::memcpy(&w[2 * p + 1], row + L, sizeof(V));
#if defined(__x86_64__) || defined(__i386__)
      if constexpr (R == 2 || R == 3) __asm__("" : "+v"(w[2 * p]), "+v"(w[2 * p + 1]));
#endif
    }
    for (int r = 0; r < R; ++r) {
      const T a = A[r * lda + k];
      for (int q = 0; q < 2 * P; ++q) acc[r][q] += a * w[q];
    }
  }
  if (nb == P * NB) {  // whole panels: vector stores (a variable-length loop becomes a memmove call)
    for (int r = 0; r < R; ++r) {
      T* c = C + r * ldc;
      for (int q = 0; q < 2 * P; ++q) {
        V v = acc[r][q];
        if (!overwrite) {
          V old;
          std::memcpy(&old, c + q * L, sizeof(V));
          v += old;
        }
        std::memcpy(c + q * L, &v, sizeof(V));
      }
    }
    return;
  }
  for (int r = 0; r < R; ++r) {
    T out[P * NB];
    std::memcpy(out, &acc[r][0], sizeof(out));
    T* c = C + r * ldc;
    if (overwrite)
      for (int j = 0; j < nb; ++j) c[j] = out[j];
    else
      for (int j = 0; j < nb; ++j) c[j] += out[j];
  }
}

// Every step GEMM takes this kernel, whatever the batch. Measured on Zen 3 (AVX2) against
// OpenBLAS's sgemm for the same product: 5x faster at batch 1-2, 2x at 4-8, 1.2x at 16-64; on
// Zen 5 (AVX-512) as fast or faster up to batch 256 (LSTM B=64 H=512 forward+backward 315 ->
// 267 ms, B=256 H=128 147 -> 120 ms, 2 threads), and on Zen 4 at B=512 (LSTM H=256 f+b 559 ->
// 544 ms), since OpenBLAS repacks the weights at every step. One kernel for every batch also
// keeps each output column's sum in the same order whichever thread owns it.

// The most rows a block takes: 12 where the target has 32 vector registers (AVX-512: 24
// accumulators, each weight vector loaded serving twice the rows of a 6-row block), else 6.
constexpr int kMaxBlockRows = kWideRegs ? 12 : 6;

// Rows in the block that starts at row m of M (3 <= M). With 32 registers, the fewest blocks of
// at most 12 rows, as even as they go: a batch of 10 is one pass over the panel (not 8 rows and
// then 2 in a second pass: 1.14-1.4x faster at K 100, 1.4-1.9x at K 256, on the 2-core Xeon),
// 15 rows 8 + 7 (not 12 + 3, whose 6 accumulators wait on the multiply-adds' latency), 26 rows
// 9 + 9 + 8 (not 12 + 12 + 2): 13-15 rows went from 66-71% to 84-89% of the FMA rate at K 256,
// 25-27 rows from 78-80% to 87-90%, others within a point or two. With 16 registers, blocks of
// 6, then all that are left from 3 rows on, ending with 0, 1 or 2 rows left over (7 rows as
// 6 + 1 ran faster than as 4 + 3: the AVX2 kernels on the same Xeon).
inline int block_rows(int M, int m) {
  if constexpr (kWideRegs) {
    const int n = (M + kMaxBlockRows - 1) / kMaxBlockRows, q = M / n;
    return m < (M % n) * (q + 1) ? q + 1 : q;
  }
  return std::min(M - m, kMaxBlockRows);
}

// small_kernel with R = rows (3 <= rows <= kMaxBlockRows), one panel.
template <typename T, int R = kMaxBlockRows>
inline void block_kernel(int rows, int K, const T* A, long lda, const T* Wp, long pstride, int nb, bool overwrite,
                         T* C, long ldc) {
  if constexpr (R > 3) {
    if (rows < R) return block_kernel<T, R - 1>(rows, K, A, lda, Wp, pstride, nb, overwrite, C, ldc);
  }
  small_kernel<T, R, 1>(K, A, lda, Wp, pstride, nb, overwrite, C, ldc);
}

// The most rows in all that take both panels of a pair in one block (small_gemm): R x 4
// accumulators and 4 weight vectors in the registers (6 rows: 28 of AVX-512's 32); else none
// but the 1- and 2-row tails.
constexpr int kPairRows = kWideRegs ? 6 : 2;

// small_kernel with R = rows (3 <= rows <= kPairRows), both panels of a pair (nb columns).
template <typename T, int R = kPairRows>
inline void pair_kernel(int rows, int K, const T* A, long lda, const T* Wp, long pstride, int nb, bool overwrite,
                        T* C, long ldc) {
  if constexpr (R > 3) {
    if (rows < R) return pair_kernel<T, R - 1>(rows, K, A, lda, Wp, pstride, nb, overwrite, C, ldc);
  }
  if constexpr (R >= 3) {
    if (nb > Vec<T>::NB) small_kernel<T, R, 2>(K, A, lda, Wp, pstride, nb, overwrite, C, ldc);
    else small_kernel<T, R, 1>(K, A, lda, Wp, pstride, nb, overwrite, C, ldc);
  }
}

// C[:, n0:n1] (+)= A @ W[:, n0:n1]; n0 on a panel boundary; beta is 0 or 1. Panels go two at a
// time in the outer loop. Within a pair, the row blocks of 3 or more rows take one panel at a
// time, all blocks of the first panel and then of the second, so that a panel (K x NB: 32 KiB in
// float32 at K = 256) stays in L1 for all the row blocks of a big batch (a pair, taken a row
// block at a time, overflowed the 48 KiB L1 and came back from L2 for every block). The 1 or 2
// rows left over (all of a batch of 1 or 2) take both panels at once: 4 vector accumulators a row.
// So do 3 to kPairRows rows in all, one block, which no other block would share a panel with in
// L1 (a 4-row block of one panel, 8 accumulators, waited on the multiply-adds' latency: 68-71% of
// the FMA rate, 83-86% with both panels). Each output element is the same sum in every case.
//
// `reverse` takes the pairs of panels last to first. The time loops alternate it from step to
// step: weights that outgrow a core's L2 (a thread's 2 MiB half of an LSTM's wh at H 512) then
// meet at each step's start the panels the previous step read last, still in L2, where the
// same order every step finds each panel evicted just before it is read again. Which panel goes
// first changes no output element's sum.
template <typename T>
void small_gemm(int M, int n0, int n1, const T* A, long lda, const Packed<T>& W, T beta, T* C, long ldc,
                bool reverse = false) {
  constexpr int NB = Vec<T>::NB;
  const bool overwrite = beta == T(0);
  const long ps = W.pstride;
  int blocked = 0;  // rows [0, blocked) go in blocks of 3 or more
  while (M - blocked >= 3) blocked += block_rows(M, blocked);
  const int tail = M - blocked;
  const bool pair_rows = M >= 3 && M <= kPairRows;  // one block of both panels (above)
  const int pairs = (n1 - n0 + 2 * NB - 1) / (2 * NB);
  for (int i = 0; i < pairs; ++i) {
    const int n = n0 + (reverse ? pairs - 1 - i : i) * 2 * NB;
    const T* Wp = W.data + (long)(n / NB) * ps;
    const int nb = std::min(2 * NB, n1 - n);  // columns in this pair of panels
    if (pair_rows) {
      pair_kernel<T>(M, W.K, A, lda, Wp, ps, nb, overwrite, C + n, ldc);
      continue;
    }
    for (int q = 0; q < 2 && q * NB < nb; ++q) {
      const T* Wq = Wp + q * ps;
      const int nq = std::min(NB, nb - q * NB);  // columns in this panel
      for (int m = 0; m < blocked;) {
        const T* Am = A + m * lda;
        T* Cm = C + m * ldc + n + q * NB;
        const int rows = block_rows(M, m);
        m += rows;
        block_kernel<T>(rows, W.K, Am, lda, Wq, ps, nq, overwrite, Cm, ldc);
      }
    }
    const T* At = A + blocked * lda;
    T* Ct = C + blocked * ldc + n;
    if (tail == 1) {
      if (nb > NB) small_kernel<T, 1, 2>(W.K, At, lda, Wp, ps, nb, overwrite, Ct, ldc);
      else small_kernel<T, 1, 1>(W.K, At, lda, Wp, ps, nb, overwrite, Ct, ldc);
    } else if (tail == 2) {
      if (nb > NB) small_kernel<T, 2, 2>(W.K, At, lda, Wp, ps, nb, overwrite, Ct, ldc);
      else small_kernel<T, 2, 1>(W.K, At, lda, Wp, ps, nb, overwrite, Ct, ldc);
    }
  }
}

RNNCORE_NS_END
