/* A tiny library to inject: a constructor, functions to call. */
#define _GNU_SOURCE
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

int probe_constructed;

__attribute__((constructor)) static void probe_init(void) { probe_constructed = 42; }

/* The sum of a string's bytes. */
long probe_sum(const char *s) {
    long n = 0;
    while (*s)
        n += (unsigned char)*s++;
    return n;
}

/* Which thread runs it. */
long probe_tid(void) { return syscall(SYS_gettid); }

/* Leaves every vector register and the flags dirty, as any function may. */
long probe_clobber(void) {
    __asm__ volatile("pcmpeqd %%xmm0, %%xmm0\n\t"
                     "pcmpeqd %%xmm1, %%xmm1\n\t"
                     "pcmpeqd %%xmm2, %%xmm2\n\t"
                     "pcmpeqd %%xmm3, %%xmm3\n\t"
                     "pcmpeqd %%xmm4, %%xmm4\n\t"
                     "pcmpeqd %%xmm5, %%xmm5\n\t"
                     "pcmpeqd %%xmm6, %%xmm6\n\t"
                     "pcmpeqd %%xmm7, %%xmm7\n\t"
                     "pcmpeqd %%xmm8, %%xmm8\n\t"
                     "pcmpeqd %%xmm9, %%xmm9\n\t"
                     "pcmpeqd %%xmm10, %%xmm10\n\t"
                     "pcmpeqd %%xmm11, %%xmm11\n\t"
                     "pcmpeqd %%xmm12, %%xmm12\n\t"
                     "pcmpeqd %%xmm13, %%xmm13\n\t"
                     "pcmpeqd %%xmm14, %%xmm14\n\t"
                     "pcmpeqd %%xmm15, %%xmm15\n\t"
                     "xor %%eax, %%eax\n\t"
                     "mov $-1, %%rcx\n\t"
                     "mov $-1, %%rdx\n\t"
                     "mov $-1, %%rsi\n\t"
                     "mov $-1, %%rdi\n\t"
                     "mov $-1, %%r8\n\t"
                     "mov $-1, %%r9\n\t"
                     "mov $-1, %%r10\n\t"
                     "mov $-1, %%r11\n\t"
                     :
                     :
                     : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
                       "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "rax", "rcx",
                       "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "memory", "cc");
    return 7;
}

/* Sets errno, as failing C library calls do. */
long probe_errno(void) {
    close(-1);
    return 0;
}
