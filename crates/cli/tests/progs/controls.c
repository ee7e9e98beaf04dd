/* controls: calls with known durations and nesting, for the volume
 * controls' exact expectations.
 *
 *   main: fast x5, begin, outer x3, end, fast x4
 *   outer: fast, slow, fast          (slow sleeps 2 ms; fast does nothing)
 */
#include <time.h>

static volatile unsigned long sink;

__attribute__((noinline)) void fast(void) { sink++; }

__attribute__((noinline)) void slow(void) {
    struct timespec ts = {0, 2000000};
    nanosleep(&ts, NULL);
}

__attribute__((noinline)) void outer(void) {
    fast();
    slow();
    fast();
    /* Not a tail call: every fast() is outer's callee, at depth 2. */
    sink += 4;
}

__attribute__((noinline)) void begin(void) { sink += 2; }
__attribute__((noinline)) void end(void) { sink += 3; }

int main(void) {
    for (int i = 0; i < 5; i++)
        fast();
    begin();
    for (int i = 0; i < 3; i++)
        outer();
    end();
    for (int i = 0; i < 4; i++)
        fast();
    return 0;
}
