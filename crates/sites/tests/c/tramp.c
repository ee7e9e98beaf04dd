/* A call target for patched sites that clobbers nothing (not even the
 * argument registers of the function being entered): it only counts.
 * Linked into each test library so it is within rel32 reach of the sites. */
__attribute__((visibility("hidden"))) long lt_tramp_hits;

__asm__(".text\n"
        ".globl lt_tramp\n"
        ".type lt_tramp,@function\n"
        "lt_tramp:\n"
        "    lock incq lt_tramp_hits(%rip)\n"
        "    ret\n"
        ".size lt_tramp, .-lt_tramp\n");

__attribute__((patchable_function_entry(0, 0))) long lt_tramp_count(void)
{
    return __atomic_load_n(&lt_tramp_hits, __ATOMIC_SEQ_CST);
}
