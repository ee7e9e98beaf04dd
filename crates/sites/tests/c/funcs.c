/* Functions whose entries get compiler-emitted sites (built with
 * -fpatchable-function-entry=5 by the tests, with gcc or clang). */
#define NOINLINE __attribute__((noinline, noclone))

NOINLINE int lt_add(int a, int b) { return a + b; }
NOINLINE int lt_mul(int a, int b) { return a * b; }

static NOINLINE int lt_static_helper(int x)
{
    __asm__ volatile("" ::: "memory");
    return x * 3;
}

int lt_call_static(int x) { return lt_static_helper(x) + 1; }

/* Calls lt_add (through its entry site) until *stop. */
void lt_spin(volatile int *stop, volatile long *iters)
{
    while (!*stop)
        *iters += lt_add(1, 0);
}
