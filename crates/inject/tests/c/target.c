/* A program that never heard of injection: three busy threads checking
 * their own register state, two threads blocked in poll (one without and
 * one with a timeout), a thread creating threads all along, and a main
 * thread reading commands on stdin.
 *
 * "spawn" starts a thread that creates and joins threads as fast as it
 * can (it spends most of its time inside clone3: ptrace's clone event
 * stops it there) and prints its id; "spawned" prints how many threads it
 * created, how many times the count of threads that ran was not one
 * per thread created, and how many creations failed.
 *
 * Commands: "poke" wakes both poll threads (a byte on their pipe),
 * "status" prints counters, "quit" exits. Every line printed is one
 * `key=value ...` record. */
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
#include <unistd.h>

static _Atomic uint64_t progress[3];
static _Atomic int corrupt;
static _Atomic int poll_tid[2];
static _Atomic int poll_eintr, poll_other_err, poll_zero;
static _Atomic int poll_woken[2];
static int pipes[2][2];
static _Atomic int busy_tid[3];
static _Atomic long churned;

static void *nothing(void *arg) { return arg; }

/* Creates and joins a thread every millisecond: clone events all along. */
static void *churn(void *arg) {
    for (;;) {
        pthread_t t;
        if (pthread_create(&t, NULL, nothing, NULL) == 0) {
            pthread_join(t, NULL);
            atomic_fetch_add(&churned, 1);
        }
        usleep(1000);
    }
    return arg;
}
static _Atomic long signals_seen;

static _Atomic long spawned, spawned_ran, spawn_failed, spawn_dup;
static _Atomic int spawner_tid;

static void *spawned_thread(void *arg) {
    atomic_fetch_add(&spawned_ran, 1);
    return arg;
}

/* No pause: a clone event at nearly every interrupt. A clone3 that
 * created its thread but returned an error to glibc (a call injected at
 * the clone event, with the registers put back as they were inside the
 * system call) makes glibc create the thread a second time on the same
 * stack: a thread that runs twice, a failure, or a crash. */
static void *spawner(void *arg) {
    atomic_store(&spawner_tid, (int)syscall(SYS_gettid));
    for (;;) {
        pthread_t t;
        int rc = pthread_create(&t, NULL, spawned_thread, NULL);
        if (rc == 0) {
            pthread_join(t, NULL);
            /* Every earlier thread was joined: exactly one run each. */
            long n = atomic_fetch_add(&spawned, 1) + 1;
            if (atomic_load(&spawned_ran) != n) {
                atomic_fetch_add(&spawn_dup, 1);
                atomic_store(&spawned_ran, n);
            }
        } else {
            atomic_fetch_add(&spawn_failed, 1);
        }
    }
    return arg;
}

static void on_signal(int sig) {
    (void)sig;
    atomic_fetch_add(&signals_seen, 1);
}

/* Integer and floating-point state live in registers across iterations;
 * an injected call that did not restore them exactly shows up here. */
static void *busy(void *arg) {
    int id = (int)(intptr_t)arg;
    atomic_store(&busy_tid[id], (int)syscall(SYS_gettid));
    uint64_t i = 0, s = 0;
    double x = 1.0, y = 0.5;
    for (;;) {
        i++;
        s += i;
        x += 1.0;
        y = y * 0.5 + 0.25;
        if ((i & 0xffff) == 0) {
            if (s != i * (i + 1) / 2 || x != (double)i + 1.0 || y != 0.5)
                atomic_fetch_add(&corrupt, 1);
            atomic_store(&progress[id], i);
            /* Not every cycle of a shared machine. */
            usleep(200);
        }
    }
    return NULL;
}

static void *poller(void *arg) {
    int id = (int)(intptr_t)arg;
    atomic_store(&poll_tid[id], (int)syscall(SYS_gettid));
    for (;;) {
        struct pollfd p = {.fd = pipes[id][0], .events = POLLIN};
        /* Thread 0 waits forever (-ERESTARTNOHAND when interrupted),
         * thread 1 with a timeout (-ERESTART_RESTARTBLOCK). */
        int rc = poll(&p, 1, id == 0 ? -1 : 600000);
        if (rc < 0 && errno == EINTR) {
            atomic_fetch_add(&poll_eintr, 1);
            continue;
        }
        if (rc < 0) {
            atomic_fetch_add(&poll_other_err, 1);
            continue;
        }
        if (rc == 0) {
            atomic_fetch_add(&poll_zero, 1);
            continue;
        }
        char c;
        if (read(pipes[id][0], &c, 1) == 1 && (p.revents & POLLIN))
            atomic_fetch_add(&poll_woken[id], 1);
    }
    return NULL;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGRTMIN + 1, &sa, NULL);
    pthread_t t;
    for (int i = 0; i < 2; i++) {
        if (pipe(pipes[i]) != 0)
            return 1;
        pthread_create(&t, NULL, poller, (void *)(intptr_t)i);
    }
    for (int i = 0; i < 3; i++)
        pthread_create(&t, NULL, busy, (void *)(intptr_t)i);
    pthread_create(&t, NULL, churn, NULL);
    while (!atomic_load(&poll_tid[0]) || !atomic_load(&poll_tid[1]) || !atomic_load(&busy_tid[0]))
        usleep(1000);
    usleep(20000); /* let them block */
    printf("ready pid=%d poll0=%d poll1=%d busy0=%d\n", getpid(), atomic_load(&poll_tid[0]),
           atomic_load(&poll_tid[1]), atomic_load(&busy_tid[0]));
    char line[128];
    while (fgets(line, sizeof line, stdin)) {
        if (!strncmp(line, "poke", 4)) {
            int before0 = atomic_load(&poll_woken[0]), before1 = atomic_load(&poll_woken[1]);
            if (write(pipes[0][1], "x", 1) != 1 || write(pipes[1][1], "x", 1) != 1)
                return 1;
            for (int i = 0; i < 5000; i++) {
                if (atomic_load(&poll_woken[0]) > before0 && atomic_load(&poll_woken[1]) > before1)
                    break;
                usleep(1000);
            }
            printf("woken0=%d woken1=%d\n", atomic_load(&poll_woken[0]), atomic_load(&poll_woken[1]));
        } else if (!strncmp(line, "status", 6)) {
            printf("progress=%llu,%llu,%llu corrupt=%d eintr=%d errors=%d timeouts=%d\n",
                   (unsigned long long)atomic_load(&progress[0]),
                   (unsigned long long)atomic_load(&progress[1]),
                   (unsigned long long)atomic_load(&progress[2]), atomic_load(&corrupt),
                   atomic_load(&poll_eintr), atomic_load(&poll_other_err), atomic_load(&poll_zero));
        } else if (!strncmp(line, "signals", 7)) {
            printf("signals=%ld churned=%ld\n", atomic_load(&signals_seen), atomic_load(&churned));
        } else if (!strncmp(line, "spawned", 7)) {
            printf("spawned=%ld miscounted=%ld failed=%ld\n", atomic_load(&spawned),
                   atomic_load(&spawn_dup), atomic_load(&spawn_failed));
        } else if (!strncmp(line, "spawn", 5)) {
            if (!atomic_load(&spawner_tid)) {
                pthread_create(&t, NULL, spawner, NULL);
                while (!atomic_load(&spawner_tid))
                    usleep(1000);
            }
            printf("spawner=%d\n", atomic_load(&spawner_tid));
        } else if (!strncmp(line, "quit", 4)) {
            return 0;
        }
    }
    return 0;
}
