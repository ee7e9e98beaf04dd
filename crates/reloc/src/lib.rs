//! Prologue relocation: giving a site to a function the compiler gave none,
//! the way the kernel's *optimized kprobes* do.
//!
//! This crate is pure: it reads bytes and ELF files and produces bytes. It
//! never writes to a process; installing what it produces is the engine's
//! job (`livetrace-poke`), as described in [Installing live](#installing-live-phase-2).
//!
//! # Model
//!
//! A function without a compiler-emitted NOP gets a site by **relocation**:
//! the whole instructions covering its first 5 bytes (N ≥ 5 bytes, the
//! *region*) are copied into a **detour** within ±2 GiB, and the region's
//! first 5 bytes become `jmp detour`. The detour is
//!
//! ```text
//! detour+0   nop5               the site the tracing machinery patches, like a compiler's
//! detour+5   relocated region   RIP-relative operands fixed, short branches widened,
//!                               branches into the region kept inside the detour
//!            jmp site+N         back to the original code
//!            [slot]             original return address, if a call was emulated
//! ```
//!
//! [`Prologue::decode`] decodes the region from the function's bytes and
//! refuses what cannot run out of line ([`Unrelocatable`]);
//! [`Prologue::relocate`] builds a [`Detour`] for a given address and load
//! bias; [`Prologue::detour_window`] says which addresses work.
//! [`Image::parse`] finds an ELF object's candidate functions and gives each
//! a verdict: a [`Prologue`], or a [`Refusal`] (shown by `livetrace ls
//! --why-not`).
//!
//! # Invariants
//!
//! 1. **No thread can arrive inside the region except at its first byte.**
//!    A relocated site is only produced when the object holds no direct
//!    branch or call (from anywhere in its code: every function body and
//!    the gaps between them are swept linearly), no jump-table entry (a
//!    table read by the function's indirect jump, found from its
//!    RIP-relative or absolute reference, entries as 32-bit offsets or
//!    64-bit addresses), no taken address (RIP-relative operand, absolute
//!    immediate or data word in position-dependent objects, dynamic `RELA`
//!    and `RELR` relocation), no exception landing pad (the LSDA of every
//!    FDE), no FDE start and no symbol that lands in bytes `site+1 ..
//!    site+N`. Branches from within the region to within it are the one
//!    exception: they are redirected inside the detour. A function whose
//!    body does not decode linearly is refused ([`Refusal::BodyUndecodable`]):
//!    it could hide a branch.
//! 2. **Calls are counted once.** A jump from the function's own body (or a
//!    cold part) back to its entry is a loop, not a call: such functions are
//!    refused ([`Refusal::BranchToEntry`]); a branch inside the region to the
//!    site goes to the relocated copy, not to the detour's site.
//!    Only code entered by a call is a function: ifunc resolvers, PLT stubs,
//!    cold parts (by name `*.cold*`, by unwind rules that are not those of
//!    an entry at its first byte, or unnamed code only entered by
//!    conditional jumps), signal-return trampolines (CIE augmentation `S`)
//!    and outermost frames (return address undefined: `_start`) are
//!    excluded, since a tracer would take what is on top of their stack for
//!    a return address.
//! 3. **The detour behaves as the region did**, including what the stack
//!    shows: a `call` (only allowed as the region's last instruction; an
//!    earlier one would return into the region) is emulated by pushing the
//!    *original* return address (`push [rip+slot]; jmp target`), so the
//!    callee, unwinders and return-address hooks see the same frame and the
//!    callee returns straight to the original code, never into the detour.
//!    Instructions whose behaviour depends on where they run are refused:
//!    `syscall`/`sysenter` (the kernel saves their address), traps (`int3`,
//!    `ud2`...: their handler expects them in place), `xbegin`, far and
//!    privileged transfers, `eip`-relative operands, branches with a
//!    truncating operand size. `loop`/`jrcxz`, rel8 only, become `op +2;
//!    jmp +5; jmp rel32 target`.
//! 4. **`endbr64` stays at the entry.** The site follows it (`site =
//!    function + 4`), as with `-fpatchable-function-entry` under
//!    `-fcf-protection`: indirect branches still land on an `endbr64`, and
//!    the jumps to the detour and back are direct, which IBT does not check.
//!    IBT is not enabled on the machines this was written on, but nothing
//!    here would break it. (Relocating the `endbr64` instead would leave
//!    indirect calls landing on a `jmp`, a control-protection fault.)
//! 5. **Tiny functions extend over their padding.** A function shorter than
//!    5 bytes (`xor eax,eax; ret`) followed by alignment NOPs is relocated
//!    with the NOPs, copied as they are; invariant 1 covers the padding too.
//!    Otherwise it is refused ([`Refusal::TooShort`]).
//! 6. **Detour sizes do not depend on the address**; rel32 reach does:
//!    [`Prologue::relocate`] fails with [`Refusal::OutOfReach`] outside
//!    [`Prologue::detour_window`], never produces a truncated displacement.
//!
//! Candidates are the `STT_FUNC` symbols of `.symtab` and `.dynsym` (aliases
//! merged; a size-0 symbol ends where the next symbol starts) and, where no
//! symbol covers them, `.eh_frame` FDE ranges (`sub_<address>`), so
//! stripped objects such as a distribution's libc are covered too.
//!
//! Not covered: references to a region from *another* object (a symbol
//! relocation `f+3` elsewhere), code generated at run time, and text that
//! differs from the file (another tool's breakpoint): the engine compares
//! the bytes it replaces with [`Detour::original`] before writing.
//!
//! The bytes of the region past the 5-byte jump are left as they were:
//! nothing branches to them (invariant 1) and, once the jump is whole, no
//! thread is inside them (the installation protocol below).
//!
//! # Installing live (phase 2)
//!
//! The 5-byte jump replaces *several* instructions, so unlike a compiler
//! site a thread may be stopped between two of them, or have a return
//! address or a signal frame pointing between them. The kernel's optimized
//! kprobes (`arch/x86/kernel/kprobes/opt.c`) solve this in two steps; the
//! engine follows them.
//!
//! **Enabling** a relocated function `f` (site `s`, region `[s, s+N)`,
//! detour `d` allocated within [`Prologue::detour_window`], filled with
//! [`Detour::bytes`] and made executable, then core-synced, before anything
//! points at it):
//!
//! 1. *Probe step.* A batch writes `int3` on `s` alone (the other N-1 bytes
//!    unchanged). Its trap kind is "emulate as jump to `d`": the SIGTRAP
//!    handler of a thread that traps at `s` sets its RIP to `d`. From here
//!    on no thread *enters* `s+1..s+N`: a thread reaching `s` traps, and
//!    nothing branches past it (invariant 1). Threads already inside the
//!    region finish the original instructions, which are intact.
//! 2. *Quiescence check.* The engine's world inspection (issue "Host
//!    safety I") answers "is any thread's state inside `[s+1, s+N)`?": its
//!    RIP, the RIP of any signal frame on its stack (a handler interrupted
//!    it there), or a return address on its stack (a call emulated by the
//!    trap handler cannot leave one; a `call` inside the region is the last
//!    instruction, so its return address is `s+N`, outside). While the
//!    answer is yes, wait (a short sleep and retry; a thread stuck there,
//!    e.g. stopped by a debugger, makes the enable time out and roll back
//!    to step 4 of removal).
//! 3. *Jump step.* The usual three-pass batch turns `int3 + original[1..5]`
//!    into `jmp d`: pass 1 is already done (`int3` is in place), pass 2
//!    writes bytes 1..4 of the jump, pass 3 writes `e9`. A thread trapping
//!    meanwhile is sent to `d` by the same emulation. The site is now the
//!    detour's `nop5` at `d`, which the tracing machinery enables, disables
//!    and live-patches with ordinary 5-byte batches, like any compiler site
//!    (records map `d` to `f`; a tracer's "function address" is `f`).
//!
//! **Removing** it, in reverse: (1) the detour's site back to `nop5` (an
//! ordinary batch, if it was enabled); (2) a batch whose entry turns the
//! jump back into the original bytes `s..s+5`: `int3` at `s` (emulated as
//! "jump to `d`"), then bytes 1..4, then the original first byte; threads
//! keep flowing through `d` until the last pass; (3) wait until no thread's
//! RIP, signal-frame RIP or return address lies inside `[d, d+len)` (a
//! thread may be inside the relocated instructions, or in a callee of the
//! detour's site, i.e. the trampoline, whose return address is `d+5`);
//! (4) only then free the detour (the engine's usual quiescence, like
//! trampolines). Detours are never reused before (4).
//!
//! **What the engine must offer** for this:
//!
//! - a batch entry whose old bytes are arbitrary (the region's first 5
//!   bytes as the compiler left them: any instructions, not a NOP, `call`
//!   or `jmp`), validated against [`Detour::original`], and whose new form
//!   may be "`int3` only" (step 1) or a `jmp rel32` that starts from an
//!   `int3` already in place (step 3);
//! - a trap kind "emulate as jump to `d`" for such a site, distinct from
//!   emulating the instruction being written: while the site holds `int3`
//!   over original bytes, the instruction "being written" is not one
//!   instruction at all;
//! - world inspection: "is any thread's RIP, signal-frame RIP or return
//!   address inside `[a, b)`?", cheap enough to poll, for step 2 and
//!   removal step 3;
//! - executable memory within ±2 GiB of a given range (the window), with
//!   freeing deferred to quiescence;
//! - the site record for `d` carrying the function's real entry `f`, so
//!   names, filters, the graph tracer's return hook (at `[rsp]`, which the
//!   detour leaves untouched: the region's instructions have not run when
//!   the detour's site is reached) and `livetrace ls` (`relocated`) use `f`.
//!
//! A trap at `s` that the engine did not cause (another tool's breakpoint)
//! must still chain to the program's handler, as today.

#![warn(missing_docs)]

mod image;
mod lsda;
mod prologue;
mod refusal;

pub use image::{Candidate, Error, Image, Origin, Summary};
pub use prologue::{Detour, Fixup, Prologue, DETOUR_BODY, ENDBR64, JMP_LEN, NOP5};
pub use refusal::{Refusal, Unrelocatable};
