// kernels.cpp: one instruction-set variant of rnncore's compute kernels and its KernelTable.
//
// Compiled three times (CMakeLists.txt), each with its own ISA flags and RNNCORE_ISA_NS:
//   avx512   -march=x86-64-v4 (AVX-512 F/BW/DQ/VL/CD + AVX2, FMA, BMI2, F16C)
//   avx2     -march=x86-64-v3 (AVX2, FMA, BMI1/2, F16C, LZCNT, MOVBE)
//   generic  the compiler's baseline x86-64 (SSE2)
// Everything below and in the headers it includes lives in rnncore::RNNCORE_ISA_NS (isa.h).
// dispatch.cpp chooses one table at run time; the wrappers here convert the bindings' plain
// arguments and set the floating-point mode, nothing more.
#include "isa.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "driver.h"
#include "dense.h"
#include "kernels.h"
#include "softmax.h"

#define RNNCORE_STR2(x) #x
#define RNNCORE_STR(x) RNNCORE_STR2(x)

RNNCORE_NS_BEGIN

namespace {

template <typename T, typename Cell>
void forward_entry(const RecurrentArgs<T>& a) {
  Problem<T> p(a);
  forward<T, Cell>(p);
}

template <typename T, typename Cell>
void backward_entry(const RecurrentArgs<T>& a) {
  Problem<T> p(a);
  backward<T, Cell>(p);
}

// A cell's entry in the table, from its traits alone (cells.h).
template <typename Cell>
constexpr CellKernels cell_kernels() {
  return CellKernels{Cell::name,
                     Cell::G,
                     Cell::GC,
                     Cell::has_c,
                     Cell::has_activation,
                     {&forward_entry<float, Cell>, &backward_entry<float, Cell>},
                     {&forward_entry<double, Cell>, &backward_entry<double, Cell>}};
}

template <typename List>
struct CellTable;

template <typename... Cells>
struct CellTable<CellList<Cells...>> {
  static constexpr CellKernels cells[] = {cell_kernels<Cells>()...};
  static constexpr int size = sizeof...(Cells);
};

using Cells = CellTable<AllCells>;

template <typename T>
void xent_forward_entry(const T* x, const int64_t* t, long N, long V, int64_t ignore, T* probs, double* loss) {
  DenormalGuard guard;
  softmax_xent_forward(x, t, N, V, ignore, probs, loss);
}

template <typename T>
void xent_backward_entry(const T* probs, const int64_t* t, long N, long V, int64_t ignore, T scale, T* dx) {
  DenormalGuard guard;
  softmax_xent_backward(probs, t, N, V, ignore, scale, dx);
}

template <typename T>
void affine_forward_entry(const T* x, const T* W, bool wt, const T* b, long N, long D, long M, T* y) {
  blas_single_thread();
  DenormalGuard guard;
  affine_forward(x, W, wt, b, N, D, M, y);
}

template <typename T>
void affine_backward_entry(const T* dy, const T* x, const T* W, bool wt, long N, long D, long M, T* dW, bool dwt,
                           T* db, T* dx) {
  blas_single_thread();
  DenormalGuard guard;
  affine_backward(dy, x, W, wt, N, D, M, dW, dwt, db, dx);
}

template <typename T>
void embedding_backward_entry(const int64_t* ids, const T* dout, long N, long V, long D, T* dW) {
  DenormalGuard guard;
  embedding_backward(ids, dout, N, V, D, dW);
}

template <typename T>
void adam_entry(T* p, const T* g, T* m, T* v, long n, T lr_c1, T b1, T a1, T b2, T a2, T eps, T c2) {
  DenormalGuard guard;
  adam_update(p, g, m, v, n, lr_c1, b1, a1, b2, a2, eps, c2);
}

template <typename T>
double sum_squares_entry(const T* a, long n) {
  if (n <= 0) return 0.0;
  double partial[kMaxChunks];  // num_chunks(n) <= max_chunks() <= kMaxChunks
  return sum_squares(a, n, partial);
}

// Whether d[lo, hi) holds no NaN or infinity: the largest magnitude's bit pattern below the
// infinity's (an unsigned max over the sign-cleared bits vectorizes as one instruction a vector;
// std::isfinite's compares did not, a third of the speed).
template <typename T>
bool finite_range(const T* d, long lo, long hi) {
  using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  constexpr U kMagnitude = ~U(0) >> 1;
  constexpr U kInf = sizeof(T) == 4 ? U(0x7f800000u) : U(0x7ff0000000000000ull);
  U top = 0;
#pragma omp simd reduction(max : top)
  for (long i = lo; i < hi; ++i) {
    U bits;
    std::memcpy(&bits, d + i, sizeof bits);
    bits &= kMagnitude;
    top = bits > top ? bits : top;
  }
  return top < kInf;
}

template <typename T>
bool all_finite_entry(const T* d, long n) {
  // From 128K elements on the threads share the scan: the weights checked before a forward have
  // been evicted by the call before (a forward's packed copies fill L2), and a core alone reads
  // them back from L3 at a fraction of what two do (an LSTM's wx and wh at H 256: 2 MiB).
  constexpr double kPerThread = 1 << 17;
  if (n < 2 * kPerThread) return finite_range(d, 0, n);  // one thread: no region to set up
  int bad = 0;  // written by the threads that find one (any nonzero store suffices)
  bulk_region(threads_for((double)n, num_chunks(n), kPerThread), [&](Claims& cl) {
    cl.for_chunks(n, [&](long lo, long hi) {
      if (!finite_range(d, lo, hi)) __atomic_store_n(&bad, 1, __ATOMIC_RELAXED);
    });
  });
  return !__atomic_load_n(&bad, __ATOMIC_RELAXED);
}

template <typename T>
constexpr Ops<T> ops() {
  return Ops<T>{&xent_forward_entry<T>,       &xent_backward_entry<T>, &affine_forward_entry<T>,
                &affine_backward_entry<T>,    &embedding_backward_entry<T>, &adam_entry<T>,
                &sum_squares_entry<T>,        &all_finite_entry<T>};
}

}  // namespace

const KernelTable& kernel_table() {
  static const KernelTable table{
      RNNCORE_STR(RNNCORE_ISA_NS),
      RNNCORE_ISA_FLAGS,
      kVecBytes,
      kUnitBlock<float>,
      kUnitBlock<double>,
      kWideRegs ? "packed register-blocked GEMM, up to 12 rows x 2 vectors a block (32 vector registers)"
                : "packed register-blocked GEMM, up to 6 rows x 2 vectors a block (16 vector registers)",
      ops<float>(),
      ops<double>(),
      Cells::cells,
      Cells::size};
  return table;
}

RNNCORE_NS_END
