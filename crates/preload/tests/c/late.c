/* liblivetrace.so loaded late with dlopen into a running multithreaded
 * program, without ptrace: its constructor must stay inert, it starts when
 * asked (livetrace_attach_start), traces through its C API, tears down
 * (livetrace_detach_start), and dlclose must unmap it even though a
 * program thread recorded events (and so registered thread-local
 * destructors) and keeps running. Prints key=value lines; exit 0 when
 * every step worked.
 *
 * Usage: late LIB
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NOSITE __attribute__((patchable_function_entry(0, 0), noinline))

__attribute__((noinline)) uint64_t work_leaf(uint64_t x) { return x * 2654435761u + 1; }

static _Atomic int stop;
static _Atomic uint64_t rounds, sink;

NOSITE static void *busy(void *arg) {
    uint64_t x = 1;
    while (!atomic_load(&stop)) {
        x = work_leaf(x);
        atomic_store(&sink, x);
        if ((atomic_fetch_add(&rounds, 1) & 4095) == 0)
            usleep(100);
    }
    return arg;
}

NOSITE static int mapped(void) {
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    int n = 0;
    while (fgets(line, sizeof line, f))
        if (strstr(line, "liblivetrace"))
            n++;
    fclose(f);
    return n;
}

NOSITE static int wait_state(volatile unsigned *state, unsigned want) {
    for (int i = 0; i < 60000; i++) {
        if (*state == want)
            return 1;
        if (*state == 100)
            return 0;
        usleep(1000);
    }
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2)
        return 2;
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, busy, NULL);
    usleep(20000);
    void *h = dlopen(argv[1], RTLD_NOW);
    if (!h) {
        printf("dlopen_error=%s\n", dlerror());
        return 1;
    }
    volatile unsigned *state = dlsym(h, "livetrace_attach_state");
    const char *message = dlsym(h, "livetrace_attach_message");
    long (*start)(uint64_t) = (long (*)(uint64_t))dlsym(h, "livetrace_attach_start");
    long (*detach)(void) = (long (*)(void))dlsym(h, "livetrace_detach_start");
    void *(*trace_start)(const char *, const char *) =
        (void *(*)(const char *, const char *))dlsym(h, "lt_trace_start");
    int (*trace_stop)(void *) = (int (*)(void *))dlsym(h, "lt_trace_stop");
    long (*trace_count)(void *) = (long (*)(void *))dlsym(h, "lt_trace_count");
    void (*session_free)(void *) = (void (*)(void *))dlsym(h, "lt_session_free");
    const char *(*last_error)(void) = (const char *(*)(void))dlsym(h, "lt_last_error");
    if (!state || !start || !detach || !trace_start || !trace_stop || !trace_count || !session_free)
        return 3;
    /* Loaded late: the constructor did nothing. */
    printf("state_after_dlopen=%u\n", *state);
    /* Started without an injector: it converts by stopping the world. */
    if (start(0) != 0 || !wait_state(state, 4)) {
        printf("start_failed=%s\n", message);
        return 1;
    }
    printf("serving=%s\n", message);
    void *s = trace_start("function", "work_leaf");
    if (!s) {
        printf("trace_error=%s\n", last_error ? last_error() : "?");
        return 1;
    }
    usleep(200000);
    if (trace_stop(s) != 0)
        return 1;
    printf("events=%ld\n", trace_count(s));
    session_free(s);
    if (detach() != 0 || !wait_state(state, 6)) {
        printf("detach_failed=%s\n", message);
        return 1;
    }
    /* livetrace's own threads are on their way out. */
    usleep(300000);
    printf("mapped_before_dlclose=%d\n", mapped());
    if (dlclose(h) != 0)
        return 1;
    printf("mapped_after_dlclose=%d\n", mapped());
    /* The threads that recorded events exit after the library is gone. */
    atomic_store(&stop, 1);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    printf("threads_exited=1\n");
    return 0;
}
