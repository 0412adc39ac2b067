// softmax.h: fused softmax + cross-entropy over the rows of a (N, V) logit matrix.
//
// The output layer of a language model spends its time here: NumPy makes five passes over
// N x V (max, subtract, exp, sum, divide) and more for the loss and the gradient. Forward is one
// pass to find the row max and one to write exp and sum it (then a scaling pass); backward is
// one pass. Rows are independent and never split, so the results do not depend on threads.
#pragma once

#include "isa.h"

#include <cmath>
#include <cstdint>

#include "activations.h"
#include "parallel.h"

RNNCORE_NS_BEGIN

// probs (N, V) = softmax(x) by rows; row_loss[n] = -log probs[n, t[n]] (0 where t[n] == ignore).
template <typename T>
void softmax_xent_forward(const T* x, const int64_t* t, long N, long V, int64_t ignore, T* probs,
                          double* row_loss) {
  bulk_region(threads_for((double)N * V, num_chunks(N), 1 << 16), [&](Claims& cl) {
    cl.for_chunks(N, [&](long lo, long hi) {
      for (long n = lo; n < hi; ++n) {
        const T* xr = x + n * V;
        T* pr = probs + n * V;
        T m = xr[0];
#pragma omp simd reduction(max : m)
        for (long v = 0; v < V; ++v) m = xr[v] > m ? xr[v] : m;
        T s = 0;
#pragma omp simd reduction(+ : s)
        for (long v = 0; v < V; ++v) {
          pr[v] = vexp(xr[v] - m);
          s += pr[v];
        }
        const T inv = T(1) / s;
#pragma omp simd
        for (long v = 0; v < V; ++v) pr[v] *= inv;
        row_loss[n] = t[n] == ignore ? 0.0 : -((double)(xr[t[n]] - m) - std::log((double)s));
      }
    });
  });
}

// dx (N, V) = scale * (probs - onehot(t)), zero rows where t[n] == ignore. dx may be probs.
template <typename T>
void softmax_xent_backward(const T* probs, const int64_t* t, long N, long V, int64_t ignore, T scale, T* dx) {
  bulk_region(threads_for((double)N * V, num_chunks(N), 1 << 16), [&](Claims& cl) {
    cl.for_chunks(N, [&](long lo, long hi) {
      for (long n = lo; n < hi; ++n) {
        const T* pr = probs + n * V;
        T* dr = dx + n * V;
        if (t[n] == ignore) {
          for (long v = 0; v < V; ++v) dr[v] = T(0);
          continue;
        }
#pragma omp simd
        for (long v = 0; v < V; ++v) dr[v] = pr[v] * scale;
        dr[t[n]] -= scale;
      }
    });
  });
}

RNNCORE_NS_END
