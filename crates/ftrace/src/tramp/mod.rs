//! Trampolines: the code a site calls.
//!
//! Three templates, written once in assembly (`templates.rs`) and copied
//! at run time into executable pages near the sites they serve (a `call
//! rel32` reaches only ±2 GiB, and shared libraries are usually mapped far
//! from the program):
//!
//! - the *fast* template saves what the traced function can observe at
//!   entry (rdi, rsi, rdx, rcx, r8, r9, rax for varargs, r10, r11, vector
//!   registers 0-7), calls `func(data, slot)` (`slot`: where the return
//!   address into the function is, the caller's just above it) with the
//!   stack aligned, restores, and returns into the function. With `data`
//!   an ops and `func` the ops entry it is the ops' *dedicated* trampoline;
//!   with `func` the list walker it is the *list caller*;
//! - the *regs* template builds a full [`Regs`](crate::Regs) (every
//!   general register, flags, the resume address and the entry stack
//!   pointer, xmm0-7), passes it, writes back whatever the callback changed
//!   — including the resume address, which is how a function is redirected
//!   — and returns there. Inside a callback it runs no callback but still
//!   applies the redirections IPMODIFY ops declared as data
//!   ([`crate::OpsBuilder::redirect_to`]): a live patch holds for every
//!   caller;
//! - the *full* template is the regs template that also keeps every vector
//!   and mask register, for relocated functions (below).
//!
//! # What the templates assume of the machine state at a site
//!
//! Only what no compiler can skip. The entry `rsp` is 8-aligned, not
//! 16-aligned: gcc calls a local function it knows needs no alignment with
//! the stack 8 bytes off (`-fipa-stack-alignment`, on from -O1), so each
//! template realigns once and calls Rust only with the stack aligned. A
//! callback may clobber every caller-saved register at its full width (an
//! AVX `memcpy` ends with `vzeroupper`), so the templates save vector
//! registers 0-7, the only ones the ABI passes arguments in, at the width
//! the CPU and kernel enable ([`VectorState`]: xmm, ymm or zmm; the same
//! number of stores each), assembled once per width and chosen at run
//! time. xmm8-15 (and their upper halves) are never arguments: the
//! templates use them as scratch. gcc disables its interprocedural
//! register allocation (`-fipa-ra`, which would let a caller keep values
//! in registers a local callee does not touch) for functions with
//! patchable entries, so a caller relies on nothing caller-saved across a
//! site.
//!
//! A function *relocated* to get a site had no patchable entry when it was
//! compiled: a caller in its object may keep a value in r10, r11, rcx or
//! any vector register across a call to it (zstd's `HUF_decompress4X_*`
//! keeps r10 across `HUF_selectDecoder`). When its object calls it
//! directly and it does not (transitively) make a call its callers'
//! compiler could not see, which would have made it clobber them all
//! ([`livetrace_sites::Record::preserves_all`]; a function reached only
//! through the PLT or a pointer has callers that assume the ABI), its site
//! calls the *full* template: the regs template that also saves every
//! vector register at full width (32 with AVX-512, and the mask registers)
//! — about 13 ns of stores and loads with AVX-512, a seventh of what
//! `xsavec` costs.
//!
//! Each copy has two data words at its end, read RIP-relative so the code
//! is position independent: `data` and `func` (a copy within rel32 of
//! `func` calls it directly instead); a regs copy has the `guarded` entry's
//! word before them. The thread-pointer offset of the per-thread
//! [`ThreadState`](crate::thread::ThreadState) is the same in every thread,
//! so it is patched into each copy as the displacement of its
//! `fs:[disp32]` operands: no load on the traced path.
//!
//! Both templates test the thread's `inside` byte, non-zero while the
//! thread is in a callback (or an ops' fast path): a call from inside a
//! callback (a callback calling a traced function, or a signal handler
//! that interrupted one) runs no callback and is counted, never recursed
//! into. Entering and leaving store constants (1, then 0), so back-to-back
//! traced calls form no read-modify-write chain through memory; the
//! quiescence wait tells a callback it saw from a later one by marking
//! the byte (see `quiesce`). The byte is at once the recursion guard and
//! the marker the quiescence wait samples.
//!
//! Copies live in pools, one per 1 GiB window of sites, mapped within
//! 512 MiB of the window so every site in it reaches every trampoline of its
//! pool. Slots of a pool are reused only after the quiescence wait showed
//! that no thread can still be inside the previous occupant.

mod pages;
mod patch;
mod pools;
mod stubs;
mod templates;
mod vector;

pub(crate) use pools::{window_of, Kind, Pools};
pub(crate) use stubs::{Stubs, STUB_BODY_RETURN_FROM_RETURN, STUB_IP_FROM_RETURN};
pub use vector::{vector_state, VectorState};

/// The signature of the regs template's `guarded` entry: called instead of
/// `func` inside a callback, it only applies redirections (see the
/// template).
pub(crate) type GuardedFn = EntryFn;

/// The signature of what a regs trampoline calls.
pub(crate) type EntryFn =
    extern "C" fn(data: usize, ip: usize, parent_slot: *mut usize, regs: *mut crate::Regs);

/// The signature of what a fast trampoline calls: `slot` holds the return
/// address into the function (the site + 5), the caller's return address
/// is in the next word.
pub(crate) type FastEntryFn = extern "C" fn(data: usize, slot: *mut usize);

pub(crate) const SLOT: usize = 2048;
const PAGE: usize = 4096;
const WINDOW_SHIFT: u32 = 30;
const REACH: usize = 512 << 20;
