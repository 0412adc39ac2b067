// team.cpp: rnncore's thread team (see team.h). Built as the shared library librnncore_threads,
// so that threadpoolctl can find it by name and call rnncore_{get,set}_num_threads.
#include "team.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/resource.h>
#include <dirent.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <sched.h>

#include <cstdio>
#include <string>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void cpu_relax() { _mm_pause(); }
#else
static inline void cpu_relax() {}
#endif

namespace {

using Clock = std::chrono::steady_clock;
thread_local int tl_region_nt = 0;  // > 0 while this thread runs a team region
constexpr int kMaxThreads = 256;

// Spin until pred() holds or budget_us microseconds have passed; true when pred() holds. When
// pred() did not hold at once and `began` is given, *began is when the wait began (now_ns's clock).
template <typename P>
bool spin_until(P&& pred, int budget_us, long long* began = nullptr) {
  if (pred()) return true;
  const auto start = Clock::now();
  if (began) *began = std::chrono::duration_cast<std::chrono::nanoseconds>(start.time_since_epoch()).count();
  if (budget_us <= 0) return false;
  const auto deadline = start + std::chrono::microseconds(budget_us);
  for (;;) {
    for (int i = 0; i < 32; ++i) {
      if (pred()) return true;
      cpu_relax();
    }
    if (Clock::now() >= deadline) return pred();
  }
}

// One worker's mailbox: the doorbell and the generation of the region last posted to it.
struct alignas(64) Slot {
  std::atomic<unsigned> seq{0};  // bumped once per region posted to this worker
  std::atomic<unsigned> gen{0};  // that region's generation (Team::join), stored before the bump
  std::atomic<int> sleeping{0};
  std::atomic<int> woken{0};  // notified while asleep, not yet back in `awake` (runnable meanwhile)
  std::atomic<long long> posted_ns{0};  // when the region was posted (to see how late the worker started)
  std::atomic<long long> rung_ns{0};    // when its doorbell (seq) was rung
  std::atomic<int> tid{0};              // the worker's kernel thread id (its /proc/self/task entry)
};

// The CPU time that other processes spent on this process's CPUs over about the last tenth of a
// second, in cores: their busy time in /proc/stat minus this process's own CPU time, from
// samples kept at least kEvery apart while the team runs (each a read of /proc/stat, 6-9 us
// here and more on a machine of many CPUs, taken by whichever region comes: at 25 ms apart it
// costs a region loop a few hundredths of a percent). A process busy all along shows 0.6-1
// core; the visitors of an idle VM (the kernel's and the sandbox's threads, which on the 2-core
// AMD VM here held a core for 0.3-10 ms some 3-4 times a second) some hundredths. /proc/stat
// counts in ticks (10 ms), so the estimate is good to a tenth of a core or two over the window.
struct LoadMeter {
  static constexpr int kSamples = 16;
  static constexpr long long kEvery = 25000000, kWindow = 100000000, kStale = 400000000;
  struct Sample {
    long long t, busy, self;
  };
  Sample ring[kSamples] = {};
  int count = 0, newest = -1;

  bool due(long long t) const { return newest < 0 || t - ring[newest].t >= kEvery; }
  void add(long long t, long long busy, long long self) {
    if (!due(t)) return;
    newest = (newest + 1) % kSamples;
    ring[newest] = Sample{t, busy, self};
    count = count < kSamples ? count + 1 : count;
  }
  // Other processes' cores since the newest sample at least kWindow old, or -1 when there is
  // none yet or it is older than kStale (the team was idle meanwhile).
  double others(long long t, long long busy, long long self) const {
    for (int i = 1; i < count; ++i) {
      const Sample& r = ring[(newest - i + kSamples) % kSamples];
      if (t - r.t < kWindow) continue;
      if (t - r.t > kStale) return -1;
      return std::max(0.0, (double)((busy - r.busy) - (self - r.self)) / (double)(t - r.t));
    }
    return -1;
  }
};

struct Team {
  std::mutex run_mutex;  // one region at a time
  int started = 0;       // workers 1..started exist (guarded by run_mutex)
  Slot slots[kMaxThreads];
  // The region being run: written by the caller only while no worker can join it (before it
  // opens the join word, after every worker that joined has finished), read by a worker only
  // after it joined.
  void (*fn)(void*, int, int) = nullptr;
  void* ctx = nullptr;
  int nt = 1;
  unsigned last_gen = 0;  // the generation of the last region posted (guarded by run_mutex)
  // The join word: the region's generation (high 32 bits), whether it is open (kOpen) and how
  // many workers joined (the low bits). A worker joins by incrementing it while it is open and
  // names the generation it was posted for, and takes the count before it as its tid - 1; a
  // worker that comes after the caller closed a flexible region, or that was posted for an
  // older one, never touches the region.
  alignas(64) std::atomic<unsigned long long> join{0};
  std::atomic<int> finished{0};  // workers of the current region that returned
  std::atomic<int> caller_sleeping{0};
  alignas(64) std::atomic<int> arrived{0};  // barrier
  std::atomic<unsigned> generation{0};
  std::atomic<int> barrier_sleepers{0};
  alignas(64) std::atomic<int> idle_spin_us{50};
  // The pace of the bulk calls (rnncore_team_pace): when each of the last kPaceCalls came within
  // kPaceCap of the one before, idle workers spin 1.5x the longest of those gaps (pace_spin_us,
  // at most kPaceCap) instead of idle_spin_us, so that they are awake for the next call. A
  // small model's training step (the textbook SimpleRnnlm: 2-20 us GEMMs some 20-110 us apart)
  // then splits its GEMMs over the cores: a worker woken from sleep there came 10-20 us late on
  // the 2-core AMD VM, and its calls ran slower than on one thread.
  static constexpr int kPaceCalls = 4, kPaceCap = 300;
  std::atomic<long long> pace_last_ns{0};
  std::atomic<int> pace_gaps_us[kPaceCalls] = {};
  std::atomic<unsigned> pace_next{0};
  std::atomic<int> pace_spin_us{0};
  // How far the cores are from each other: the time a spinning worker's doorbell took to reach
  // it, for the last kHandoffs regions. The 2-core AMD VM's host moved its two vCPUs between
  // cores that share an L3 and cores that do not every few seconds: a cache line's round trip
  // went from 70-125 ns to 350-390, and the SimpleRnnlm iteration whose GEMMs split over the
  // two cores from 150 us to 250 (one thread: 175-180 in both). Brisk calls split their small
  // GEMMs unless every handoff of the last kHandoffAge (at least one) took over kFarHandoff:
  // when none is that recent, they split again, and the next handoffs tell.
  static constexpr int kHandoffs = 4;
  static constexpr long long kFarHandoff = 150, kHandoffAge = 100000000;
  std::atomic<long long> handoff_ns[kHandoffs] = {}, handoff_at[kHandoffs] = {};
  std::atomic<unsigned> handoff_next{0};
  // Inside a region every thread works on the same call, so a barrier spins long: on a VM a
  // thread that sleeps idles its virtual CPU, and waking it again goes through the hypervisor
  // (tens of microseconds, longer when the host has given the core away meanwhile). Its
  // partner then waits at the next barrier, sleeps too, and the step falls into a cascade of
  // sleeps and wake-ups: on a 2-core Xeon VM, 100 us spins let 40% of an LSTM training step's
  // barriers end asleep in slow spells (3000 sleeps in 60 steps, the step 66 ms instead of 33);
  // 2 ms spins let almost none. A partner that lost its core for longer still ends in a sleep,
  // which the contention check below counts.
  std::atomic<int> barrier_spin_us{2000};
  std::atomic<long> regions{0}, inline_busy{0}, barrier_sleeps{0}, inline_contended{0}, borrowed{0}, late{0};
  // Contention: waits at a barrier or at a region's end longer than kLongWait (spun or slept)
  // mean a thread of the region lost its core. When they add up to more than a fifth of a
  // region's time and the kernel confirms it (the region's threads were preempted or a worker
  // started late, and other work holds the cores: cores_held), the calls of the next `backoff`
  // run on the caller alone. When it expires, cores_held is asked again: still held, the backoff
  // doubles (up to kBackoffMax); else the team runs again. (A first backoff of 10 ms instead of
  // 100, tried on the idle 2-core Xeon VM: fewer calls on the caller alone, no time gained, and
  // 2/1-thread ratios under a busy process spread from 0.98-1.03x to 0.82-1.10x.) cores_held
  // once looked only at the threads runnable at that moment (three times over 300 us): on the
  // idle 2-core AMD VM, where visitors held a core for over 300 us some 3-4 times a second, 25-77
  // of 100 long regions then ran on the caller alone, and the default training step took 1.03-
  // 1.28x its time with the team always on (LSTM B 32, H 256: 12.6-15.9 ms against 12.4), an
  // LSTM forward + backward between two NumPy matmuls 1.8x its time alone; measured by other
  // processes' CPU time over a tenth of a second instead (LoadMeter), none did.
  std::atomic<int> awake{0};  // workers spinning or working (runnable, as the kernel counts)
  LoadMeter meter;            // guarded by run_mutex
  alignas(64) std::atomic<long long> long_wait_ns{0};
  std::atomic<long> preempted{0};  // involuntary context switches of the region's threads
  std::atomic<long long> backoff_until_ns{0};
  long long backoff_ns = kBackoffMin;
  static constexpr long long kLongWait = 300000, kLateStart = 1000000, kBackoffMin = 100000000, kBackoffMax = 1600000000;
  static constexpr unsigned long long kOpen = 1ull << 31, kCount = kOpen - 1;
};

// Whether the cores are far apart (Team::handoff_ns): every handoff of the last kHandoffAge, and
// at least one, took over kFarHandoff. Without a recent one, near: the next regions will tell.
bool cores_far(Team* team, long long now) {
  bool recent = false;
  for (int h = 0; h < Team::kHandoffs; ++h) {
    if (team->handoff_at[h].load(std::memory_order_relaxed) < now - Team::kHandoffAge) continue;
    if (team->handoff_ns[h].load(std::memory_order_relaxed) <= Team::kFarHandoff) return false;
    recent = true;
  }
  return recent;
}

// Join the region of generation `gen` if it is still open: true, with this worker's tid.
bool try_join(Team* team, unsigned gen, int& tid) {
  unsigned long long w = team->join.load(std::memory_order_acquire);
  do {
    if ((unsigned)(w >> 32) != gen || !(w & Team::kOpen)) return false;
  } while (!team->join.compare_exchange_weak(w, w + 1, std::memory_order_acq_rel, std::memory_order_acquire));
  tid = (int)(w & Team::kCount) + 1;
  return true;
}

long long now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

// Involuntary context switches of the calling thread so far.
long preemptions() {
  struct rusage ru;
  return getrusage(RUSAGE_THREAD, &ru) == 0 ? ru.ru_nivcsw : 0;
}

// Run one thread's part of a region, counting how often the kernel took its core away.
void run_part(Team* team, void (*fn)(void*, int, int), void* ctx, int tid, int nt) {
  const long before = preemptions();
  tl_region_nt = nt;
  fn(ctx, tid, nt);
  tl_region_nt = 0;
  const long n = preemptions() - before;
  if (n) team->preempted.fetch_add(n, std::memory_order_relaxed);
}

// What /proc/stat says now: the runnable threads of the machine (procs_running) and the busy
// time (user, nice, system, irq, softirq) of the CPUs this process may run on, in nanoseconds.
struct StatNow {
  int running = -1;
  long long busy = 0;
  int cpus = 0;  // the machine's CPUs (its cpuN lines)
};

bool read_stat(StatNow& st) {
  static thread_local std::string buf;  // the whole file (its intr line alone runs to kilobytes)
  const int fd = open("/proc/stat", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  buf.clear();
  char chunk[8192];
  for (ssize_t n; (n = read(fd, chunk, sizeof(chunk))) > 0;) buf.append(chunk, (size_t)n);
  close(fd);
  cpu_set_t set;
  const bool mask = sched_getaffinity(0, sizeof(set), &set) == 0;
  static const long long tick_ns = 1000000000LL / std::max(1L, sysconf(_SC_CLK_TCK));
  long long ticks = 0;
  st.cpus = 0;
  for (const char* p = buf.c_str(); (p = strstr(p, "\ncpu")) != nullptr;) {
    p += 4;
    char* e;
    const long cpu = strtol(p, &e, 10);  // the aggregate "cpu " line comes first, not preceded by \n
    if (e == p) continue;
    ++st.cpus;
    if (mask && (cpu < 0 || cpu >= CPU_SETSIZE || !CPU_ISSET(cpu, &set))) continue;
    long long v[7] = {};
    for (long long& x : v) x = strtoll(e, &e, 10);
    ticks += v[0] + v[1] + v[2] + v[5] + v[6];  // not idle, iowait or steal
  }
  const char* p = strstr(buf.c_str(), "procs_running ");
  if (!p) return false;
  st.running = atoi(p + 14);
  st.busy = ticks * tick_ns;
  return true;
}

long long process_cpu_ns() {
  struct timespec ts;
  if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) != 0) return 0;
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

// A sample for the meter (at most one every LoadMeter::kEvery; the caller holds run_mutex).
void sample_load(Team* team, long long t) {
  StatNow st;
  if (read_stat(st)) team->meter.add(t, st.busy, process_cpu_ns());
}

// Another runtime's OpenMP team, borrowed (rnncore_team_borrow_openmp): libgomp's entry points.
struct Borrowed {
  void (*parallel)(void (*)(void*), void*, unsigned, unsigned);  // GOMP_parallel
  int (*thread_num)();                                          // omp_get_thread_num
  int (*num_threads)();                                         // omp_get_num_threads
};
std::atomic<const Borrowed*> g_borrowed{nullptr};

// Runnable threads now that are not the region's own (the caller and, on a borrowed team, its
// nt - 1 threads, awake or not, else rnncore's awake workers), from procs_running.
int others_running(Team* team, int nt, int running) {
  int ours = nt - 1;  // a borrowed team's threads, awake or not
  if (!g_borrowed.load(std::memory_order_relaxed)) {
    // the workers awake, and those woken but not yet running (a VM's idle core can take a few
    // hundred microseconds to run a woken thread, runnable all the while)
    ours = team->awake.load(std::memory_order_relaxed);
    for (int w = 1; w <= team->started; ++w) ours += team->slots[w].woken.load(std::memory_order_relaxed);
  }
  return running - 1 - ours;
}

// Threads of this process that are runnable now (state R in /proc/self/task) other than the
// calling thread and rnncore's workers: another pool of the process spinning after its last op
// (ONNX Runtime's, some 40 ms).
int foreign_runnable(Team* team) {
  DIR* d = opendir("/proc/self/task");
  if (!d) return 0;
  const int me = (int)syscall(SYS_gettid);
  int n = 0;
  while (const dirent* e = readdir(d)) {
    const int tid = atoi(e->d_name);
    bool ours = tid <= 0 || tid == me;
    for (int w = 1; !ours && w <= team->started; ++w) ours = team->slots[w].tid.load(std::memory_order_relaxed) == tid;
    if (ours) continue;
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/self/task/%d/stat", tid);
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    const ssize_t k = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (k <= 0) continue;
    buf[k] = 0;
    const char* p = strrchr(buf, ')');  // the state follows the name, which may hold ')'
    if (p && p[1] == ' ' && p[2] == 'R') ++n;
  }
  closedir(d);
  return n;
}

// Whether other work holds the cores a region of nt threads would use (the CPUs beyond nt are
// spare): other processes used more than the spare CPUs and half a core over the last tenth of
// a second (LoadMeter), or threads of another pool of this process are runnable now beyond the
// spare CPUs. A visitor of an idle VM that holds a core for some milliseconds is neither. Where
// the meter has no recent samples (the team was idle), the runnable threads are looked at three
// times over 300 us instead.
bool cores_held(Team* team, int nt) {
  StatNow st;
  if (!read_stat(st)) return false;
  const long long t = now_ns(), self = process_cpu_ns();
  team->meter.add(t, st.busy, self);
  const int spare = rnncore_num_cpus() - nt;
  const double others = team->meter.others(t, st.busy, self);
  if (others > spare + 0.5) return true;
  // procs_running counts the whole machine's runnable threads: of no use where this process may
  // run on only some of its CPUs (a container pinned to 2 of a large host's)
  const bool all_cpus = st.cpus <= rnncore_num_cpus();
  if (all_cpus && others_running(team, nt, st.running) <= spare) return false;
  if (others >= 0 || !all_cpus) return !g_borrowed.load(std::memory_order_relaxed) && foreign_runnable(team) > spare;
  for (int i = 0; i < 2; ++i) {
    spin_until([] { return false; }, 150);  // a pause
    if (!read_stat(st) || others_running(team, nt, st.running) <= spare) return false;
  }
  return true;
}

// A wait that began at `since` and ended now: a long one counts as contention, spun or slept
// (a partner descheduled for a slice of a few milliseconds is mostly waited for in the spin).
void count_wait(Team* team, long long since) {
  const long long waited = now_ns() - since;
  if (waited > Team::kLongWait) team->long_wait_ns.fetch_add(waited, std::memory_order_relaxed);
}

// Sleep on `word` until it leaves `old`.
template <typename A, typename V>
void sleep_wait(A& word, V old) {
  while (word.load() == old) word.wait(old);
}

Team* g_team = new Team();  // leaked on purpose: workers outlive static destructors


// One region on the borrowed team: every OpenMP thread runs its part, the team's size as nt.
struct BorrowedRegion {
  Team* team;
  const Borrowed* omp;
  void (*fn)(void*, int, int);
  void* ctx;
};

void borrowed_part(void* p) {
  const BorrowedRegion& r = *static_cast<BorrowedRegion*>(p);
  run_part(r.team, r.fn, r.ctx, r.omp->thread_num(), r.omp->num_threads());
}
std::atomic<int> g_setting{0};
std::atomic<int> g_adaptive{1};
std::atomic<int> g_far_mode{-1};  // rnncore_team_set_far

int env_threads(const char* name) {
  const char* s = std::getenv(name);
  if (!s) return 0;
  int n = std::atoi(s);  // OMP_NUM_THREADS may be a list ("4,2"): its first entry
  return n > 0 ? n : 0;
}

int default_threads() {
  static const int n = [] {
    int v = env_threads("RNNCORE_NUM_THREADS");
    if (!v) v = env_threads("OMP_NUM_THREADS");
    if (!v) v = rnncore_num_cpus();
    return std::max(1, std::min(v, kMaxThreads));
  }();
  return n;
}

// `seen`, `handled`: the slot's sequence number and generation when the worker was created,
// before anything was posted to it (the thread may start after the first post). Each generation
// posted to the slot is handled once: joined, if still open, and run.
void worker_main(Team* team, int w, unsigned seen, unsigned handled) {
  Slot& s = team->slots[w];
  pthread_setname_np(pthread_self(), "rnncore-team");  // as /proc, top and the tests see it
  s.tid.store((int)syscall(SYS_gettid), std::memory_order_relaxed);
  team->awake.fetch_add(1, std::memory_order_relaxed);
  for (;;) {
    auto posted = [&] { return s.seq.load(std::memory_order_acquire) != seen; };
    const int idle = team->idle_spin_us.load(std::memory_order_relaxed);  // 0: never spin (tests)
    const int spin = idle > 0 ? std::max(idle, team->pace_spin_us.load(std::memory_order_relaxed)) : 0;
    long long began = 0;  // 0: rung before this worker looked
    const bool spun = spin_until(posted, spin, &began);
    if (!spun) {
      s.sleeping.store(1);
      team->awake.fetch_sub(1, std::memory_order_relaxed);
      while (s.seq.load() == seen) s.seq.wait(seen);
      team->awake.fetch_add(1, std::memory_order_relaxed);
      s.woken.store(0);
      s.sleeping.store(0);
    }
    seen = s.seq.load(std::memory_order_acquire);
    const unsigned gen = s.gen.load(std::memory_order_acquire);
    if (gen == handled) continue;
    handled = gen;
    if (spun && began) {  // how long the doorbell took to reach this core, spinning (Team::handoff_ns)
      const long long now = now_ns();
      const unsigned i = team->handoff_next.fetch_add(1, std::memory_order_relaxed) % Team::kHandoffs;
      team->handoff_ns[i].store(now - s.rung_ns.load(std::memory_order_relaxed), std::memory_order_relaxed);
      team->handoff_at[i].store(now, std::memory_order_relaxed);
    }
    // Started a millisecond or more after it was posted: the worker waited for a core.
    if (now_ns() - s.posted_ns.load(std::memory_order_relaxed) > Team::kLateStart)
      team->preempted.fetch_add(1, std::memory_order_relaxed);
    int tid;
    if (!try_join(team, gen, tid)) {  // a flexible region its caller finished alone
      team->late.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    run_part(team, team->fn, team->ctx, tid, team->nt);
    team->finished.fetch_add(1);
    if (team->caller_sleeping.load()) team->finished.notify_all();
  }
}

void start_workers(Team* team, int n) {  // under run_mutex
  for (int w = team->started + 1; w <= n; ++w)
    std::thread(worker_main, team, w, team->slots[w].seq.load(), team->slots[w].gen.load()).detach();
  team->started = std::max(team->started, n);
}

// A forked child has none of the parent's workers: give it a fresh team (the old one leaks).
// A borrowed libgomp team is not usable in a forked child either (libgomp's pool is not
// fork-safe): the child runs on workers of its own.
void after_fork_child() {
  g_team = new Team();
  g_borrowed.store(nullptr);
}
const int g_atfork = pthread_atfork(nullptr, nullptr, after_fork_child);

// Post the region to workers 1..nt-1, run part 0 on the caller, wait for the workers: all nt - 1
// of them, or (flexible) only those that joined before the caller finished its part.
void run_on_workers(Team* team, int nt, void (*fn)(void*, int, int), void* ctx, long long t0, bool flexible) {
  if (team->started < nt - 1) start_workers(team, nt - 1);
  const unsigned gen = ++team->last_gen;
  team->fn = fn;
  team->ctx = ctx;
  team->nt = nt;
  team->finished.store(0, std::memory_order_relaxed);
  team->join.store((unsigned long long)gen << 32 | Team::kOpen, std::memory_order_release);
  for (int w = 1; w < nt; ++w) {
    Slot& s = team->slots[w];
    s.posted_ns.store(t0, std::memory_order_relaxed);
    s.rung_ns.store(now_ns(), std::memory_order_relaxed);
    s.gen.store(gen, std::memory_order_release);
    s.seq.fetch_add(1);
    if (s.sleeping.load()) {
      s.woken.store(1);
      s.seq.notify_one();
    }
  }
  run_part(team, fn, ctx, 0, nt);
  // A flexible region's part 0 claims work until none is left (parallel.h, bulk_region): close
  // it, so that a worker still on its way stays out, and wait for those inside. Every worker of
  // a fixed region (its parts split by tid) joins, and no other was posted for it: the caller
  // waits for all, and the next region's generation shuts the word.
  const int joined = flexible ? (int)(team->join.fetch_and(~Team::kOpen) & Team::kCount) : nt - 1;
  auto done = [&] { return team->finished.load(std::memory_order_acquire) == joined; };
  long long since = 0;
  if (!spin_until(done, team->barrier_spin_us.load(std::memory_order_relaxed), &since)) {
    team->caller_sleeping.store(1);
    for (int f; (f = team->finished.load()) != joined;) sleep_wait(team->finished, f);
    team->caller_sleeping.store(0);
  }
  if (since) count_wait(team, since);
}

}  // namespace

extern "C" {

int rnncore_num_cpus(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

int rnncore_get_num_threads(void) {
  const int n = g_setting.load(std::memory_order_relaxed);
  return n > 0 ? n : default_threads();
}

void rnncore_set_num_threads(int n) { g_setting.store(std::max(0, std::min(n, kMaxThreads))); }

int rnncore_thread_setting(void) { return g_setting.load(); }

namespace {

int team_run(int nt, void (*fn)(void*, int, int), void* ctx, bool flexible, bool check_first = false) {
  Team* team = g_team;
  nt = std::min(nt, kMaxThreads);
  if (nt <= 1 || tl_region_nt > 0) {
    fn(ctx, 0, 1);
    return 1;
  }
  std::unique_lock<std::mutex> lock(team->run_mutex, std::try_to_lock);
  if (!lock.owns_lock()) {  // another Python thread holds the team: run this call inline
    team->inline_busy.fetch_add(1, std::memory_order_relaxed);
    fn(ctx, 0, 1);
    return 1;
  }
  const bool adaptive = g_adaptive.load(std::memory_order_relaxed);
  long long t0 = now_ns();
  if (adaptive && team->meter.due(t0)) sample_load(team, t0);
  if (adaptive && t0 < team->backoff_until_ns.load(std::memory_order_relaxed)) {
    lock.unlock();  // the cores were taken a moment ago: this call runs on the caller alone
    team->inline_contended.fetch_add(1, std::memory_order_relaxed);
    fn(ctx, 0, 1);
    return 1;
  }
  if (adaptive && team->backoff_until_ns.load(std::memory_order_relaxed) != 0) {  // a backoff expired
    if (cores_held(team, nt)) {  // still held: the backoff doubles
      team->backoff_ns = std::min(team->backoff_ns * 2, Team::kBackoffMax);
      team->backoff_until_ns.store(t0 + team->backoff_ns, std::memory_order_relaxed);
      lock.unlock();
      team->inline_contended.fetch_add(1, std::memory_order_relaxed);
      fn(ctx, 0, 1);
      return 1;
    }
    team->backoff_until_ns.store(0, std::memory_order_relaxed);
    team->backoff_ns = Team::kBackoffMin;
    t0 = now_ns();
  }
  else if (adaptive && check_first && cores_held(team, nt)) {
    // A long region that would start while other threads hold the cores (another runtime's pool
    // spinning after its last op, a busy process): its first barrier would wait for a worker
    // without a core, at every step. It runs on the caller, and so do the calls of the next
    // backoff, as when the waits show it (without that, under a busy process every long call
    // paid the 300 us that cores_held then took: LSTM B 8, H 128 1.15x its one-thread time).
    team->backoff_until_ns.store(t0 + team->backoff_ns, std::memory_order_relaxed);
    lock.unlock();
    team->inline_contended.fetch_add(1, std::memory_order_relaxed);
    fn(ctx, 0, 1);
    return 1;
  }
  team->long_wait_ns.store(0, std::memory_order_relaxed);
  team->preempted.store(0, std::memory_order_relaxed);
  if (const Borrowed* omp = g_borrowed.load(std::memory_order_acquire)) {
    // the region runs on the other runtime's threads (the caller as thread 0), awake already
    // (spinning after that runtime's last op) or that runtime's to wake; returns when all finished
    BorrowedRegion r{team, omp, fn, ctx};
    omp->parallel(borrowed_part, &r, (unsigned)nt, 0);
    team->borrowed.fetch_add(1, std::memory_order_relaxed);
  } else {
    run_on_workers(team, nt, fn, ctx, t0, flexible);
  }
  team->regions.fetch_add(1, std::memory_order_relaxed);
  if (adaptive) {
    const long long t1 = now_ns();
    if (team->long_wait_ns.load(std::memory_order_relaxed) * 5 > (t1 - t0) &&
        team->preempted.load(std::memory_order_relaxed) > 0 && cores_held(team, nt))
      team->backoff_until_ns.store(t1 + team->backoff_ns, std::memory_order_relaxed);
  }
  return nt;
}

}  // namespace

int rnncore_team_run(int nt, void (*fn)(void*, int, int), void* ctx) { return team_run(nt, fn, ctx, false); }

int rnncore_team_run_flexible(int nt, void (*fn)(void*, int, int), void* ctx) {
  return team_run(nt, fn, ctx, true);
}

int rnncore_team_run_long(int nt, void (*fn)(void*, int, int), void* ctx, int flexible) {
  return team_run(nt, fn, ctx, flexible != 0, true);
}

void rnncore_team_barrier(void) {
  const int n = tl_region_nt;
  if (n <= 1) return;
  Team* team = g_team;
  const unsigned gen = team->generation.load(std::memory_order_acquire);
  if (team->arrived.fetch_add(1) == n - 1) {  // last to arrive: open the next phase
    team->arrived.store(0, std::memory_order_relaxed);
    team->generation.fetch_add(1);
    if (team->barrier_sleepers.load()) team->generation.notify_all();
    return;
  }
  auto opened = [&] { return team->generation.load(std::memory_order_acquire) != gen; };
  long long since = 0;
  if (!spin_until(opened, team->barrier_spin_us.load(std::memory_order_relaxed), &since)) {
    team->barrier_sleeps.fetch_add(1, std::memory_order_relaxed);
    team->barrier_sleepers.fetch_add(1);
    sleep_wait(team->generation, gen);
    team->barrier_sleepers.fetch_sub(1);
  }
  if (since) count_wait(team, since);
}

void rnncore_team_set_adaptive(int on) { g_adaptive.store(on ? 1 : 0); }

int rnncore_team_borrow_openmp(void* gomp_parallel, void* omp_get_thread_num, void* omp_get_num_threads) {
  Team* team = g_team;
  std::lock_guard<std::mutex> lock(team->run_mutex);  // never while a region runs
  if (!gomp_parallel || !omp_get_thread_num || !omp_get_num_threads) {
    g_borrowed.store(nullptr, std::memory_order_release);  // (a replaced Borrowed is leaked: a few bytes)
    return 0;
  }
  auto* b = new Borrowed{reinterpret_cast<void (*)(void (*)(void*), void*, unsigned, unsigned)>(gomp_parallel),
                         reinterpret_cast<int (*)()>(omp_get_thread_num),
                         reinterpret_cast<int (*)()>(omp_get_num_threads)};
  g_borrowed.store(b, std::memory_order_release);
  return 1;
}

int rnncore_team_borrowing(void) { return g_borrowed.load() != nullptr; }

void rnncore_team_set_spin(int idle_us, int barrier_us) {
  if (idle_us >= 0) g_team->idle_spin_us.store(idle_us);
  if (barrier_us >= 0) g_team->barrier_spin_us.store(barrier_us);
}

int rnncore_team_pace(void) {
  Team* team = g_team;
  const long long now = now_ns();
  const long long last = team->pace_last_ns.exchange(now, std::memory_order_relaxed);
  const long long gap_us = last ? (now - last) / 1000 : Team::kPaceCap + 1;
  const unsigned i = team->pace_next.fetch_add(1, std::memory_order_relaxed) % Team::kPaceCalls;
  team->pace_gaps_us[i].store((int)std::min<long long>(gap_us, Team::kPaceCap + 1), std::memory_order_relaxed);
  int longest = 0;
  for (const auto& g : team->pace_gaps_us) longest = std::max(longest, g.load(std::memory_order_relaxed));
  const bool brisk = longest <= Team::kPaceCap;
  team->pace_spin_us.store(brisk ? std::min(Team::kPaceCap, longest * 3 / 2) : 0, std::memory_order_relaxed);
  return brisk && !rnncore_team_far();
}

int rnncore_team_far(void) {
  const int forced = g_far_mode.load(std::memory_order_relaxed);
  return forced >= 0 ? forced : cores_far(g_team, now_ns());
}

void rnncore_team_set_far(int mode) { g_far_mode.store(mode < 0 ? -1 : (mode ? 1 : 0)); }

void rnncore_team_stats(long* regions, long* inline_busy, long* barrier_sleeps, long* inline_contended,
                        long* borrowed, long* late) {
  if (late) *late = g_team->late.load();
  if (borrowed) *borrowed = g_team->borrowed.load();
  if (inline_contended) *inline_contended = g_team->inline_contended.load();
  if (regions) *regions = g_team->regions.load();
  if (inline_busy) *inline_busy = g_team->inline_busy.load();
  if (barrier_sleeps) *barrier_sleeps = g_team->barrier_sleeps.load();
}

}  // extern "C"
