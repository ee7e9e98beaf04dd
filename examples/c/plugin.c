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
