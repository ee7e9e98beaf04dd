// What real programs do to the stack, under the graph tracer: traced
// functions (rt_*) with C++ destructors, in threads that pthread_exit or
// are cancelled, frames skipped by longjmp followed by a backtrace and an
// exception, and coroutines switched with swapcontext (one of which
// throws). The program traces itself through the C API.
//
//   runtimes MODE [ROUNDS]     MODE: exit, cancel, longjmp, coro
//
// Prints `ok events=N` after checking every result, or a reason and exits
// non-zero.
#include <execinfo.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <stdexcept>

#include "livetrace.h"
#pragma weak lt_trace_start
#pragma weak lt_trace_stop
#pragma weak lt_trace_count
#pragma weak lt_session_free
#pragma weak lt_last_error

#define TRACED extern "C" __attribute__((noinline))

static std::atomic<long> destroyed;
struct Guard {
    volatile long v;
    explicit Guard(long x) : v(x) {}
    ~Guard() { destroyed++; }
};

static int fail(const char *what) {
    fprintf(stderr, "runtimes: %s\n", what);
    return 1;
}

// ---- pthread_exit and pthread_cancel above traced frames ----

TRACED long rt_exit3(long n) {
    Guard g(n);
    if (n >= 0)
        pthread_exit(nullptr);
    return g.v;
}
TRACED long rt_exit2(long n) {
    Guard g(n);
    return rt_exit3(n + 1) + g.v;
}
TRACED long rt_exit1(long n) {
    Guard g(n);
    return rt_exit2(n + 1) + g.v;
}
static void *exit_thread(void *) {
    Guard g(0);
    rt_exit1(1);
    return nullptr;
}

static int cancel_pipe[2];
TRACED long rt_cancel3(long n) {
    Guard g(n);
    char c;
    // A cancellation point that blocks until the thread is cancelled.
    while (read(cancel_pipe[0], &c, 1) != 0) {
    }
    return g.v;
}
TRACED long rt_cancel2(long n) {
    Guard g(n);
    return rt_cancel3(n + 1) + g.v;
}
TRACED long rt_cancel1(long n) {
    Guard g(n);
    return rt_cancel2(n + 1) + g.v;
}
static std::atomic<int> cancel_ready;
static void *cancel_thread(void *) {
    Guard g(0);
    cancel_ready = 1;
    rt_cancel1(1);
    return nullptr;
}

static int threads(int cancel, int rounds) {
    if (pipe(cancel_pipe))
        return fail("pipe");
    for (int r = 0; r < rounds; r++) {
        destroyed = 0;
        cancel_ready = 0;
        pthread_t t;
        if (pthread_create(&t, nullptr, cancel ? cancel_thread : exit_thread, nullptr))
            return fail("pthread_create");
        if (cancel) {
            while (!cancel_ready)
                usleep(100);
            usleep(1000);
            pthread_cancel(t);
        }
        void *res;
        pthread_join(t, &res);
        if (cancel && res != PTHREAD_CANCELED)
            return fail("the thread was not cancelled");
        // Three traced frames and the thread function's own guard.
        if (destroyed != 4) {
            fprintf(stderr, "round %d: %ld destructors ran, not 4\n", r, destroyed.load());
            return 1;
        }
    }
    return 0;
}

// ---- longjmp out of traced frames, then a backtrace and an exception ----

static jmp_buf jump;
TRACED long rt_jump3(long n) {
    if (n > 2)
        longjmp(jump, 1);
    return n;
}
TRACED long rt_jump2(long n) { return rt_jump3(n + 1) + 1; }
TRACED long rt_jump1(long n) { return rt_jump2(n + 1) + 1; }

static int saw_caller;
extern "C" long rt_bt_mid(long), rt_bt_top(long);
TRACED long rt_bt_leaf(long n) {
    void *frames[64];
    int got = backtrace(frames, 64);
    // The callers, not the hook: rt_bt_mid's and rt_bt_top's code must be
    // in the trace (each function is less than 512 bytes).
    int mid = 0, top = 0;
    for (int i = 0; i < got; i++) {
        uintptr_t a = (uintptr_t)frames[i];
        mid |= a > (uintptr_t)rt_bt_mid && a < (uintptr_t)rt_bt_mid + 512;
        top |= a > (uintptr_t)rt_bt_top && a < (uintptr_t)rt_bt_top + 512;
    }
    saw_caller = mid && top;
    Guard g(n);
    if (n % 2)
        throw std::runtime_error("odd");
    return n;
}
TRACED long rt_bt_mid(long n) {
    Guard g(n);
    return rt_bt_leaf(n) + 1;
}
TRACED long rt_bt_top(long n) {
    Guard g(n);
    return rt_bt_mid(n) + 1;
}

static int jumps(int rounds) {
    for (int r = 0; r < rounds; r++) {
        if (setjmp(jump) == 0) {
            rt_jump1(1);
            return fail("longjmp did not jump");
        }
        destroyed = 0;
        saw_caller = 0;
        try {
            long v = rt_bt_top(r);
            if (r % 2 || v != r + 2)
                return fail("rt_bt_top returned a wrong value");
        } catch (const std::runtime_error &) {
            if (!(r % 2))
                return fail("an exception where there was none");
        }
        if (destroyed != 3)
            return fail("not every destructor ran");
        if (!saw_caller)
            return fail("the backtrace did not see the callers");
    }
    return 0;
}

// ---- coroutines: swapcontext between several, one throws ----

enum { COROS = 4, STACK = 64 * 1024 };
static ucontext_t sched_ctx, coro_ctx[COROS];
static int coro_done[COROS];
static long coro_sum[COROS];
static int current;

TRACED void rt_yield(void) { swapcontext(&coro_ctx[current], &sched_ctx); }
TRACED long rt_co_leaf(long n) {
    rt_yield();
    Guard g(n);
    if (current == 2 && n == 3)
        throw std::runtime_error("coroutine 2 throws");
    return n * 3;
}
TRACED long rt_co_mid(long n) {
    long s = 0;
    for (long i = 0; i < n; i++) {
        s += rt_co_leaf(i);
        rt_yield();
    }
    return s;
}
static void coro_main(int i) {
    long s = 0;
    for (long k = 1; k <= 5; k++) {
        try {
            s += rt_co_mid(k);
        } catch (const std::runtime_error &) {
            s += 1000;
        }
    }
    coro_sum[i] = s;
    coro_done[i] = 1;
    swapcontext(&coro_ctx[i], &sched_ctx);
}
TRACED int rt_schedule(void) {
    int live = COROS;
    while (live) {
        live = 0;
        for (int i = 0; i < COROS; i++) {
            if (coro_done[i])
                continue;
            current = i;
            swapcontext(&sched_ctx, &coro_ctx[i]);
            live += !coro_done[i];
        }
    }
    return 0;
}

static long coro_expect(int i) {
    long s = 0;
    for (long k = 1; k <= 5; k++) {
        long m = 0;
        int threw = 0;
        for (long n = 0; n < k; n++) {
            if (i == 2 && n == 3) {
                threw = 1;
                break;
            }
            m += n * 3;
        }
        s += threw ? 1000 : m;
    }
    return s;
}

static int coros(int rounds) {
    static char stacks[COROS][STACK] __attribute__((aligned(16)));
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < COROS; i++) {
            coro_done[i] = 0;
            getcontext(&coro_ctx[i]);
            coro_ctx[i].uc_stack.ss_sp = stacks[i];
            coro_ctx[i].uc_stack.ss_size = STACK;
            coro_ctx[i].uc_link = &sched_ctx;
            makecontext(&coro_ctx[i], (void (*)())coro_main, 1, i);
        }
        rt_schedule();
        for (int i = 0; i < COROS; i++)
            if (coro_sum[i] != coro_expect(i)) {
                fprintf(stderr, "coroutine %d: %ld, not %ld\n", i, coro_sum[i], coro_expect(i));
                return 1;
            }
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    int rounds = argc > 2 ? atoi(argv[2]) : 20;
    if (!lt_trace_start)
        return fail("liblivetrace.so is not loaded");
    lt_session *s = lt_trace_start("graph", "rt_*");
    if (!s)
        return fail(lt_last_error());
    int bad;
    if (!strcmp(mode, "exit"))
        bad = threads(0, rounds);
    else if (!strcmp(mode, "cancel"))
        bad = threads(1, rounds);
    else if (!strcmp(mode, "longjmp"))
        bad = jumps(rounds);
    else if (!strcmp(mode, "coro"))
        bad = coros(rounds);
    else
        return fail("unknown mode");
    if (bad)
        return bad;
    lt_trace_stop(s);
    long events = lt_trace_count(s);
    lt_session_free(s);
    printf("ok events=%ld\n", events);
    return 0;
}
