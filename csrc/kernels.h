// kernels.h: the interface between the bindings (compiled for any x86-64) and the compute
// kernels (kernels.cpp, compiled once per instruction set: isa.h).
//
// Each variant fills one KernelTable of plain function pointers; dispatch.cpp picks the table
// for the CPU (or RNNCORE_ISA) and bindings.cpp calls only through it. Nothing here is inline
// code: the types are plain data, so every translation unit may include this header whatever
// its compiler flags.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

namespace rnncore {

// One recurrent call, its tensors and their layout: the fields of problem.h's Problem, which
// adds the layout helpers on the kernel side. See problem.h for what each pointer holds.
template <typename T>
struct RecurrentArgs {
  int T_ = 0, B = 0, D = 0, H = 0;
  bool batch_first = false;
  bool wt = false;  // weights as PyTorch keeps them: wx (G*H, D), wh (G*H, H), and dwx, dwh so too
  int act = 0;
  const T *x = nullptr, *wx = nullptr, *wh = nullptr, *b_ih = nullptr, *b_hh = nullptr, *h0 = nullptr,
          *c0 = nullptr;
  const int* len = nullptr;
  T *hs = nullptr, *h_n = nullptr, *c_n = nullptr, *gates = nullptr, *cs = nullptr;
  bool no_cache = false;  // forward for inference: gates and cs null, no cache kept (driver.h)
  const T *dhs = nullptr, *dhn = nullptr, *dcn = nullptr;
  T *dx = nullptr, *dwx = nullptr, *dwh = nullptr, *db_ih = nullptr, *db_hh = nullptr, *dh0 = nullptr,
    *dc0 = nullptr;
};

// The ops of one dtype. Each sets its own floating-point mode (denormals flushed) and runs on
// rnncore's thread team; the caller has released the GIL.
template <typename T>
struct Ops {
  void (*softmax_xent_forward)(const T* x, const int64_t* t, long N, long V, int64_t ignore, T* probs,
                               double* row_loss);
  void (*softmax_xent_backward)(const T* probs, const int64_t* t, long N, long V, int64_t ignore, T scale,
                                T* dx);
  void (*affine_forward)(const T* x, const T* W, bool wt, const T* b, long N, long D, long M, T* y);
  void (*affine_backward)(const T* dy, const T* x, const T* W, bool wt, long N, long D, long M, T* dW, bool dwt,
                          T* db, T* dx);
  void (*embedding_backward)(const int64_t* ids, const T* dout, long N, long V, long D, T* dW);
  void (*adam_update)(T* p, const T* g, T* m, T* v, long n, T lr_c1, T b1, T a1, T b2, T a2, T eps, T c2);
  double (*sum_squares)(const T* a, long n);
  bool (*all_finite)(const T* a, long n);
};

// One cell's forward and backward over all steps (driver.h), for dtype T.
template <typename T>
struct CellOps {
  void (*forward)(const RecurrentArgs<T>&);
  void (*backward)(const RecurrentArgs<T>&);
};

// One cell as the bindings see it, derived from its traits (cells.h): the same description in
// every variant, the ops those of the variant.
struct CellKernels {
  const char* name;  // "rnn", "lstm", "gru", "gru_reset_before"
  int G;             // weight blocks of H: wx (D, G*H), wh (H, G*H), biases (G*H)
  int GC;            // cache blocks of H per (t, b) in `gates` (0: no gates cache)
  bool has_c;        // carries a cell state: c0, c_n, cs, dc_n, dc0
  bool has_activation;  // takes the Rnn activation
  CellOps<float> f32;
  CellOps<double> f64;
};

struct KernelTable {
  const char* isa;           // "avx512", "avx2" or "generic"
  const char* flags;         // the compiler's ISA flags for this variant
  int vec_bytes;             // vector width of the step GEMM (small_gemm.h)
  int unit_block_f32;        // hidden units a thread's block holds in the time loop (driver.h), float
  int unit_block_f64;        // ... and double
  const char* step_kernel;   // the step GEMM's register blocking
  Ops<float> f32;
  Ops<double> f64;
  const CellKernels* cells;  // the cells (kernels.cpp's list), num_cells of them
  int num_cells;
};

// The variants (kernels.cpp), one per namespace.
namespace avx512 { const KernelTable& kernel_table(); }
namespace avx2 { const KernelTable& kernel_table(); }
namespace generic { const KernelTable& kernel_table(); }

// dispatch.cpp. The table in use: chosen at the first call from the CPU, or from RNNCORE_ISA
// (avx512, avx2, generic; "auto" or unset: the best the CPU supports); throws
// std::runtime_error naming RNNCORE_ISA when it asks for an unknown or unsupported variant.
const KernelTable& kernels();
// Switch to a variant ("auto": the best the CPU supports; "": back to the default, RNNCORE_ISA
// or the best, decided at the next call); std::invalid_argument when this CPU cannot run it or
// the name is unknown.
void set_isa(const std::string& name);
// The variants this CPU (and its operating system) can run, best first; always ends "generic".
std::vector<std::string> supported_isas();
// What the CPU reports, for kernel_info: name -> present.
std::vector<std::pair<std::string, bool>> cpu_features();

// The cap on the threads of the calling OS thread's native calls (0: none), one per thread
// for all variants (defined in dispatch.cpp; parallel.h reads it).
int& local_thread_cap();
// How the time loops split their work among their threads (driver.h): 0 (default) by rows when
// the recurrent weights fit a core's cache, else by hidden units; 1 always by units; 2 by rows
// from 2 rows on (tests). One setting for all variants (dispatch.cpp).
int& step_split_mode();
// Whether the time loops move work between their threads as their speeds differ (driver.h): a
// unit split its unit blocks (Balance), a row split its rows (RowSteal). 0 (default) yes, 1
// never, 2 (tests) at every chance: another unit split at every interval, all rows in one group
// that the other threads take rows from. One setting for all variants (dispatch.cpp).
int& step_balance_mode();
// Rows a row split's threads have taken from each other since load (driver.h: RowSteal), for
// tests and benchmarks. One counter for all variants (dispatch.cpp).
std::atomic<long>& row_moves();
// The L2 cache of a core in bytes (sysconf; 1 MiB where the system does not say).
long l2_cache_bytes();

}  // namespace rnncore
