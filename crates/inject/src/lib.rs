//! Loading a shared library into a running process that never asked for
//! it, with `ptrace`, and calling functions in it: what a debugger's
//! `call` does, made safe for a program that must not notice. Knows
//! nothing about tracing.
//!
//! # Model
//!
//! [`Target::inspect`] looks at a process without touching it and refuses,
//! with a message saying how to proceed, what cannot work: another user's
//! process (unless privileged), Yama's `ptrace_scope`, a process already
//! traced, stopped or exiting, not x86-64, statically linked, without
//! glibc's `dlopen`, or running with a CET shadow stack. It reads the
//! process's memory map and the dynamic symbol tables of its objects
//! (through `/proc/PID/root` when it lives in another mount namespace or
//! root) to find `dlopen`, `dlclose`, `dlerror` and `__errno_location`:
//! no offset is hard-coded.
//!
//! [`Process::seize`] attaches to every thread with `PTRACE_SEIZE`, which
//! does not stop them, and follows threads created later
//! (`PTRACE_O_TRACECLONE`). From then on the process is either
//! **running**, every event (a signal, a new thread) passed through at
//! once, or **held** ([`Process::hold`]): every thread stopped with
//! `PTRACE_INTERRUPT`, threads created meanwhile included, until
//! [`Process::release`]. While held, [`Process::find_inside`] checks every
//! thread's instruction pointer and live stack against any predicate.
//!
//! [`Process::let_go`] detaches from every thread for a while, memory
//! still readable, and [`Process::reseize`] attaches again: for what the
//! process must do untraced.
//!
//! [`Process::call`] runs one function on one thread and returns its
//! `rax`: `dlopen`, `dlclose` ([`Process::dlopen`], [`Process::dlclose`]),
//! or a function of a loaded library. The thread is chosen for what the
//! function does ([`Safety`]): a function that takes no lock can run on
//! any thread with stack room; one that calls into the C library only on
//! a thread that is not inside malloc, the dynamic loader, thread creation
//! or exit and does not return into them (it may hold their locks): its
//! instruction pointer and innermost stack are checked, threads blocked in
//! idle system calls (`poll`, `epoll_wait`, `read`, ...) are tried first,
//! and threads that are not at such a point are let go and tried again.
//!
//! # Invariants
//!
//! - **A call leaves nothing behind.** The thread's general registers and
//!   its whole extended state (`PTRACE_GETREGSET NT_X86_XSTATE`) are saved
//!   and restored, and so is its `errno` around calls into the C library;
//!   the frame (arguments copied below the red zone, the return address)
//!   is written over stack bytes that are saved and written back. The
//!   call returns to an unmapped page, whose fault at exactly that address
//!   ends it; any other fault is reported and the thread restored.
//! - **A thread is kept stopped only where its registers are its own.** A
//!   stop inside a system call (the clone event, reported while `clone3`
//!   has created the thread but not returned, `rax` still the kernel's
//!   `-ENOSYS` placeholder) is never kept: the thread finishes the call
//!   and stops again on its way back to user space. Registers saved there
//!   and set back after a call would make the system call seem to fail.
//! - **An interrupted system call is resumed, never failed.** A thread
//!   stopped inside a restartable system call (`-ERESTARTSYS`,
//!   `-ERESTARTNOINTR`, `-ERESTARTNOHAND`, `-ERESTART_RESTARTBLOCK`) is
//!   given back at its `syscall` instruction with the call number (or
//!   `restart_syscall`) in `rax`, as the kernel itself restarts a call when
//!   no handler runs: the program sees no `EINTR`. Threads that were not
//!   borrowed are restarted by the kernel itself when resumed.
//! - **Signals are not lost.** A signal arriving at a thread during a call
//!   is held back and delivered, with its `siginfo`, when the thread
//!   resumes; signals to other threads pass through.
//! - **The process outlives us cleanly.** Dropping a [`Process`] stops
//!   every thread and detaches it, delivering what is pending.
//!
//! # Limits
//!
//! - A call that never returns (a deadlock the checks did not foresee) is
//!   reported ([`Error::CallTimeout`]) and the thread left in it: it cannot
//!   be recalled, and detaching lets it return into the unmapped page.
//!   The checks look at the innermost 16 KiB of a stack only (deeper
//!   words are too often stale), so a thread deep in a signal handler that
//!   interrupted malloc could pass them.
//! - A signal held back during a call is delivered after the borrowed
//!   thread's interrupted system call was set up to restart: a handler
//!   without `SA_RESTART` then sees the call restarted rather than failed
//!   with `EINTR`.
//! - A borrowed thread that was in a call the kernel continues with
//!   `restart_syscall` (`poll`, `nanosleep`, `futex` with a timeout) relies
//!   on the call made meanwhile not being interrupted in such a call
//!   itself (which would replace the thread's restart state): `dlopen` and
//!   the functions livetrace calls make none.
//! - Only the calling thread may use a [`Process`] (ptrace's rule), and
//!   waiting is per thread (`waitpid(tid)`), so a tracer that has other
//!   children keeps their exit statuses for itself.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod elf;
mod error;
mod process;
pub mod procfs;
mod sys;
mod target;
mod unwind;

pub use elf::{kind as elf_kind, modules, ElfKind, Module, Symbol};
pub use error::Error;
pub use process::{Arg, Busy, Process, Safety, Stats};
pub use target::{privileged, LoaderCalls, Refusal, Target};

/// A thread's general registers, as ptrace gives them.
pub type Regs = libc::user_regs_struct;
