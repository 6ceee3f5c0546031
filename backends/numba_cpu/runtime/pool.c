/* keydnn numba-cpu worker pool: native threads that join a generated entry within microseconds.
 *
 * Why native: Python helper threads must take the GIL before they can call
 * the entry, and the GIL hand-over takes from ~15 us to several ms (the
 * switch interval) -- longer than a whole batch-1 inference, so the second
 * core sat idle. These workers never touch Python: after a job they spin
 * (pause) for KEYDNN_CPU_SPIN_US microseconds (default 200) watching their
 * slot, then sleep on a condition variable until the next job.
 *
 * A job is a generated entry with the uniform C signature
 *     int64 entry(int64 tid, int64 nthr, int64 gen, int64 n, int64 args)
 * The caller runs tid 0 itself; keydnn_pool_run returns only after every
 * worker that claimed its part has returned (a part not claimed by then is
 * withdrawn), so no worker ever touches a call's memory afterwards. One call
 * uses the pool at a time: a concurrent caller runs its call on its own
 * thread (nthr = 1) instead of waiting.
 *
 * Built by keydnn (cpu_pool.py) with the system C compiler into the compile
 * cache and loaded with ctypes; without a compiler, Python helper threads
 * are used instead.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sched.h>
#include <time.h>

typedef int64_t (*entry_t)(int64_t, int64_t, int64_t, int64_t, int64_t);

#define MAX_WORKERS 63

typedef struct {
    _Atomic int64_t job;   /* seq of the posted job; -seq once a worker claimed it; 0 when withdrawn */
    _Atomic int64_t done;  /* set to seq by the worker when its part returned */
    _Atomic int sleeping;
    entry_t fn;
    int64_t nthr, gen, n, args;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    char pad[64];
} slot_t;

static slot_t slots[MAX_WORKERS + 1];
static int started = 0;               /* workers running (tids 1..started) */
static int64_t spin_ns = 200000;
static int64_t next_seq = 0;          /* guarded by run_lock */
static pthread_mutex_t run_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t start_lock = PTHREAD_MUTEX_INITIALIZER;

static inline void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* Pause, and every so often give the core away: on a busy machine the thread we wait for may share it. */
static inline void backoff(unsigned *k) {
    if ((++*k & 63u) == 0) sched_yield();
    else relax();
}

static void *worker(void *arg) {
    slot_t *s = &slots[(intptr_t)arg];
    int64_t seen = 0; /* seqs grow; a job is new when its seq is above the last one seen */
    for (;;) {
        int64_t q = atomic_load(&s->job);
        if (q <= seen) {
            int64_t t0 = now_ns();
            unsigned k = 0;
            while ((q = atomic_load(&s->job)) <= seen) {
                backoff(&k);
                if ((k & 255u) == 0 && now_ns() - t0 > spin_ns) break;
            }
            if (q <= seen) {
                pthread_mutex_lock(&s->lock);
                atomic_store(&s->sleeping, 1);
                while ((q = atomic_load(&s->job)) <= seen) pthread_cond_wait(&s->wake, &s->lock);
                atomic_store(&s->sleeping, 0);
                pthread_mutex_unlock(&s->lock);
            }
        }
        seen = q;
        int64_t expect = q;
        if (!atomic_compare_exchange_strong(&s->job, &expect, -q)) continue; /* withdrawn: the call is over */
        s->fn((intptr_t)arg, s->nthr, s->gen, s->n, s->args);
        atomic_store(&s->done, q);
    }
    return NULL;
}

static void reset_after_fork(void) {
    /* the child has none of the parent's threads: start afresh */
    started = 0;
    next_seq = 0;
    pthread_mutex_init(&run_lock, NULL);
    pthread_mutex_init(&start_lock, NULL);
    for (int i = 0; i <= MAX_WORKERS; i++) {
        atomic_store(&slots[i].job, 0);
        atomic_store(&slots[i].done, 0);
        atomic_store(&slots[i].sleeping, 0);
        pthread_mutex_init(&slots[i].lock, NULL);
        pthread_cond_init(&slots[i].wake, NULL);
    }
}

static int ensure_workers(int count) {
    if (started >= count) return count;
    pthread_mutex_lock(&start_lock);
    static int registered = 0;
    if (!registered) {
        pthread_atfork(NULL, NULL, reset_after_fork);
        const char *env = getenv("KEYDNN_CPU_SPIN_US");
        if (env && *env) spin_ns = (int64_t)(atof(env) * 1000.0);
        registered = 1;
    }
    while (started < count && started < MAX_WORKERS) {
        int tid = started + 1;
        pthread_mutex_init(&slots[tid].lock, NULL);
        pthread_cond_init(&slots[tid].wake, NULL);
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&th, &attr, worker, (void *)(intptr_t)tid);
        pthread_attr_destroy(&attr);
        if (rc != 0) break;
        started = tid;
    }
    int have = started;
    pthread_mutex_unlock(&start_lock);
    return have < count ? have : count;
}

/* Run fn(tid, nthr, gen, n, args) for tid 0..nthr-1: tid 0 on the calling thread. Returns tid 0's result.
 * A worker that has not claimed its part by the time tid 0 returns is withdrawn, not waited for: the
 * generated code never depends on a helper showing up, and waiting for a thread that shares the core
 * (a busy machine) would cost a whole time slice. */
int64_t keydnn_pool_run(entry_t fn, int64_t nthr, int64_t gen, int64_t n, int64_t args) {
    if (nthr > MAX_WORKERS + 1) nthr = MAX_WORKERS + 1;
    if (nthr <= 1 || pthread_mutex_trylock(&run_lock) != 0) return fn(0, 1, gen, n, args);
    int helpers = ensure_workers((int)nthr - 1);
    nthr = helpers + 1;
    int64_t seq = ++next_seq;
    for (int t = 1; t <= helpers; t++) {
        slot_t *s = &slots[t];
        s->fn = fn;
        s->nthr = nthr;
        s->gen = gen;
        s->n = n;
        s->args = args;
        atomic_store(&s->job, seq); /* seq_cst: pairs with the worker's sleeping flag */
        if (atomic_load(&s->sleeping)) {
            pthread_mutex_lock(&s->lock);
            pthread_cond_signal(&s->wake);
            pthread_mutex_unlock(&s->lock);
        }
    }
    int64_t result = fn(0, nthr, gen, n, args);
    for (int t = 1; t <= helpers; t++) {
        slot_t *s = &slots[t];
        int64_t expect = seq;
        if (atomic_compare_exchange_strong(&s->job, &expect, 0)) continue; /* never claimed: withdrawn */
        unsigned k = 0;
        while (atomic_load(&s->done) != seq) backoff(&k);
    }
    pthread_mutex_unlock(&run_lock);
    return result;
}

/* Workers started so far (for tests and diagnostics). */
int64_t keydnn_pool_workers(void) { return started; }
