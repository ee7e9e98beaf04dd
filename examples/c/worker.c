/*
 * A small multithreaded C program traced by livetrace.
 *
 * Worker threads call work_item -> work_parse -> work_hash, and
 * plugin_transform -> plugin_helper in libplugin.so, which main loads with
 * dlopen. Built with -fpatchable-function-entry=5 (or -pg -mfentry
 * -mnop-mcount -mrecord-mcount), every one of those functions starts with a
 * 5-byte NOP that livetrace can turn into a call while the threads run.
 *
 *   LD_PRELOAD=liblivetrace.so ./worker run 0 &     # then: livetrace trace PID -f 'work_*'
 *   LD_PRELOAD=liblivetrace.so ./worker trace graph out   # traces itself via livetrace.h
 *
 * Modes (each prints key=value lines the tests read; exit 0 = success,
 * 1 = a check failed, 2 = usage, 77 = livetrace is not loaded):
 *   run SECONDS [ITEMS]       workers loop for SECONDS (0: until killed)
 *   trace TRACER PREFIX [PAT...]
 *                              trace the workers with TRACER (function, graph,
 *                              profile) through the C API; write PREFIX.*
 *   ops                       an lt_ops callback counting every work_hash call
 *   dlclose                   dlopen/dlclose of a traced library while tracing
 *   nested                    dlopen of a library whose constructor loads another
 *   ctorthread ROUNDS         dlopen (ROUNDS times) of a library whose constructor
 *                              starts a thread running its own functions
 *   sigtrap ROUNDS [PAUSE_US] own SIGTRAP handler; a thread traps with int3
 *                              (pausing PAUSE_US between traps) while tracing
 *                              is turned on and off ROUNDS times
 *   fork                      fork while tracing; the child works, traces itself
 *   bench ITERS               ns per call of a hot function, sites disabled and
 *                              (with livetrace) enabled
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "livetrace.h"

/* Weak: the program runs (untraced, modes that need the API exit 77)
 * without liblivetrace.so. */
#pragma weak lt_last_error
#pragma weak lt_init
#pragma weak lt_count_functions
#pragma weak lt_function_name
#pragma weak lt_ops_register
#pragma weak lt_ops_unregister
#pragma weak lt_trace_start
#pragma weak lt_trace_start_n
#pragma weak lt_trace_stop
#pragma weak lt_trace_write
#pragma weak lt_trace_count
#pragma weak lt_session_free

#if defined(__clang__)
#define NOINLINE __attribute__((noinline))
#else
#define NOINLINE __attribute__((noinline, noipa))
#endif

#define NTHREADS 3

typedef uint64_t (*transform_fn)(uint64_t);

static transform_fn transform;
static volatile long *plugin_calls;
static volatile int stop_flag;
static long work_item_calls, work_hash_calls;

/* Whether liblivetrace.so is loaded. Asked of the loader rather than by
 * testing `lt_trace_start` for NULL: in non-PIE code (the mcount build) the
 * address of a weak function is fixed at link time. */
static int have_livetrace(void)
{
    return dlsym(RTLD_DEFAULT, "lt_trace_start") != NULL;
}

static void die(const char *what)
{
    fprintf(stderr, "worker: %s: %s\n", what, have_livetrace() ? lt_last_error() : strerror(errno));
    exit(1);
}

static void need_livetrace(void)
{
    if (!have_livetrace()) {
        fprintf(stderr, "worker: liblivetrace.so is not loaded (run with LD_PRELOAD)\n");
        exit(77);
    }
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

NOINLINE uint64_t work_hash(uint64_t x)
{
    __atomic_fetch_add(&work_hash_calls, 1, __ATOMIC_RELAXED);
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    return x ^ (x >> 33);
}

NOINLINE uint64_t work_parse(int i)
{
    return work_hash((uint64_t)i * 2654435761u);
}

NOINLINE uint64_t work_item(int i)
{
    __atomic_fetch_add(&work_item_calls, 1, __ATOMIC_RELAXED);
    uint64_t v = work_parse(i);
    transform_fn t = __atomic_load_n(&transform, __ATOMIC_ACQUIRE);
    return t ? t(v) : v;
}

NOINLINE unsigned long bench_leaf(unsigned long x)
{
    return x * 3 + 1;
}

struct job {
    int items; /* 0: until stop_flag */
    uint64_t sum;
};

NOINLINE void *worker_main(void *arg)
{
    struct job *j = arg;
    for (int i = 0; j->items == 0 ? !stop_flag : i < j->items; i++) {
        j->sum += work_item(i);
        if (j->items == 0 && i % 8 == 0)
            usleep(1000);
    }
    return NULL;
}

static void run_workers(int items)
{
    pthread_t t[NTHREADS];
    struct job jobs[NTHREADS] = {{0}};
    for (int i = 0; i < NTHREADS; i++) {
        jobs[i].items = items;
        if (pthread_create(&t[i], NULL, worker_main, &jobs[i]))
            die("pthread_create");
    }
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(t[i], NULL);
}

static void *load_plugin(const char *name)
{
    /* A bare name: found through the executable's RUNPATH ($ORIGIN), which
     * only works if the dlopen interposer keeps the caller's identity. */
    void *h = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "worker: dlopen %s: %s\n", name, dlerror());
        exit(1);
    }
    return h;
}

static void use_plugin(void *h)
{
    plugin_calls = dlsym(h, "plugin_calls");
    __atomic_store_n(&transform, h ? (transform_fn)dlsym(h, "plugin_transform") : NULL,
                     __ATOMIC_RELEASE);
}

static int maps_contain(const char *needle)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[4096];
    int found = 0;
    while (f && fgets(line, sizeof line, f))
        found |= strstr(line, needle) != NULL;
    if (f)
        fclose(f);
    return found;
}

/* ---- run ------------------------------------------------------------- */

static int mode_run(int argc, char **argv)
{
    int secs = argc > 2 ? atoi(argv[2]) : 0;
    use_plugin(load_plugin("libplugin.so"));
    pthread_t t[NTHREADS];
    struct job jobs[NTHREADS] = {{0}};
    for (int i = 0; i < NTHREADS; i++)
        pthread_create(&t[i], NULL, worker_main, &jobs[i]);
    printf("ready pid=%d\n", (int)getpid());
    fflush(stdout);
    /* Signals (livetrace's thread probes among them) cut sleeps short:
     * wait for the deadline, not for one sleep. */
    double end = now_ns() + secs * 1e9;
    while (secs == 0 || now_ns() < end)
        usleep(100000);
    stop_flag = 1;
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(t[i], NULL);
    printf("work_item_calls=%ld plugin_calls=%ld\n", work_item_calls, *plugin_calls);
    return 0;
}

/* ---- trace: the C API end to end -------------------------------------- */

static int mode_trace(int argc, char **argv)
{
    need_livetrace();
    if (argc < 4)
        return 2;
    const char *tracer = argv[2], *prefix = argv[3];
    const char *defaults[] = {"work_*", "plugin_*", "worker_main"};
    const char *const *pats = argc > 4 ? (const char *const *)&argv[4] : defaults;
    size_t npats = argc > 4 ? (size_t)(argc - 4) : 3;

    use_plugin(load_plugin("libplugin.so"));
    printf("functions=%d work=%d plugin=%d\n", lt_count_functions(NULL),
           lt_count_functions("work_*"), lt_count_functions("plugin_*"));

    lt_session *s = lt_trace_start_n(tracer, pats, npats);
    if (!s)
        die("lt_trace_start_n");
    run_workers(200);
    if (lt_trace_stop(s) != LT_OK)
        die("lt_trace_stop");

    static const struct {
        const char *format, *ext;
        int function, graph, profile;
    } outs[] = {
        {"text", "txt", 1, 1, 1},      {"json", "json", 1, 1, 0},
        {"folded", "folded", 1, 1, 0}, {"svg", "svg", 0, 1, 0},
        {"uftrace", "uftrace.data", 1, 1, 0}, {"profile", "profile.txt", 0, 1, 1},
    };
    for (size_t i = 0; i < sizeof outs / sizeof outs[0]; i++) {
        int want = !strcmp(tracer, "function") ? outs[i].function
                 : !strcmp(tracer, "graph")    ? outs[i].graph
                                               : outs[i].profile;
        if (!want)
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s.%s", prefix, outs[i].ext);
        long n = lt_trace_write(s, path, outs[i].format);
        if (n < 0)
            die(outs[i].format);
        printf("wrote %s %ld\n", outs[i].format, n);
    }
    printf("events=%ld\n", lt_trace_count(s));
    lt_session_free(s);
    printf("work_item_calls=%ld work_hash_calls=%ld plugin_calls=%ld\n", work_item_calls,
           work_hash_calls, *plugin_calls);
    /* Errors are reported, not crashes. */
    if (lt_trace_start("nonsense", "*") || !strstr(lt_last_error(), "nonsense"))
        die("an unknown tracer was accepted");
    if (lt_trace_start("function", "no_such_function_*") ||
        !strstr(lt_last_error(), "no_such_function_*"))
        die("a glob matching nothing was accepted");
    printf("errors ok\n");
    return 0;
}

/* ---- ops: a callback of the program's own ------------------------------ */

struct counter {
    long calls;
    uintptr_t ip;
    long refused; /* lt_* calls from inside the callback, refused */
};

static void count_cb(uintptr_t ip, uintptr_t parent_ip, void *data)
{
    struct counter *c = data;
    (void)parent_ip;
    __atomic_fetch_add(&c->calls, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&c->ip, ip, __ATOMIC_RELAXED);
    /* livetrace refuses to be called from a callback, at once: waiting
     * could deadlock with lt_ops_unregister, which waits for callbacks. */
    if (lt_count_functions(NULL) == LT_ESTATE)
        __atomic_fetch_add(&c->refused, 1, __ATOMIC_RELAXED);
}

static int mode_ops(void)
{
    need_livetrace();
    struct counter c = {0, 0, 0};
    long before = work_hash_calls;
    lt_ops *ops = lt_ops_register("work_hash", count_cb, &c);
    if (!ops)
        die("lt_ops_register");
    run_workers(500);
    if (lt_ops_unregister(ops) != LT_OK)
        die("lt_ops_unregister");
    long expected = work_hash_calls - before;
    char name[64];
    int n = lt_function_name(c.ip, name, sizeof name);
    /* After unregister the callback is never called again. */
    long after = c.calls;
    run_workers(100);
    printf("ops count=%ld expected=%ld refused=%ld name=%s len=%d later=%ld\n", c.calls,
           expected, c.refused, n > 0 ? name : "?", n, c.calls - after);
    int ok = c.calls == expected && c.refused == c.calls && c.calls - after == 0 &&
             !strcmp(name, "work_hash");

    /* Unregister while the workers are inside the callback (which calls
     * livetrace): the unregistration waits for them to leave it, so their
     * lt_* calls must not wait for it. */
    struct counter d = {0, 0, 0};
    pthread_t w[NTHREADS];
    struct job jobs[NTHREADS] = {{0}};
    for (int i = 0; i < NTHREADS; i++)
        pthread_create(&w[i], NULL, worker_main, &jobs[i]);
    for (int round = 0; round < 20; round++) {
        lt_ops *o = lt_ops_register("work_*", count_cb, &d);
        if (!o)
            die("lt_ops_register");
        usleep(1000);
        if (lt_ops_unregister(o) != LT_OK)
            die("lt_ops_unregister");
    }
    stop_flag = 1;
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(w[i], NULL);
    printf("concurrent calls=%ld refused=%ld\n", d.calls, d.refused);
    return ok && d.calls > 0 && d.refused == d.calls ? 0 : 1;
}

/* ---- dlclose: unloading a traced library ------------------------------- */

struct range {
    uintptr_t lo, hi;
    long inside;
};

static void range_cb(uintptr_t ip, uintptr_t parent_ip, void *data)
{
    struct range *r = data;
    (void)parent_ip;
    if (ip >= r->lo && ip < r->hi)
        __atomic_fetch_add(&r->inside, 1, __ATOMIC_RELAXED);
}

static void *churn_main(void *arg)
{
    (void)arg;
    for (int i = 0; i < 60; i++) {
        void *h = load_plugin("libplugin2.so");
        transform_fn f = (transform_fn)dlsym(h, "plugin_transform");
        for (int k = 0; k < 50; k++)
            f((uint64_t)k);
        dlclose(h);
    }
    return NULL;
}

static volatile int toggle_forever;

static void *toggle_main(void *arg)
{
    (void)arg;
    for (int i = 0; i < 25 || (toggle_forever && !stop_flag); i++) {
        lt_session *s = lt_trace_start("graph", "plugin_*");
        if (!s)
            die("toggle: lt_trace_start");
        usleep(500);
        lt_session_free(s);
    }
    return NULL;
}

static int mode_dlclose(void)
{
    need_livetrace();
    int fail = 0;
    void *h = load_plugin("libplugin.so");
    use_plugin(h);
    int nfuncs = lt_count_functions("plugin_*");
    transform_fn f = transform;
    Dl_info info;
    dladdr((void *)f, &info);
    printf("loaded functions=%d\n", nfuncs);
    fail |= nfuncs != 2;

    /* 1. Close it while its sites are enabled: pinned, still mapped. */
    lt_session *s = lt_trace_start("function", "plugin_*");
    if (!s)
        die("lt_trace_start");
    run_workers(100);
    use_plugin(NULL);
    dlclose(h);
    int pinned = maps_contain("libplugin.so");
    /* Open it again while traced: the same object, still traced. */
    h = load_plugin("libplugin.so");
    use_plugin(h);
    run_workers(100);
    use_plugin(NULL);
    dlclose(h);
    long events = lt_trace_count(s);
    lt_trace_stop(s);
    /* 2. Tracing off: the pin is gone, so is the library, so are its
     * records. */
    int unloaded = !maps_contain("libplugin.so");
    int after = lt_count_functions("plugin_*");
    printf("pinned=%d traced_events=%ld unloaded=%d records_after_close=%d\n", pinned, events,
           unloaded, after);
    fail |= !pinned || events != 2 * NTHREADS * 100 * 3 || !unloaded || after != 0;
    lt_session_free(s);

    /* 3. Nothing calls into the unloaded range: a callback on every function
     * sees no site there while the program keeps working. */
    struct range r = {(uintptr_t)info.dli_fbase, (uintptr_t)info.dli_fbase + (1u << 20), 0};
    lt_ops *all = lt_ops_register("*", range_cb, &r);
    if (!all)
        die("lt_ops_register *");
    run_workers(200);
    lt_ops_unregister(all);
    printf("calls_into_closed=%ld\n", r.inside);
    fail |= r.inside != 0;

    /* 4. Loaded afresh: found again, traceable again. */
    h = load_plugin("libplugin.so");
    use_plugin(h);
    s = lt_trace_start("graph", "plugin_*");
    if (!s)
        die("lt_trace_start after reload");
    run_workers(50);
    lt_trace_stop(s);
    long again = lt_trace_count(s);
    lt_session_free(s);
    printf("reloaded functions=%d events=%ld\n", lt_count_functions("plugin_*"), again);
    fail |= again != NTHREADS * 50 * 3 * 2;

    /* 5. Churn: one thread loads and unloads libplugin2.so in a loop while
     * another turns tracing of plugin_* on and off and the workers call into
     * libplugin.so. */
    pthread_t churn, toggle;
    pthread_create(&churn, NULL, churn_main, NULL);
    pthread_create(&toggle, NULL, toggle_main, NULL);
    run_workers(2000);
    pthread_join(churn, NULL);
    pthread_join(toggle, NULL);
    use_plugin(NULL);
    dlclose(h);
    int gone = !maps_contain("libplugin.so") && !maps_contain("libplugin2.so");
    printf("churn done gone=%d records=%d\n", gone, lt_count_functions("plugin_*"));
    fail |= !gone;
    return fail;
}

/* ---- nested: a constructor's dlopen inside the program's ---------------- */

static int mode_nested(void)
{
    need_livetrace();
    void *h = load_plugin("libnest.so");
    void *h2 = dlopen("libplugin2.so", RTLD_NOW | RTLD_NOLOAD);
    if (!h2)
        die("libnest.so did not load libplugin2.so");
    transform_fn f = (transform_fn)dlsym(h2, "plugin_transform");
    int n = lt_count_functions("plugin_*");
    lt_session *s = lt_trace_start("graph", "plugin_*");
    if (!s)
        die("lt_trace_start");
    for (int k = 0; k < 10; k++)
        f((uint64_t)k);
    lt_trace_stop(s);
    long events = lt_trace_count(s);
    lt_session_free(s);
    dlclose(h2);
    dlclose(h);
    int gone = !maps_contain("libnest.so") && !maps_contain("libplugin2.so");
    printf("nested functions=%d events=%ld gone=%d\n", n, events, gone);
    return n == 4 && events == 10 * 3 * 2 && gone ? 0 : 1;
}

/* ---- ctorthread: a library that runs its own code from its constructor - */

static int mode_ctorthread(int rounds)
{
    need_livetrace();
    long calls = 0, errors = 0, events = 0;
    for (int r = 0; r < rounds; r++) {
        /* The constructor's thread is calling the library's functions
         * while the dlopen interposer converts their sleds. */
        void *h = load_plugin("libspin.so");
        long (*stop)(void) = (long (*)(void))dlsym(h, "spin_stop");
        volatile long *errs = dlsym(h, "spin_errors");
        if (!stop || !errs)
            die("libspin.so lacks spin_stop/spin_errors");
        lt_session *s = lt_trace_start("function", "plugin_*");
        if (!s)
            die("lt_trace_start");
        usleep(2000);
        lt_trace_stop(s);
        events += lt_trace_count(s);
        lt_session_free(s);
        calls += stop();
        errors += *errs;
        dlclose(h);
    }
    printf("ctorthread rounds=%d calls=%ld errors=%ld events=%ld\n", rounds, calls, errors,
           events);
    return calls > 0 && errors == 0 && events > 0 ? 0 : 1;
}

/* ---- sigtrap: the program's own SIGTRAP handler ------------------------ */

static volatile long traps, raised;

static void on_trap(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)si;
    (void)uc;
    __atomic_fetch_add(&traps, 1, __ATOMIC_RELAXED);
}

static void *trapper_main(void *arg)
{
    long pause_us = (long)arg;
    for (long i = 0; !stop_flag; i++) {
        __asm__ volatile("int3");
        __atomic_fetch_add(&raised, 1, __ATOMIC_RELAXED);
        if (i % 16 == 0)
            work_item((int)i);
        if (pause_us)
            usleep(pause_us);
    }
    return NULL;
}

static int mode_sigtrap(int argc, char **argv)
{
    need_livetrace();
    int rounds = argc > 2 ? atoi(argv[2]) : 40;
    long pause_us = argc > 3 ? atol(argv[3]) : 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_trap;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTRAP, &sa, NULL))
        die("sigaction");
    pthread_t tr, w[NTHREADS];
    struct job jobs[NTHREADS] = {{0}};
    pthread_create(&tr, NULL, trapper_main, (void *)pause_us);
    for (int i = 0; i < NTHREADS; i++)
        pthread_create(&w[i], NULL, worker_main, &jobs[i]);
    /* Each round patches every work_* site twice (on, off) while the
     * workers run through them and the trapper traps. */
    long during = 0;
    for (int r = 0; r < rounds; r++) {
        long t0 = __atomic_load_n(&traps, __ATOMIC_RELAXED);
        lt_session *s = lt_trace_start(r % 2 ? "graph" : "function", "work_*");
        if (!s)
            die("lt_trace_start");
        usleep(2000);
        lt_session_free(s);
        during += __atomic_load_n(&traps, __ATOMIC_RELAXED) > t0;
    }
    stop_flag = 1;
    pthread_join(tr, NULL);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(w[i], NULL);
    printf("traps=%ld raised=%ld rounds=%d rounds_with_traps=%ld\n", traps, raised, rounds,
           during);
    return traps == raised && raised > 0 ? 0 : 1;
}

/* ---- fork ---------------------------------------------------------------- */

static int mode_fork(int argc, char **argv)
{
    need_livetrace();
    const char *prefix = argc > 2 ? argv[2] : NULL;
    use_plugin(load_plugin("libplugin.so"));
    lt_session *s = lt_trace_start("function", "work_*");
    if (!s)
        die("lt_trace_start");
    pthread_t w[NTHREADS];
    struct job jobs[NTHREADS] = {{0}};
    for (int i = 0; i < NTHREADS; i++)
        pthread_create(&w[i], NULL, worker_main, &jobs[i]);
    /* Another thread keeps patching while main forks: a fork in the middle
     * of a batch, or while a thread holds livetrace's locks, would leave the
     * child with a half-patched site or a lock nobody releases. */
    pthread_t toggle;
    toggle_forever = 1;
    pthread_create(&toggle, NULL, toggle_main, NULL);
    usleep(20000);

    int status = -1;
    for (int round = 0; round < 10; round++) {
        pid_t pid = fork();
        if (pid < 0)
            die("fork");
        if (pid == 0) {
            /* The child: one thread, the parent's sites as they were. It
             * works, loads a library, and traces itself; a deadlock ends
             * it by SIGALRM. */
            alarm(20);
            struct job j = {300, 0};
            worker_main(&j);
            void *h = load_plugin("libplugin2.so");
            transform_fn f = (transform_fn)dlsym(h, "plugin_transform");
            lt_session *cs = lt_trace_start("graph", "plugin_*");
            if (!cs) {
                fprintf(stderr, "child: lt_trace_start: %s\n", lt_last_error());
                _exit(3);
            }
            for (int k = 0; k < 10; k++)
                f((uint64_t)k);
            lt_trace_stop(cs);
            long n = lt_trace_count(cs);
            if (prefix && round == 0) {
                char path[4096];
                snprintf(path, sizeof path, "%s.child.txt", prefix);
                lt_trace_write(cs, path, "text");
            }
            lt_session_free(cs);
            dlclose(h);
            /* exit, not _exit: atexit handlers run in the child too. */
            exit(n == 10 * 3 * 2 ? 42 : 4);
        }
        if (waitpid(pid, &status, 0) != pid)
            die("waitpid");
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 42)
            break;
    }
    stop_flag = 1;
    pthread_join(toggle, NULL);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(w[i], NULL);
    lt_trace_stop(s);
    long events = lt_trace_count(s);
    lt_session_free(s);
    /* The children exited normally (atexit handlers ran): the parent's
     * control socket must still be there. */
    const char *dir = getenv("LIVETRACE_SOCKET_DIR");
    int socket_kept = -1;
    if (dir) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%d.sock", dir, (int)getpid());
        socket_kept = access(path, F_OK) == 0;
    }
    printf("child status=%d exited=%d code=%d parent_events=%ld socket_kept=%d\n", status,
           WIFEXITED(status), WIFEXITED(status) ? WEXITSTATUS(status) : -1, events, socket_kept);
    return WIFEXITED(status) && WEXITSTATUS(status) == 42 && events > 0 ? 0 : 1;
}

/* ---- bench ---------------------------------------------------------------- */

/* ns per call of bench_leaf, each call's argument depending on the last
 * result so the calls form one chain (latency, not throughput). */
static double hot_loop(long iters)
{
    volatile unsigned long sink;
    unsigned long acc = 1;
    double t0 = now_ns();
    for (long i = 0; i < iters; i++)
        acc = bench_leaf(acc ^ (unsigned long)i);
    double t1 = now_ns();
    sink = acc;
    (void)sink;
    return (t1 - t0) / (double)iters;
}

static int mode_bench(int argc, char **argv)
{
    long iters = argc > 2 ? atol(argv[2]) : 20000000;
    hot_loop(iters / 10); /* warm up */
    printf("disabled_ns=%.3f\n", hot_loop(iters));
    if (have_livetrace()) {
        lt_session *s = lt_trace_start("function", "bench_leaf");
        if (!s)
            die("lt_trace_start");
        hot_loop(iters / 10);
        printf("enabled_ns=%.3f\n", hot_loop(iters));
        lt_session_free(s);
    }
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *mode = argc > 1 ? argv[1] : "run";
    if (!strcmp(mode, "run"))
        return mode_run(argc, argv);
    if (!strcmp(mode, "trace"))
        return mode_trace(argc, argv);
    if (!strcmp(mode, "ops"))
        return mode_ops();
    if (!strcmp(mode, "dlclose"))
        return mode_dlclose();
    if (!strcmp(mode, "ctorthread"))
        return mode_ctorthread(argc > 2 ? atoi(argv[2]) : 20);
    if (!strcmp(mode, "nested"))
        return mode_nested();
    if (!strcmp(mode, "sigtrap"))
        return mode_sigtrap(argc, argv);
    if (!strcmp(mode, "fork"))
        return mode_fork(argc, argv);
    if (!strcmp(mode, "bench"))
        return mode_bench(argc, argv);
    fprintf(stderr, "usage: worker run|trace|ops|dlclose|nested|sigtrap|fork|bench ...\n");
    return 2;
}
