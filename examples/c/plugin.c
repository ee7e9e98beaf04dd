/*
 * A plugin the worker example loads with dlopen (by bare name, found through
 * the executable's RUNPATH $ORIGIN) and calls through dlsym, so that
 * livetrace has to pick up its sites at dlopen time.
 */
#include <stdint.h>

#if defined(__clang__)
#define NOINLINE __attribute__((noinline))
#else
#define NOINLINE __attribute__((noinline, noipa))
#endif

/* Counts calls made on any thread, so tests can compare with the trace. */
volatile long plugin_calls;

NOINLINE uint64_t plugin_helper(uint64_t x)
{
    return (x ^ (x >> 7)) * 0x9e3779b97f4a7c15ull;
}

NOINLINE uint64_t plugin_transform(uint64_t x)
{
    __atomic_fetch_add(&plugin_calls, 1, __ATOMIC_RELAXED);
    return plugin_helper(x + 1) ^ plugin_helper(x >> 3);
}

#ifdef PLUGIN_NEST
/* libnest.so: the same plugin, whose constructor loads libplugin2.so, so
 * that livetrace sees a dlopen nested in another. */
#include <dlfcn.h>

static void *nested;

__attribute__((constructor)) static void nest_init(void)
{
    nested = dlopen("libplugin2.so", RTLD_NOW | RTLD_LOCAL);
}

__attribute__((destructor)) static void nest_fini(void)
{
    if (nested)
        dlclose(nested);
}
#endif

#ifdef PLUGIN_SPIN
/* libspin.so: the same plugin, whose constructor starts a thread that calls
 * the library's own functions in a loop, so that livetrace converts the
 * library's sleds while a thread of it runs through them (it must stop the
 * world to do so safely). spin_stop() ends the thread and returns the
 * calls it made; spin_errors counts results that were wrong. */
#include <pthread.h>

volatile long spin_errors;
static volatile int spin_stop_flag;
static volatile long spin_calls;
static pthread_t spin_thread;

static uint64_t expected(uint64_t x)
{
    uint64_t a = x + 1, b = x >> 3;
    return ((a ^ (a >> 7)) * 0x9e3779b97f4a7c15ull) ^ ((b ^ (b >> 7)) * 0x9e3779b97f4a7c15ull);
}

static void *spin_main(void *arg)
{
    (void)arg;
    for (uint64_t x = 0; !spin_stop_flag; x++) {
        if (plugin_transform(x) != expected(x))
            __atomic_fetch_add(&spin_errors, 1, __ATOMIC_RELAXED);
        spin_calls++;
    }
    return NULL;
}

__attribute__((constructor)) static void spin_init(void)
{
    pthread_create(&spin_thread, NULL, spin_main, NULL);
    /* Let it get going before dlopen returns (and livetrace converts). */
    while (spin_calls < 1000)
        ;
}

long spin_stop(void)
{
    spin_stop_flag = 1;
    pthread_join(spin_thread, NULL);
    return spin_calls;
}
#endif
