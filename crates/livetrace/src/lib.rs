//! livetrace: dynamic function tracing and live patching for running
//! programs, like the kernel's dynamic ftrace, in user space.
//!
//! # Model
//!
//! A *site* is five bytes at the entry of a function that hold a NOP
//! (`0f 1f 44 00 00`) while tracing is off, and `call handler` while it is
//! on. [`poke`] rewrites sites live, in batches, while other threads run
//! through them. Sites come from [`traced`] (`#[traced]` on Rust functions)
//! and are listed by [`macro_sites`].
//!
//! # Invariants
//!
//! - A `#[traced]` site is the first instruction of the function's call, with
//!   only the caller's return address on the stack; no site is inside a
//!   body. A handler called from a site must preserve every register and the
//!   flags, and return, for the function to run as if the site were a NOP.
//! - Site records are gathered by the linker, never by code at start-up: the
//!   list is complete before `main`, and cannot change afterwards.
//! - Disabled sites cost one NOP and one direct `jmp` per call.
//!
//! # Example
//!
//! ```
//! #[livetrace::traced]
//! fn add(a: u32, b: u32) -> u32 {
//!     a + b
//! }
//!
//! assert_eq!(add(2, 3), 5);
//! let site = livetrace::macro_sites().find(|s| s.path.ends_with("::add")).unwrap();
//! assert_eq!(livetrace::poke::read_site(site.addr).unwrap(), livetrace::poke::NOP5);
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod macro_sites;

pub use livetrace_poke as poke;

pub use livetrace_macros::traced;
pub use macro_sites::{macro_sites, MacroSite};

/// Items that `#[traced]` expansions name as `::livetrace::__private::…`,
/// so user crates depend on `livetrace` alone. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use core::arch::{global_asm, naked_asm};

    /// Returns a function pointer of `like`'s type that points at `addr`.
    /// `like` only carries the type; optimised builds fold the result into
    /// a direct `call addr`.
    ///
    /// # Safety
    ///
    /// `F` is a function pointer type, and calling the code at `addr` with
    /// `F`'s signature and ABI is the same as calling a function of type
    /// `F` (for `#[traced]`: `addr` is a site stub that jumps to the body
    /// `like` points to, touching nothing).
    #[inline(always)]
    pub unsafe fn retarget<F: Copy>(like: F, addr: *const ()) -> F {
        const { assert!(size_of::<F>() == size_of::<*const ()>()) };
        let _ = like;
        // SAFETY: `F` is pointer-sized (checked above) and, by the caller's
        // contract, a function pointer type for which `addr` is valid.
        unsafe { core::mem::transmute_copy::<*const (), F>(&addr) }
    }
}
