//! Trampolines: the code a site calls.
//!
//! Two templates, written once in assembly below and copied at run time into
//! executable pages near the sites they serve (a `call rel32` reaches only
//! ±2 GiB, and shared libraries are usually mapped far from the program):
//!
//! - the *fast* template saves what the traced function can observe at
//!   entry (rdi, rsi, rdx, rcx, r8, r9, rax for varargs, r10, r11,
//!   xmm0-7), calls `func(data, slot)` (`slot`: where the return address
//!   into the function is, the caller's just above it) with the stack
//!   aligned, restores, and returns into the function. With `data` an ops
//!   and `func` the ops entry it is the ops' *dedicated* trampoline; with
//!   `func` the list walker it is the *list caller*;
//! - the *regs* template builds a full [`Regs`](crate::Regs) (every
//!   general register, flags, the resume address and the entry stack
//!   pointer, xmm0-7), passes it, writes back whatever the callback changed
//!   — including the resume address, which is how a function is redirected
//!   — and returns there.
//!
//! Each copy has two data words at its end, read RIP-relative so the code
//! is position independent: `data` and `func` (a copy within rel32 of
//! `func` calls it directly instead). The thread-pointer offset of the
//! per-thread [`ThreadState`](crate::thread::ThreadState) is the same in
//! every thread, so it is patched into each copy as the displacement of its
//! `fs:[disp32]` operands: no load on the traced path.
//!
//! Both templates begin by testing the thread's `inside` byte, non-zero
//! while the thread is in a callback (or an ops' fast path): a call from
//! inside a callback (a callback calling a traced function, or a signal
//! handler that interrupted one) is dropped and counted, never recursed
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

use std::collections::HashMap;
use std::io;

std::arch::global_asm!(
    r#"
    .pushsection .text.livetrace_tramp,"ax",@progbits
    // The thread-pointer offsets of ThreadState's `inside` and `dropped`, as
    // disp32 placeholders each copy gets patched with (see `patch_tls`).
    .set LT_INSIDE, 0x5eed0000
    .set LT_DROPPED, 0x5eed0008
    // From the stub's first return address to its `ip` word.
    .set LT_STUB_IP_FROM_RETURN, 18
    // xmm0-7 (vector and float arguments) to/from 128 aligned bytes at rsp.
    .macro lt_save_xmm
    .irp n, 0, 1, 2, 3, 4, 5, 6, 7
    movaps xmmword ptr [rsp + 16 * \n], xmm\n
    .endr
    .endm
    // Two general registers to 16 aligned bytes at rsp + off, with one
    // store (through xmm8/xmm9, dead at a function's entry).
    .macro lt_save_pair lo, hi, off
    movq xmm8, \lo
    movq xmm9, \hi
    punpcklqdq xmm8, xmm9
    movaps xmmword ptr [rsp + \off], xmm8
    .endm
    .macro lt_restore_xmm
    .irp n, 0, 1, 2, 3, 4, 5, 6, 7
    movaps xmm\n, xmmword ptr [rsp + 16 * \n]
    .endr
    .endm
    .p2align 4
    .globl lt_tramp_fast_start
lt_tramp_fast_start:
    // Mark the thread inside a callback; if it was already, this call came
    // from inside one and goes straight back into the function. (A signal
    // between the test and the store runs its own traced calls to the end
    // before we go on.) Flags are not part of any calling convention at a
    // function's entry.
    cmp byte ptr fs:[LT_INSIDE], 0
    jne 9f
    mov byte ptr fs:[LT_INSIDE], 1
    // This path is bound by stores (about one per cycle), not by
    // instructions: so the nine general registers go out as four 16-byte
    // pairs built in xmm8/xmm9 (caller-saved, never arguments) and one
    // 8-byte store, not nine pushes. rsp is 16-aligned here (the site's
    // call pushed 8 onto the function's entry rsp); the 208-byte frame
    // keeps it so for the callback:
    //   [rsp + 0..128)   xmm0-7
    //   [rsp + 128..192) rdi rsi rdx rcx r8 r9 rax r10
    //   [rsp + 192]      r11, then 8 bytes of padding
    //   [rsp + 208]      the return address into the function
    sub rsp, 208
    lt_save_xmm
    lt_save_pair rdi, rsi, 128
    lt_save_pair rdx, rcx, 144
    lt_save_pair r8, r9, 160
    lt_save_pair rax, r10, 176
    mov qword ptr [rsp + 192], r11
    // func(data, slot): the slot holding the return address into the
    // function (the callee finds the site and the caller's return slot
    // from it, only if it needs them).
    movabs rdi, 0x5eed5eed5eed5eed
    lea rsi, [rsp + 208]
    .globl lt_tramp_fast_call
lt_tramp_fast_call:
    call qword ptr [rip + lt_tramp_fast_func]
    lt_restore_xmm
    mov rdi, qword ptr [rsp + 128]
    mov rsi, qword ptr [rsp + 136]
    mov rdx, qword ptr [rsp + 144]
    mov rcx, qword ptr [rsp + 152]
    mov r8, qword ptr [rsp + 160]
    mov r9, qword ptr [rsp + 168]
    mov rax, qword ptr [rsp + 176]
    mov r10, qword ptr [rsp + 184]
    mov r11, qword ptr [rsp + 192]
    add rsp, 208
    mov byte ptr fs:[LT_INSIDE], 0
    ret
9:
    add qword ptr fs:[LT_DROPPED], 1
    ret
    .p2align 3
lt_tramp_fast_data: .quad 0
lt_tramp_fast_func: .quad 0
    .globl lt_tramp_fast_end
lt_tramp_fast_end:

    .p2align 4
    .globl lt_tramp_regs_start
lt_tramp_regs_start:
    push rbp
    mov rbp, rsp
    pushfq
    push r11
    cmp byte ptr fs:[LT_INSIDE], 0
    jne 9f
    mov byte ptr fs:[LT_INSIDE], 1
    sub rsp, 8
    lea r11, [rbp + 16]
    push r11
    push qword ptr [rbp + 8]
    push qword ptr [rbp - 8]
    push qword ptr [rbp]
    push rdi
    push rsi
    push rdx
    push rcx
    push rax
    push r8
    push r9
    push r10
    push qword ptr [rbp - 16]
    push rbx
    push r12
    push r13
    push r14
    push r15
    sub rsp, 128
    lt_save_xmm
    mov rdi, qword ptr [rip + lt_tramp_regs_data]
    mov rsi, qword ptr [rbp + 8]
    sub rsi, 5
    lea rdx, [rbp + 16]
    mov rcx, rsp
    .globl lt_tramp_regs_call
lt_tramp_regs_call:
    call qword ptr [rip + lt_tramp_regs_func]
    lt_restore_xmm
    add rsp, 128
    mov r11, qword ptr [rsp + 120]
    mov qword ptr [rbp - 8], r11
    mov r11, qword ptr [rsp + 128]
    mov qword ptr [rbp + 8], r11
    mov r11, qword ptr [rsp + 112]
    mov qword ptr [rbp], r11
    mov r11, qword ptr [rsp + 40]
    mov qword ptr [rbp - 16], r11
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    add rsp, 8
    pop r10
    pop r9
    pop r8
    pop rax
    pop rcx
    pop rdx
    pop rsi
    pop rdi
    mov byte ptr fs:[LT_INSIDE], 0
    lea rsp, [rbp - 16]
    pop r11
    popfq
    pop rbp
    ret
9:
    add qword ptr fs:[LT_DROPPED], 1
    pop r11
    popfq
    pop rbp
    ret
    .p2align 3
lt_tramp_regs_data: .quad 0
lt_tramp_regs_func: .quad 0
    .globl lt_tramp_regs_end
lt_tramp_regs_end:

    // A per-site stub, for a fast path that calls the original (see
    // fast.rs). The site jumps here (no return address pushed: the return
    // stack buffer stays in step). It calls the fast path, then the
    // function's body, so that the body returns here, predicted; then it
    // jumps to the fast path's exit routine with rsp just past the return
    // slot.
    .p2align 4
    .globl lt_stub_start
lt_stub_start:
    call qword ptr [rip + lt_stub_entry]
    add rsp, 8
    .globl lt_stub_call_body
lt_stub_call_body:
    .byte 0xe8
    .long 0
    jmp qword ptr [rip + lt_stub_exit]
    .p2align 3
    .globl lt_stub_ip
lt_stub_ip: .quad 0
lt_stub_entry: .quad 0
lt_stub_exit: .quad 0
    .globl lt_stub_end
lt_stub_end:

    // A fast path's fallback when it serves sites through stubs: makes the
    // stack what the site's `call` would have made (the return address
    // into the function, not into the stub) and goes to the ops' dedicated
    // trampoline. Flags are not part of a function's entry state.
    .p2align 4
    .globl lt_decline_start
lt_decline_start:
    push rax
    mov rax, qword ptr [rsp + 8]
    mov rax, qword ptr [rax + LT_STUB_IP_FROM_RETURN]
    add rax, 5
    mov qword ptr [rsp + 8], rax
    pop rax
    jmp qword ptr [rip + lt_decline_tramp]
    .p2align 3
lt_decline_tramp: .quad 0
    .globl lt_decline_end
lt_decline_end:
    .popsection
"#
);

unsafe extern "C" {
    static lt_tramp_fast_start: u8;
    static lt_tramp_fast_call: u8;
    static lt_tramp_fast_end: u8;
    static lt_tramp_regs_start: u8;
    static lt_tramp_regs_call: u8;
    static lt_tramp_regs_end: u8;
    static lt_stub_start: u8;
    static lt_stub_call_body: u8;
    static lt_stub_ip: u8;
    static lt_stub_end: u8;
    static lt_decline_start: u8;
    static lt_decline_end: u8;
}

/// From the return address a stub's first call pushes to the stub's word
/// holding the site's address (`LT_STUB_IP_FROM_RETURN` above).
pub(crate) const STUB_IP_FROM_RETURN: usize = 18;
/// Bytes per stub (a multiple of 16).
const STUB: usize = 64;

fn bytes_of(start: *const u8, end: *const u8) -> &'static [u8] {
    // SAFETY: start..end is a template's code and data in our text.
    unsafe { std::slice::from_raw_parts(start, end as usize - start as usize) }
}

/// Per-site stubs, never freed: a function may be running, its return
/// address pointing into its stub, long after its tracer is gone.
#[derive(Default)]
pub(crate) struct Stubs {
    /// site -> stub.
    by_site: HashMap<usize, usize>,
    /// window -> (page, next free offset).
    open: HashMap<usize, (usize, usize)>,
    /// Every stub page: critical code for the quiescence wait (a thread
    /// about to call through a stub's entry word may use what it named).
    pub pages: Vec<std::ops::Range<usize>>,
}

impl Stubs {
    /// The stub of `site`, made if needed, now calling `entry` and jumping
    /// to `exit`. Only called before a batch points the site at it, or
    /// while it already serves the same fast path.
    pub fn point(&mut self, site: usize, entry: usize, exit: usize) -> io::Result<usize> {
        let stub = match self.by_site.get(&site) {
            Some(&s) => s,
            None => self.make(site)?,
        };
        // The entry and exit words follow the ip word.
        let ip_at = &raw const lt_stub_ip as usize - &raw const lt_stub_start as usize;
        let mut words = [0u8; 16];
        words[..8].copy_from_slice(&(entry as u64).to_le_bytes());
        words[8..].copy_from_slice(&(exit as u64).to_le_bytes());
        write_text(stub + ip_at + 8, &words)?;
        Ok(stub)
    }

    /// The stub of `site`, if it has one.
    pub fn of(&self, site: usize) -> Option<usize> {
        self.by_site.get(&site).copied()
    }

    fn make(&mut self, site: usize) -> io::Result<usize> {
        let window = window_of(site);
        let (page, used) = match self.open.get(&window) {
            Some(&(p, u)) if u + STUB <= PAGE => (p, u),
            _ => {
                let p = map_near(window)?;
                self.pages.push(p..p + PAGE);
                (p, 0)
            }
        };
        let stub = page + used;
        self.open.insert(window, (page, used + STUB));
        let mut code = bytes_of(&raw const lt_stub_start, &raw const lt_stub_end).to_vec();
        code.resize(code.len().next_multiple_of(8), 0xcc);
        assert!(code.len() <= STUB);
        let call = &raw const lt_stub_call_body as usize - &raw const lt_stub_start as usize;
        let ip_at = &raw const lt_stub_ip as usize - &raw const lt_stub_start as usize;
        debug_assert_eq!(ip_at - 6, STUB_IP_FROM_RETURN);
        let rel = livetrace_poke::rel32(stub + call, site + 5)
            .ok_or_else(|| io::Error::other("site out of reach of its stub"))?;
        code[call + 1..call + 5].copy_from_slice(&rel.to_le_bytes());
        code[ip_at..ip_at + 8].copy_from_slice(&(site as u64).to_le_bytes());
        write_text(stub, &code)?;
        self.by_site.insert(site, stub);
        Ok(stub)
    }
}

/// Writes whole 8-byte words into one of our executable pages, each with
/// one atomic store. PROT_EXEC stays on: other code on the page may be
/// running; what is written is either not in use yet, or a data word that
/// threads read atomically.
fn write_text(at: usize, bytes: &[u8]) -> io::Result<()> {
    let page = at & !(PAGE - 1);
    assert!(at.is_multiple_of(8) && bytes.len().is_multiple_of(8));
    assert!(at + bytes.len() <= page + PAGE);
    // SAFETY: the page is one we mapped (map_near); the words are aligned
    // and inside it; see above for why writing them is safe.
    unsafe {
        if libc::mprotect(
            page as *mut _,
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        for (i, w) in bytes.chunks_exact(8).enumerate() {
            let word = &*((at + 8 * i) as *const std::sync::atomic::AtomicU64);
            word.store(
                u64::from_le_bytes(w.try_into().expect("8 bytes")),
                std::sync::atomic::Ordering::Release,
            );
        }
        if libc::mprotect(page as *mut _, PAGE, libc::PROT_READ | libc::PROT_EXEC) != 0 {
            crate::fatal("cannot make a trampoline page read-only again");
        }
    }
    Ok(())
}

/// Which template a trampoline is a copy of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Fast,
    Regs,
}

impl Kind {
    /// Offset of the template's `call qword ptr [rip + func]` (`ff 15
    /// disp32`), which a copy within reach of `func` turns into a direct
    /// `call rel32; nop`: one load and one indirect-branch prediction fewer
    /// on every traced call.
    fn call_offset(self) -> usize {
        let (start, call) = match self {
            Kind::Fast => (
                &raw const lt_tramp_fast_start,
                &raw const lt_tramp_fast_call,
            ),
            Kind::Regs => (
                &raw const lt_tramp_regs_start,
                &raw const lt_tramp_regs_call,
            ),
        };
        call as usize - start as usize
    }

    /// The template's bytes; its last 16 bytes are the two data words.
    fn template(self) -> &'static [u8] {
        match self {
            Kind::Fast => bytes_of(&raw const lt_tramp_fast_start, &raw const lt_tramp_fast_end),
            Kind::Regs => bytes_of(&raw const lt_tramp_regs_start, &raw const lt_tramp_regs_end),
        }
    }
}

/// The signature of what a regs trampoline calls.
pub(crate) type EntryFn =
    extern "C" fn(data: usize, ip: usize, parent_slot: *mut usize, regs: *mut crate::Regs);

/// The signature of what a fast trampoline calls: `slot` holds the return
/// address into the function (the site + 5), the caller's return address
/// is in the next word.
pub(crate) type FastEntryFn = extern "C" fn(data: usize, slot: *mut usize);

pub(crate) const SLOT: usize = 512;
const PAGE: usize = 4096;
const WINDOW_SHIFT: u32 = 30;
const REACH: usize = 512 << 20;

/// A pool key: which 1 GiB window of the address space a site is in.
pub(crate) fn window_of(site: usize) -> usize {
    site >> WINDOW_SHIFT
}

struct Pool {
    pages: Vec<usize>,
    free: Vec<usize>,
}

/// Every pool of trampolines. Kept under the core's lock.
#[derive(Default)]
pub(crate) struct Pools {
    pools: HashMap<usize, Pool>,
}

impl Pools {
    /// Copies a `kind` trampoline calling `func(data, ..)` (a [`FastEntryFn`]
    /// for `Kind::Fast`, an [`EntryFn`] for `Kind::Regs`) into the pool for
    /// `window`, returning its address. The copy is complete and made
    /// executable before any site can be pointed at it.
    pub fn create(
        &mut self,
        window: usize,
        kind: Kind,
        tpoff: isize,
        data: usize,
        func: usize,
    ) -> io::Result<usize> {
        let pool = self.pool(window)?;
        let slot = pool.free.pop().expect("refilled above");
        let code = kind.template();
        assert!(code.len() <= SLOT);
        let mut bytes = code.to_vec();
        let n = bytes.len();
        patch_tls(&mut bytes[..n - 16], tpoff);
        patch_data(&mut bytes[..n - 16], data);
        bytes[n - 16..n - 8].copy_from_slice(&(data as u64).to_le_bytes());
        bytes[n - 8..].copy_from_slice(&(func as u64).to_le_bytes());
        let at = kind.call_offset();
        debug_assert_eq!(bytes[at..at + 2], [0xff, 0x15]);
        if let Some(rel) = livetrace_poke::rel32(slot + at, func) {
            bytes[at] = 0xe8;
            bytes[at + 1..at + 5].copy_from_slice(&rel.to_le_bytes());
            bytes[at + 5] = 0x90;
        }
        install(pool, slot, &bytes)
    }

    /// Copies an ops' fast path into the pool for `window`, with the
    /// thread-pointer offsets patched in and `fallback` in its last word.
    pub fn create_fast(
        &mut self,
        window: usize,
        tpoff: isize,
        code: &[u8],
        fallback: usize,
    ) -> io::Result<usize> {
        let pool = self.pool(window)?;
        let slot = pool.free.pop().expect("refilled by pool()");
        let mut bytes = code.to_vec();
        let n = bytes.len();
        assert!((8..=SLOT).contains(&n));
        patch_tls_any(&mut bytes[..n - 8], tpoff);
        bytes[n - 8..].copy_from_slice(&(fallback as u64).to_le_bytes());
        install(pool, slot, &bytes)
    }

    /// A decline thunk (see the template) going to `tramp`, in the pool for
    /// `window`.
    pub fn create_decline(&mut self, window: usize, tramp: usize) -> io::Result<usize> {
        let pool = self.pool(window)?;
        let slot = pool.free.pop().expect("refilled by pool()");
        let mut bytes = bytes_of(&raw const lt_decline_start, &raw const lt_decline_end).to_vec();
        let n = bytes.len();
        bytes[n - 8..].copy_from_slice(&(tramp as u64).to_le_bytes());
        install(pool, slot, &bytes)
    }

    /// The pool for `window`, with at least one free slot.
    fn pool(&mut self, window: usize) -> io::Result<&mut Pool> {
        let pool = self.pools.entry(window).or_insert_with(|| Pool {
            pages: Vec::new(),
            free: Vec::new(),
        });
        if pool.free.is_empty() {
            let page = map_near(window)?;
            pool.pages.push(page);
            pool.free
                .extend((0..PAGE / SLOT).rev().map(|i| page + i * SLOT));
        }
        Ok(pool)
    }

    /// Where a thread inside a callback called from a trampoline returns
    /// to: for every slot of every pool, the byte after each template's
    /// call (direct `call rel32; nop` or indirect `call [rip + func]`), as
    /// two-byte ranges. A word on a blocked thread's stack that equals one
    /// of them means it is inside a callback (for the quiescence wait);
    /// anything narrower than the whole page keeps stale pointers to a
    /// trampoline (its start, kept in some local) from looking like one.
    pub fn return_addresses(&self) -> Vec<std::ops::Range<usize>> {
        let offsets = [Kind::Fast, Kind::Regs].map(|k| k.call_offset() + 5);
        self.pools
            .values()
            .flat_map(|p| p.pages.iter())
            .flat_map(|&page| (0..PAGE / SLOT).map(move |i| page + i * SLOT))
            .flat_map(|slot| offsets.map(|o| slot + o..slot + o + 2))
            .collect()
    }

    /// Returns a slot to its pool. Only after the quiescence wait has shown
    /// that no thread can be executing it.
    pub fn release(&mut self, addr: usize) {
        if let Some(pool) = self.pools.get_mut(&window_of_tramp(addr, &self.pools)) {
            pool.free.push(addr);
        }
    }
}

/// Writes a slot's code: the slot is the caller's, no site calls it yet.
fn install(pool: &mut Pool, slot: usize, bytes: &[u8]) -> io::Result<usize> {
    let mut words = bytes.to_vec();
    words.resize(words.len().next_multiple_of(8), 0xcc);
    if let Err(e) = write_text(slot, &words) {
        pool.free.push(slot);
        return Err(e);
    }
    Ok(slot)
}

fn window_of_tramp(addr: usize, pools: &HashMap<usize, Pool>) -> usize {
    let page = addr & !(PAGE - 1);
    pools
        .iter()
        .find(|(_, p)| p.pages.contains(&page))
        .map_or(usize::MAX, |(w, _)| *w)
}

/// Maps one page within reach of every address in `window`.
fn map_near(window: usize) -> io::Result<usize> {
    let lo = (window << WINDOW_SHIFT)
        .saturating_sub(REACH)
        .max(PAGE * 16);
    let hi = ((window + 1) << WINDOW_SHIFT)
        .saturating_add(REACH)
        .min(0x7fff_ffff_f000);
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut used: Vec<(usize, usize)> = maps
        .lines()
        .filter_map(|l| {
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            Some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            ))
        })
        .collect();
    used.sort_unstable();
    // Candidate addresses: just below and just above each mapping in range,
    // nearest to the window's middle first.
    let mid = (window << WINDOW_SHIFT) + (1 << (WINDOW_SHIFT - 1));
    let mut candidates: Vec<usize> = Vec::new();
    for &(s, e) in &used {
        if s >= PAGE && s - PAGE >= lo && s - PAGE < hi {
            candidates.push(s - PAGE);
        }
        if e >= lo && e + PAGE <= hi {
            candidates.push(e);
        }
    }
    candidates.sort_by_key(|&c| c.abs_diff(mid));
    for c in candidates {
        if used.iter().any(|&(s, e)| c < e && c + PAGE > s) {
            continue;
        }
        // SAFETY: MAP_FIXED_NOREPLACE maps at `c` only if nothing is there,
        // so no existing mapping is touched.
        let p = unsafe {
            libc::mmap(
                c as *mut _,
                PAGE,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED && p as usize == c {
            return Ok(c);
        }
        if p != libc::MAP_FAILED {
            // SAFETY: an old kernel ignored the flag and mapped elsewhere;
            // undo that mapping, which is ours.
            unsafe { libc::munmap(p, PAGE) };
        }
    }
    Err(io::Error::other(format!(
        "no free page within reach of sites at {:#x}..{:#x}",
        window << WINDOW_SHIFT,
        (window + 1) << WINDOW_SHIFT
    )))
}

/// Replaces the `LT_INSIDE`/`LT_DROPPED` placeholders in a template's code with
/// the real thread-pointer offsets.
fn patch_tls(code: &mut [u8], tpoff: isize) {
    // Each template enters, leaves, and counts a dropped call.
    assert!(
        patch_tls_any(code, tpoff) >= 3,
        "trampoline template placeholders"
    );
}

/// Replaces every `LT_INSIDE`/`LT_DROPPED` placeholder; returns how many.
fn patch_tls_any(code: &mut [u8], tpoff: isize) -> usize {
    let tpoff = i32::try_from(tpoff).expect("static TLS offsets fit in 32 bits");
    let mut patched = 0;
    for (placeholder, value) in [(0x5eed_0000u32, tpoff), (0x5eed_0008, tpoff + 8)] {
        let pat = placeholder.to_le_bytes();
        let mut i = 0;
        while i + 4 <= code.len() {
            if code[i..i + 4] == pat {
                code[i..i + 4].copy_from_slice(&value.to_le_bytes());
                patched += 1;
                i += 4;
            } else {
                i += 1;
            }
        }
    }
    patched
}

/// Puts `data` into a template's `movabs rdi, imm64` placeholder, where it
/// has one (the fast template: one load fewer per call).
fn patch_data(code: &mut [u8], data: usize) {
    let pat = 0x5eed_5eed_5eed_5eedu64.to_le_bytes();
    if let Some(i) = code.windows(8).position(|w| w == pat) {
        code[i..i + 8].copy_from_slice(&(data as u64).to_le_bytes());
    }
}
