/* The library half of located.c. */
static volatile unsigned long lib_sink;

__attribute__((noinline)) void loc_lib(unsigned long x) { /* LINE:loc_lib */
    lib_sink ^= x;
}
