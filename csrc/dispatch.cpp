// dispatch.cpp: which variant of the kernels (kernels.cpp, isa.h) runs on this CPU.
//
// Compiled for baseline x86-64 like bindings.cpp. The first call of kernels() picks the table:
// RNNCORE_ISA (avx512, avx2, generic, or auto / unset) if set, else the best variant this CPU
// runs. A variant runs when the CPU has every instruction set its flags allow (GCC's
// __builtin_cpu_supports("x86-64-v4") / ("x86-64-v3"), the levels of -march=x86-64-v4/v3) AND
// the operating system saves the registers it uses (XCR0: the YMM state for avx2, also the
// opmask and ZMM states for avx512; libgcc checks them too, this checks them again itself).
// set_isa() switches later (rnncore.set_isa, the tests); a call already running keeps its table.
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include <unistd.h>

#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define RNNCORE_X86 1
#endif

namespace rnncore {

int& local_thread_cap() {
  thread_local int cap = 0;
  return cap;
}

int& step_split_mode() {
  static int mode = 0;
  return mode;
}

int& step_balance_mode() {
  static int mode = 0;
  return mode;
}

std::atomic<long>& row_moves() {
  static std::atomic<long> n{0};
  return n;
}

long l2_cache_bytes() {
  static const long bytes = [] {
    long n = -1;
#ifdef _SC_LEVEL2_CACHE_SIZE
    n = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    return n > 0 ? n : 1L << 20;
  }();
  return bytes;
}

namespace {

#ifdef RNNCORE_X86
// XCR0, the register states the OS saves on a context switch (0 without OSXSAVE).
uint64_t os_saved_states() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_OSXSAVE)) return 0;
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return ((uint64_t)hi << 32) | lo;
}
constexpr uint64_t kYmmState = 0x6;    // SSE and AVX (upper YMM) state
constexpr uint64_t kZmmState = 0xe0;   // opmask, ZMM0-15 upper halves, ZMM16-31
#endif

bool cpu_runs_avx512() {
#ifdef RNNCORE_X86
  __builtin_cpu_init();
  const uint64_t x = os_saved_states();
  return __builtin_cpu_supports("x86-64-v4") && (x & (kYmmState | kZmmState)) == (kYmmState | kZmmState);
#else
  return false;
#endif
}

bool cpu_runs_avx2() {
#ifdef RNNCORE_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("x86-64-v3") && (os_saved_states() & kYmmState) == kYmmState;
#else
  return false;
#endif
}

const KernelTable* table_of(const std::string& name) {
  if (name == "avx512") return &avx512::kernel_table();
  if (name == "avx2") return &avx2::kernel_table();
  if (name == "generic") return &generic::kernel_table();
  return nullptr;
}

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

// The table for `name` ("auto": the best supported), or an error message in `err`.
const KernelTable* resolve(const std::string& name, const char* source, std::string& err) {
  const std::vector<std::string> ok = supported_isas();
  if (name.empty() || name == "auto") return table_of(ok.front());
  const KernelTable* t = table_of(name);
  if (!t) {
    err = std::string(source) + "='" + name + "' is not a kernel variant: use avx512, avx2, generic or auto";
  } else {
    bool runs = false;
    for (const auto& s : ok) runs |= s == name;
    if (!runs) err = std::string(source) + "='" + name + "': this CPU cannot run the " + name + " kernels";
    else return t;
  }
  err += " (this CPU runs: " + joined(ok) + ")";
  return nullptr;
}

std::atomic<const KernelTable*> current{nullptr};

}  // namespace

// RNNCORE_TEST_HIDE_ISA=avx512[,avx2]: for tests only, treat the CPU as lacking those variants
// (so an AVX-512 machine can check what an AVX2-only one does). Read once, at the first call.
bool hidden_for_tests(const char* isa) {
  const char* h = std::getenv("RNNCORE_TEST_HIDE_ISA");
  if (!h) return false;
  const std::string list = std::string(",") + h + ",";
  return list.find(std::string(",") + isa + ",") != std::string::npos;
}

std::vector<std::string> supported_isas() {
  static const std::vector<std::string> isas = [] {
    std::vector<std::string> v;
    if (cpu_runs_avx512() && !hidden_for_tests("avx512")) v.push_back("avx512");
    if (cpu_runs_avx2() && !hidden_for_tests("avx2")) v.push_back("avx2");
    v.push_back("generic");
    return v;
  }();
  return isas;
}

std::vector<std::pair<std::string, bool>> cpu_features() {
  std::vector<std::pair<std::string, bool>> f;
#ifdef RNNCORE_X86
  __builtin_cpu_init();
  const uint64_t x = os_saved_states();
  f.emplace_back("avx2", __builtin_cpu_supports("avx2"));
  f.emplace_back("fma", __builtin_cpu_supports("fma"));
  f.emplace_back("bmi2", __builtin_cpu_supports("bmi2"));
  f.emplace_back("avx512f", __builtin_cpu_supports("avx512f"));
  f.emplace_back("avx512bw", __builtin_cpu_supports("avx512bw"));
  f.emplace_back("avx512dq", __builtin_cpu_supports("avx512dq"));
  f.emplace_back("avx512vl", __builtin_cpu_supports("avx512vl"));
  f.emplace_back("x86-64-v3", __builtin_cpu_supports("x86-64-v3"));
  f.emplace_back("x86-64-v4", __builtin_cpu_supports("x86-64-v4"));
  f.emplace_back("os_saves_ymm", (x & kYmmState) == kYmmState);
  f.emplace_back("os_saves_zmm", (x & kZmmState) == kZmmState);
#endif
  return f;
}

const KernelTable& kernels() {
  const KernelTable* t = current.load(std::memory_order_acquire);
  if (t) return *t;
  const char* env = std::getenv("RNNCORE_ISA");
  std::string err;
  t = resolve(env ? env : "", "RNNCORE_ISA", err);
  if (!t) throw std::runtime_error(err);
  const KernelTable* expected = nullptr;  // a concurrent first call or set_isa may have won
  if (!current.compare_exchange_strong(expected, t, std::memory_order_acq_rel)) return *expected;
  return *t;
}

void set_isa(const std::string& name) {
  if (name.empty()) {  // back to the default: RNNCORE_ISA or the CPU's best, at the next call
    current.store(nullptr, std::memory_order_release);
    return;
  }
  std::string err;
  const KernelTable* t = resolve(name, "isa", err);
  if (!t) throw std::invalid_argument(err);
  current.store(t, std::memory_order_release);
}

}  // namespace rnncore
