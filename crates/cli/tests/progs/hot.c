/* hot: THREADS threads call hot_a -> hot_b -> hot_c (twice) in a loop, for
 * SECONDS or ITERATIONS rounds per thread; with WORK > 0 each hot_c also
 * spins WORK steps (a slower program, fewer calls per second).
 *
 *   hot SECONDS THREADS WORK [ITERATIONS]
 *
 * Prints one line: HOT calls=<hot_a calls, all threads> seconds=<run time>
 * rate=<hot_a calls per second>. Built with -fpatchable-function-entry=5
 * for livetrace, -pg for uftrace: the datapath benchmark's program and the
 * recording tests'. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static volatile unsigned long sink;
static unsigned long work;
static double seconds;
static unsigned long iterations;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) void hot_c(unsigned long x) {
    for (unsigned long i = 0; i < work; i++)
        sink += i;
    sink += x;
}

/* The stores after the calls keep them calls, not tail jumps: a 3-level
 * tree, each function returning to its caller. */
__attribute__((noinline)) void hot_b(unsigned long x) {
    hot_c(x);
    hot_c(x + 1);
    sink += 1;
}

__attribute__((noinline)) void hot_a(unsigned long x) {
    hot_b(x);
    sink += 2;
}

static void *worker(void *arg) {
    unsigned long *calls = arg;
    double end = now() + seconds;
    unsigned long n = 0;
    for (;;) {
        if (iterations) {
            if (n == iterations)
                break;
        } else if ((n & 1023) == 0 && now() >= end) {
            break;
        }
        hot_a(n);
        n++;
    }
    *calls = n;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: hot SECONDS THREADS WORK [ITERATIONS]\n");
        return 2;
    }
    seconds = atof(argv[1]);
    int threads = atoi(argv[2]);
    work = strtoul(argv[3], NULL, 10);
    iterations = argc > 4 ? strtoul(argv[4], NULL, 10) : 0;
    if (threads < 1 || threads > 64)
        return 2;
    pthread_t t[64];
    unsigned long calls[64] = {0};
    double start = now();
    for (int i = 0; i < threads; i++)
        pthread_create(&t[i], NULL, worker, &calls[i]);
    unsigned long total = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(t[i], NULL);
        total += calls[i];
    }
    double took = now() - start;
    printf("HOT calls=%lu seconds=%.6f rate=%.1f\n", total, took, total / took);
    return 0;
}
