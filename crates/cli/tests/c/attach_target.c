/* A program started without livetrace, to attach to: three busy threads
 * calling traced functions and checking every result against an untraced
 * copy (and their own register state), a thread creating short-lived
 * threads, two threads blocked in poll (without and with a timeout), a
 * thread that can be made to wait inside a traced function, a thread that
 * blocks every signal (the classic sigwait thread) and calls a traced
 * function between waits, and a main thread reading commands on stdin:
 *
 *   status        progress=A,B,C calls=N bad=N eintr=N errors=N timeouts=N churned=N
 *                 sigwaiter=TID sigwaited=N
 *   poke          wake both poll threads: woken0=N woken1=N
 *   enter         make the waiter call work_wait (it blocks inside)
 *   release       let work_wait return: waited=N result_ok=0|1
 *   block MS      a thread blocks SIGTRAP and every real-time signal with a
 *                 raw system call for MS milliseconds (livetrace cannot
 *                 patch meanwhile): blocking tid=N
 *   quit
 *
 * With the argument "fast", the churn thread creates threads without
 * pausing (a clone event at nearly every stop of the process).
 *
 * Built with -fpatchable-function-entry=5 (gcc: five one-byte NOPs).
 * The busy threads call the traced functions all the time, and sleep
 * 100 us every 8192 rounds so that several such programs can share the
 * test machine.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define NOSITE __attribute__((patchable_function_entry(0, 0), noinline))

__attribute__((noinline)) uint64_t work_hash(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return x;
}
__attribute__((noinline)) uint64_t work_parse(uint64_t x) { return work_hash(x + 1) ^ work_hash(x * 3); }
__attribute__((noinline)) uint64_t work_item(uint64_t x) { return work_parse(x) + work_hash(x); }

/* The same computation, with no sites: what the traced calls must match. */
NOSITE static uint64_t ref_hash(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return x;
}
NOSITE static uint64_t ref_item(uint64_t x) {
    return (ref_hash(x + 1) ^ ref_hash(x * 3)) + ref_hash(x);
}

static _Atomic uint64_t progress[3], calls, bad, churned;
static _Atomic int poll_eintr, poll_err, poll_zero, woken[2], ready_pollers;
static int pipes[2][2];

NOSITE static void *busy(void *arg) {
    int id = (int)(intptr_t)arg;
    uint64_t i = 0;
    double acc = 1.0;
    for (;;) {
        i++;
        uint64_t x = i * 2654435761u + (uint64_t)id;
        if (work_item(x) != ref_item(x))
            atomic_fetch_add(&bad, 1);
        acc += 1.0;
        if ((i & 1023) == 0) {
            if (acc != (double)i + 1.0)
                atomic_fetch_add(&bad, 1);
            atomic_store(&progress[id], i);
            atomic_fetch_add(&calls, 1024);
        }
        /* Busy, but not every cycle of a shared machine: the tests run
         * several of these programs at once. */
        if ((i & 8191) == 0)
            usleep(100);
    }
    return NULL;
}

NOSITE static void *short_lived(void *arg) {
    uint64_t x = (uint64_t)(intptr_t)arg;
    if (work_item(x) != ref_item(x))
        atomic_fetch_add(&bad, 1);
    return NULL;
}

static int fast_churn;

NOSITE static void *churn(void *arg) {
    (void)arg;
    for (uint64_t n = 1;; n++) {
        pthread_t t;
        if (pthread_create(&t, NULL, short_lived, (void *)(intptr_t)n) == 0) {
            pthread_join(t, NULL);
            atomic_fetch_add(&churned, 1);
        }
        if (!fast_churn)
            usleep(2000);
    }
    return NULL;
}

NOSITE static void *poller(void *arg) {
    int id = (int)(intptr_t)arg;
    atomic_fetch_add(&ready_pollers, 1);
    for (;;) {
        struct pollfd p = {.fd = pipes[id][0], .events = POLLIN};
        int rc = poll(&p, 1, id == 0 ? -1 : 3600 * 1000);
        if (rc < 0 && errno == EINTR) {
            atomic_fetch_add(&poll_eintr, 1);
            continue;
        }
        if (rc < 0) {
            atomic_fetch_add(&poll_err, 1);
            continue;
        }
        if (rc == 0) {
            atomic_fetch_add(&poll_zero, 1);
            continue;
        }
        char c;
        if (read(pipes[id][0], &c, 1) == 1 && (p.revents & POLLIN))
            atomic_fetch_add(&woken[id], 1);
    }
    return NULL;
}

/* The waiter: enters work_wait on request, which blocks until released. */
static int wait_pipe[2], enter_pipe[2];
static _Atomic int waited, wait_ok, in_wait;

__attribute__((noinline)) uint64_t work_wait(uint64_t x) {
    atomic_store(&in_wait, 1);
    char c;
    while (read(wait_pipe[0], &c, 1) != 1)
        ;
    atomic_store(&in_wait, 0);
    return work_hash(x) + 1;
}

NOSITE static void *waiter(void *arg) {
    (void)arg;
    for (;;) {
        char c;
        if (read(enter_pipe[0], &c, 1) != 1)
            continue;
        uint64_t r = work_wait(42);
        atomic_store(&wait_ok, r == ref_hash(42) + 1);
        atomic_fetch_add(&waited, 1);
    }
    return NULL;
}

/* Blocks every signal, as a server's signal-handling thread does, before
 * livetrace is loaded: livetrace must give it SIGTRAP back or its first
 * trap would kill the process (and its batches refuse to run meanwhile).
 * sigtimedwait fails with EINTR whenever ptrace stops the thread (the
 * kernel does not restart it): counted as a round like a timeout. */
static _Atomic int sigwaiter_tid;
static _Atomic uint64_t sigwaited;

NOSITE static void *sigwaiter(void *arg) {
    (void)arg;
    sigset_t all, usr1;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    atomic_store(&sigwaiter_tid, (int)syscall(SYS_gettid));
    for (uint64_t i = 1;; i++) {
        struct timespec ts = {0, 1000000};
        siginfo_t si;
        sigtimedwait(&usr1, &si, &ts);
        if (work_item(i) != ref_item(i))
            atomic_fetch_add(&bad, 1);
        atomic_fetch_add(&sigwaited, 1);
    }
    return NULL;
}

/* Blocks SIGTRAP and every real-time signal (livetrace's world signal is
 * one) behind the C library's back for a while: batches are refused
 * meanwhile. */
static _Atomic int blocker_tid;

NOSITE static void *blocker(void *arg) {
    uint64_t ms = (uint64_t)(intptr_t)arg;
    uint64_t mask = 1ull << (SIGTRAP - 1), none = 0;
    for (int s = 34; s <= 64; s++)
        mask |= 1ull << (s - 1);
    syscall(SYS_rt_sigprocmask, SIG_BLOCK, &mask, NULL, 8);
    atomic_store(&blocker_tid, (int)syscall(SYS_gettid));
    usleep(ms * 1000);
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, 8);
    return NULL;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    fast_churn = argc > 1 && !strcmp(argv[1], "fast");
    pthread_t t;
    if (pipe(pipes[0]) || pipe(pipes[1]) || pipe(wait_pipe) || pipe(enter_pipe))
        return 1;
    for (int i = 0; i < 2; i++)
        pthread_create(&t, NULL, poller, (void *)(intptr_t)i);
    for (int i = 0; i < 3; i++)
        pthread_create(&t, NULL, busy, (void *)(intptr_t)i);
    pthread_create(&t, NULL, churn, NULL);
    pthread_create(&t, NULL, waiter, NULL);
    pthread_create(&t, NULL, sigwaiter, NULL);
    while (atomic_load(&ready_pollers) < 2 || !atomic_load(&sigwaiter_tid))
        usleep(1000);
    usleep(20000);
    printf("ready pid=%d\n", getpid());
    char line[128];
    while (fgets(line, sizeof line, stdin)) {
        if (!strncmp(line, "status", 6)) {
            printf("progress=%llu,%llu,%llu calls=%llu bad=%llu eintr=%d errors=%d timeouts=%d "
                   "churned=%llu sigwaiter=%d sigwaited=%llu\n",
                   (unsigned long long)progress[0], (unsigned long long)progress[1],
                   (unsigned long long)progress[2], (unsigned long long)calls,
                   (unsigned long long)bad, poll_eintr, poll_err, poll_zero,
                   (unsigned long long)churned, (int)sigwaiter_tid,
                   (unsigned long long)sigwaited);
        } else if (!strncmp(line, "poke", 4)) {
            int b0 = woken[0], b1 = woken[1];
            if (write(pipes[0][1], "x", 1) != 1 || write(pipes[1][1], "x", 1) != 1)
                return 1;
            for (int i = 0; i < 5000 && (woken[0] == b0 || woken[1] == b1); i++)
                usleep(1000);
            printf("woken0=%d woken1=%d\n", woken[0] - b0, woken[1] - b1);
        } else if (!strncmp(line, "enter", 5)) {
            if (write(enter_pipe[1], "x", 1) != 1)
                return 1;
            for (int i = 0; i < 5000 && !in_wait; i++)
                usleep(1000);
            printf("in_wait=%d\n", (int)in_wait);
        } else if (!strncmp(line, "release", 7)) {
            int before = waited;
            if (write(wait_pipe[1], "x", 1) != 1)
                return 1;
            for (int i = 0; i < 5000 && waited == before; i++)
                usleep(1000);
            printf("waited=%d result_ok=%d\n", (int)waited, (int)wait_ok);
        } else if (!strncmp(line, "block ", 6)) {
            atomic_store(&blocker_tid, 0);
            pthread_create(&t, NULL, blocker, (void *)(intptr_t)atoi(line + 6));
            pthread_detach(t);
            while (!atomic_load(&blocker_tid))
                usleep(1000);
            printf("blocking tid=%d\n", (int)blocker_tid);
        } else if (!strncmp(line, "quit", 4)) {
            return 0;
        }
    }
    return 0;
}
