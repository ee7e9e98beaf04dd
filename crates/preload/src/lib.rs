//! `liblivetrace.so`: livetrace for C and C++ programs, loaded with
//! `LD_PRELOAD` (or linked with `-llivetrace`), and the C API declared in
//! `include/livetrace.h`.
//!
//! # Model
//!
//! A program built with `-fpatchable-function-entry=5` (gcc: five one-byte
//! NOPs; clang: one 5-byte NOP) or `-pg -mfentry -mnop-mcount
//! -mrecord-mcount` (non-PIE) has a site at the entry of every function.
//! This library brings the whole of livetrace into such a process:
//!
//! 1. **Constructor** ([`ctor`]): an `.init_array` entry, which the loader
//!    runs before the program's own constructors and `main`. It builds the
//!    record table ([`livetrace::init`]: the executable and every loaded
//!    library) and converts gcc's sleds into one NOP5 while the process has
//!    one thread, then starts the control socket
//!    ([`livetrace_server::serve`]) that the `livetrace` command attaches to.
//! 2. **Interposers** ([`interpose`]): `dlopen`, `dlclose` and `fork` are
//!    exported here and so bind before libc's. A library loaded later gets
//!    its sites right after the real `dlopen` returns and before the handle
//!    reaches the program ([`livetrace::raw::sites::Table::on_dlopen`]); an
//!    unloaded library's records are dropped after the real `dlclose`
//!    ([`livetrace::raw::sites::Table::on_dlclose`]); `fork` happens while no
//!    live patch is in flight.
//! 3. **C API** ([`capi`]): `lt_*` functions for programs that trace
//!    themselves.
//! 4. **Attach** ([`attach`]): loaded late, with `dlopen` (by `livetrace
//!    attach`, through ptrace), the constructor does nothing; the injector
//!    starts livetrace through exported entry points, converts the sleds
//!    itself while it holds every thread, and later tears it down and
//!    unloads the library. What a late library needs to work and to be
//!    unloadable: its thread-local block in static TLS through an
//!    initial-exec relocation, thread-local destructors that do not pin it
//!    ([`tls`]), and its trampolines unmapped with it ([`code`]).
//!
//! # Invariants
//!
//! - **A sled is converted only where no thread can be inside it**: in the
//!   constructor while the process has one thread (else with the other
//!   threads stopped), by [`attach::livetrace_attach_convert`] while the
//!   injector holds every thread outside the sleds, and in the `dlopen`
//!   interposer, with the other threads stopped, for the objects that call
//!   loaded (their constructors may have started threads running their
//!   code) before the program gets the handle: interposed `dlopen`s and
//!   `dlclose`s are serialised by one lock held across the real call and
//!   the table update.
//! - **No site calls into unmapped code**: a library with an enabled site is
//!   pinned by the table, so the program's `dlclose` only lowers its count;
//!   it unloads when tracing of its last site stops, and its records go at
//!   the next `dlclose`, `dlopen` or C API call.
//! - **The loader sees the program as the caller of `dlopen`**: glibc picks
//!   the search path (RUNPATH, `$ORIGIN`) and namespace from the caller's
//!   return address, so the real `dlopen` is entered with a return address
//!   inside the calling object (a `ret` byte of its text) that returns
//!   here. livetrace's own `dlopen`/`dlclose` calls (pinning) are passed
//!   straight through, recognised by a return address inside this library.
//! - **Nothing unwinds into C**: every exported function catches panics at
//!   the boundary and reports an error code instead.
//! - **Lock order: interposers' lock, then the tracing core's.** The C API
//!   holds the interposers' lock for each whole call, so calls are
//!   serialised with each other, with `dlopen`/`dlclose` and with `fork`.
//!   livetrace's own `dlopen`/`dlclose` (made under the core's lock) take
//!   no lock here.
//! - **Nothing waits from inside a callback**: a thread inside a livetrace
//!   callback (an `lt_ops_register` callback calling `lt_*` or `dlopen`)
//!   never waits for the interposers' lock, whose holder may be waiting in
//!   a quiescence wait for that very thread: the C API answers `LT_ESTATE`
//!   at once and the interposers pass through.
//! - **One livetrace per process**: if the executable already links
//!   livetrace (it has a `livetrace_sites` section), this library stands
//!   down: the interposers pass through and the C API answers `LT_ESTATE`.
//!
//! # `fork`
//!
//! The interposed `fork` holds the interposers' lock and the tracing core's
//! lock across the real `fork`: the child never inherits a half-applied
//! batch, and no lock held by a C API call or a tracing change of another
//! thread, so its own `lt_*` calls and `dlopen`s work. The child keeps a
//! copy of the patched text, trampolines and ring buffers: the sites
//! enabled at the fork stay enabled in the child and keep recording into
//! its copy of the buffers, which only the child's own sessions (C API)
//! can read; sessions of the parent's control-socket connections belong to
//! threads that do not exist in the child. The child runs no
//! control-socket thread (its `atexit` leaves the parent's socket alone),
//! so `livetrace` cannot attach to it. Not covered: a `fork` while a
//! control-socket connection of the parent is between the tracers' own
//! locks outside the core's (starting or dropping a session); a child that
//! then starts tracing itself could block. `vfork`, `posix_spawn` and
//! `system` are not interposed (their children only `exec`).
//!
//! # Environment
//!
//! `LIVETRACE_PRELOAD=0` turns the library off; `LIVETRACE_SERVE=0` starts
//! no control socket; `LIVETRACE_VERBOSE=1` reports sites found and
//! converted on stderr. `LIVETRACE=1` and `LIVETRACE_RECORD` (set by
//! `livetrace record`) are read by the control-socket crate's own
//! constructor, which runs inside this library after ours. `LD_PRELOAD` is
//! inherited by child processes, which get livetrace too.
//!
//! # Why the library is a `cdylib` only
//!
//! Its file must be `liblivetrace.so`, so the library is named `livetrace`
//! like the facade crate; an `rlib` of the same name would collide with the
//! facade's `liblivetrace.rlib` in `target/`, and anything linking it would
//! get the interposers and the constructor. Cargo builds it as
//! `target/<profile>/liblivetrace.so`; `doc = false` keeps `cargo doc` from
//! refusing the name clash.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod attach;
pub mod capi;
mod code;
mod ctor;
mod error;
mod interpose;

pub use error::Error;
mod tls;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

/// Not started yet (before the constructor, or loaded by `dlopen`).
const NOT_STARTED: u8 = 0;
/// The constructor built the table; the C API and interposers work.
const ACTIVE: u8 = 1;
/// Turned off (by the environment, a failure, or another livetrace in the
/// process): interposers pass through, the C API refuses.
const OFF: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(NOT_STARTED);
static OFF_REASON: Mutex<String> = Mutex::new(String::new());

/// Whether livetrace runs in this process.
fn active() -> bool {
    STATE.load(Ordering::Acquire) == ACTIVE
}

fn turn_off(reason: String) {
    *OFF_REASON.lock().unwrap_or_else(|e| e.into_inner()) = reason;
    STATE.store(OFF, Ordering::Release);
}

/// Why livetrace is not active, for error messages.
fn off_reason() -> String {
    match STATE.load(Ordering::Acquire) {
        NOT_STARTED => {
            "liblivetrace.so was loaded with dlopen and not started: load it at \
                        start-up (LD_PRELOAD or -llivetrace), or attach with `livetrace attach PID`"
                .into()
        }
        _ => OFF_REASON.lock().unwrap_or_else(|e| e.into_inner()).clone(),
    }
}

/// Whether `LIVETRACE_VERBOSE` asks for progress on stderr.
fn verbose() -> bool {
    std::env::var_os("LIVETRACE_VERBOSE").is_some_and(|v| !v.is_empty() && v != "0")
}
