/* located: functions at known lines, in the program and in a library
 * (located_lib.c), built with -g: the source locations every output
 * carries. Each function opens on its marked line, which is where its
 * first instruction is in the line table.
 *
 *   located [N]   main calls loc_outer(N), which calls loc_leaf and
 *                 loc_lib N times each
 */
#include <stdio.h>
#include <stdlib.h>

void loc_lib(unsigned long x);

static volatile unsigned long sink;

__attribute__((noinline)) void loc_leaf(unsigned long x) { /* LINE:loc_leaf */
    sink += x;
}

__attribute__((noinline)) void loc_outer(unsigned long n) { /* LINE:loc_outer */
    for (unsigned long i = 0; i < n; i++) {
        loc_leaf(i);
        loc_lib(i);
    }
}

int main(int argc, char **argv) {
    unsigned long n = argc > 1 ? strtoul(argv[1], NULL, 0) : 3;
    loc_outer(n);
    printf("LOCATED sink=%lu\n", sink);
    return 0;
}
