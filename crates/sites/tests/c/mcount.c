/* Linked statically into a non-PIE test executable, built with
 * -pg -mfentry -mnop-mcount -mrecord-mcount: each function starts with a
 * 5-byte NOP recorded in __mcount_loc. */
#define NOINLINE __attribute__((noinline, noclone))

NOINLINE int mc_square(int x) { return x * x; }
NOINLINE int mc_twice(int x) { return 2 * x; }

/* A call target that clobbers nothing; in the executable, so within
 * reach of these sites. */
long mc_tramp_hits;
__asm__(".text\n"
        ".globl mc_tramp\n"
        ".type mc_tramp,@function\n"
        "mc_tramp:\n"
        "    lock incq mc_tramp_hits(%rip)\n"
        "    ret\n"
        ".size mc_tramp, .-mc_tramp\n");

/* Referencing the table's start keeps the linker's --gc-sections from
 * dropping it: nothing else refers to __mcount_loc (unlike
 * __patchable_function_entries, whose pieces are linked to their
 * functions). Programs using __mcount_loc need the same (or KEEP). */
extern const unsigned long __start___mcount_loc[], __stop___mcount_loc[];

unsigned long mc_table_len(void)
{
    return (unsigned long)(__stop___mcount_loc - __start___mcount_loc);
}
