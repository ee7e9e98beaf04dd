/* A static function gcc calls with rsp 8 bytes off the ABI's 16-byte
 * alignment: with -fipa-stack-alignment (on from -O1) a caller skips the
 * realignment before calling a local function it knows needs none. Here
 * `caller` pushes two registers and calls `leaf` without adjusting rsp.
 *
 *   misaligned api          traces `leaf` through the C API: one ops (the
 *                           dedicated trampoline), two (the list caller),
 *                           then the function, graph and profile tracers
 *   misaligned run SECONDS  calls it until its standard input ends, or
 *                           SECONDS have passed (for the livetrace command)
 *
 * Every result is checked; the last line says how many entries of `leaf`
 * were misaligned (the test wants some). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <poll.h>
#include <unistd.h>

#include "livetrace.h"
#pragma weak lt_ops_register
#pragma weak lt_ops_unregister
#pragma weak lt_trace_start
#pragma weak lt_trace_stop
#pragma weak lt_trace_count
#pragma weak lt_session_free
#pragma weak lt_last_error

static volatile long misaligned_entries;

static __attribute__((noinline)) long leaf(long x) {
    uintptr_t sp;
    __asm__ volatile("mov %%rsp, %0" : "=r"(sp));
    if ((sp & 15) == 0)
        misaligned_entries++;
    return x * 3 + 1;
}

__attribute__((noinline)) long caller(long n) {
    long s = 0;
    for (long i = n; i > 0; i--)
        s += leaf(i);
    return s;
}

static long expect(long n) { return 3 * (n * (n + 1) / 2) + n; }

/* 1000 rounds call leaf 13500 times. */
static int work(long rounds) {
    for (long r = 0; r < rounds; r++) {
        long n = 10 + (r & 7);
        if (caller(n) != expect(n)) {
            fprintf(stderr, "caller(%ld) returned a wrong result\n", n);
            return 1;
        }
    }
    return 0;
}

static long calls;
static void count(uintptr_t ip, uintptr_t parent, void *data) {
    (void)ip, (void)parent, (void)data;
    calls++;
}

static int fail(const char *what) {
    fprintf(stderr, "%s: %s\n", what, lt_last_error ? lt_last_error() : "no livetrace");
    return 2;
}

int main(int argc, char **argv) {
    if (argc > 2 && !strcmp(argv[1], "run")) {
        printf("ready pid=%d\n", (int)getpid());
        fflush(stdout);
        time_t end = time(NULL) + atoi(argv[2]);
        while (time(NULL) < end) {
            if (work(10000))
                return 1;
            struct pollfd in = {0, POLLIN, 0};
            char c;
            if (poll(&in, 1, 0) > 0 && read(0, &c, 1) <= 0)
                break;
        }
    } else if (argc > 1 && !strcmp(argv[1], "api")) {
        if (!lt_ops_register)
            return fail("liblivetrace.so is not loaded");
        lt_ops *a = lt_ops_register("leaf", count, NULL);
        if (!a)
            return fail("lt_ops_register");
        if (work(1000))
            return 1;
        printf("dedicated=%ld\n", calls);
        lt_ops *b = lt_ops_register("leaf", count, NULL);
        if (!b)
            return fail("lt_ops_register");
        if (work(1000))
            return 1;
        printf("list=%ld\n", calls);
        lt_ops_unregister(a);
        lt_ops_unregister(b);
        const char *tracers[] = {"function", "graph", "profile"};
        for (int t = 0; t < 3; t++) {
            lt_session *s = lt_trace_start(tracers[t], "leaf");
            if (!s)
                return fail("lt_trace_start");
            if (work(1000))
                return 1;
            lt_trace_stop(s);
            printf("%s=%ld\n", tracers[t], lt_trace_count(s));
            lt_session_free(s);
        }
    } else {
        return work(1000);
    }
    printf("misaligned=%ld\n", misaligned_entries);
    return 0;
}
