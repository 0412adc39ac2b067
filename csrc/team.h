// team.h: rnncore's one thread team (implemented in team.cpp, the shared library
// librnncore_threads that threadpoolctl lists).
//
// Persistent workers owned by rnncore, not an OpenMP runtime: a native call runs its parallel
// region on them, and they wait for the next region with a short bounded spin and then sleep on
// a futex, so they never keep spinning while NumPy's BLAS, PyTorch's OpenMP or another process
// wants the cores (the spin lasts until the next call is due, up to 300 us, while bulk calls
// come briskly: rnncore_team_pace). The barrier between the phases of a step spins longer (up to 2 ms: every
// thread of the region works on the same call), then sleeps too, so a step whose partner thread
// was descheduled for longer gives its core away instead of burning it.
//
// When the threads of a region keep losing their cores (another process, or another pool that
// spins), their waits at the barriers add up; when other work holds the cores (other processes
// used more than half a core of them over the last tenth of a second, or another pool of this
// process has threads runnable), the team runs the calls of the next tenth of a second or more
// on the calling thread alone, then tries the full team again. A team whose partner thread is
// descheduled is slower than one thread, so this keeps n threads never slower than one on a
// loaded machine; a short visitor (a kernel thread holding a core for a few milliseconds) costs
// the waits it causes, not a tenth of a second on one thread.
//
// One region runs at a time: a call that finds the team busy (a second Python thread, or a
// region started from inside a region) runs inline on its own thread. Work is cut into fixed
// chunks by the callers (parallel.h), so the results are the same bits either way.
#pragma once

extern "C" {

// The thread count native calls use: the setting, else RNNCORE_NUM_THREADS, else
// OMP_NUM_THREADS, else the CPUs this process may run on.
int rnncore_get_num_threads(void);
// n > 0 sets the count, n == 0 returns to the default. (threadpoolctl calls these two.)
void rnncore_set_num_threads(int n);
// The stored setting (0: the default).
int rnncore_thread_setting(void);
// CPUs this process may run on (its affinity mask).
int rnncore_num_cpus(void);

// Run fn(ctx, tid, nt) for tid in [0, nt): tid 0 on the calling thread, the others on the
// team's workers; returns when all have returned. Runs fn(ctx, 0, 1) inline when nt <= 1 or the
// team is busy. Returns the nt that ran.
int rnncore_team_run(int nt, void (*fn)(void* ctx, int tid, int nt), void* ctx);
// The same for a flexible region, whose parts share its work by claiming it (parallel.h:
// bulk_region) rather than by tid, and have no barrier: the caller waits only for the workers
// that joined before its own part returned. A worker that wakes late (asleep, or its core
// taken by another process) then costs the call nothing; the caller has done its share.
int rnncore_team_run_flexible(int nt, void (*fn)(void* ctx, int tid, int nt), void* ctx);
// Either of the two for a long region (milliseconds of work): unless the team is backing off
// already, it first reads /proc/stat (some 6-9 us) and runs the region on the caller alone when
// other work holds the cores: a busy process (other processes' CPU time over the last tenth of
// a second) or another runtime's pool of this process spinning after its last op (its threads
// runnable now, in /proc/self/task; ONNX Runtime's spins some 40 ms, and an LSTM forward of a
// unit split started then took up to 10x its time, every step's barrier waiting for a worker
// without a core); so do the calls of the next backoff (as after the waits described above).
int rnncore_team_run_long(int nt, void (*fn)(void* ctx, int tid, int nt), void* ctx, int flexible);
// Wait until every thread of the current region has arrived (no-op outside a region or at nt 1).
void rnncore_team_barrier(void);
// The spin budgets in microseconds before a waiting thread sleeps: idle workers between regions
// and threads at a barrier. Negative values leave a budget unchanged.
void rnncore_team_set_spin(int idle_us, int barrier_us);
// Counters since load, for tests and benchmarks: regions run on the team, regions run inline
// because the team was busy, barrier waits that ended asleep, regions run inline because the
// team had found its threads descheduled (the cores taken by other work) shortly before, and
// regions run on a borrowed OpenMP team, and workers that came to a flexible region after its
// caller had finished it.
void rnncore_team_stats(long* regions, long* inline_busy, long* barrier_sleeps, long* inline_contended,
                        long* borrowed, long* late);
// Whether the team falls back to the calling thread alone while the cores are taken (default on).
void rnncore_team_set_adaptive(int on);
// A bulk call (parallel.h: bulk_threads) is about to run: whether the calls come briskly (each of
// the last four within 300 us of the one before), in which case the idle workers spin until
// the next one is due (up to 300 us) instead of sleeping after 50.
int rnncore_team_pace(void);
// Whether the team's cores are far apart now: the doorbells of the last tenth of a second took
// over 150 ns to reach a spinning worker (cores that share no cache; on the 2-core AMD VM the
// host moved its vCPUs there and back every few seconds). Brisk calls then keep their small
// GEMMs on one thread, and the time loops their small steps (driver.h: step_threads).
int rnncore_team_far(void);
// Tests: 1 the cores count as far apart, 0 near, -1 as measured (the default).
void rnncore_team_set_far(int mode);
// Run the regions from now on on another runtime's OpenMP team instead of rnncore's workers:
// libgomp's GOMP_parallel, omp_get_thread_num and omp_get_num_threads of a libgomp already in
// the process (PyTorch's: rnncore.torch). In a program whose other pool is that OpenMP team,
// its threads spin for milliseconds after each of its ops; borrowing them, rnncore's calls
// start on threads that are awake already, and the process keeps one team instead of two
// fighting over the cores. The regions keep rnncore's thread count, work split and barrier, so
// the results are the same bits. All three null: back to rnncore's workers. Waits for a
// running region; returns whether borrowing is on.
int rnncore_team_borrow_openmp(void* gomp_parallel, void* omp_get_thread_num, void* omp_get_num_threads);
int rnncore_team_borrowing(void);
}
