//! Fast paths: machine code an ops brings to serve its calls without
//! entering Rust (the kernel's ftrace "direct calls", in spirit).
//!
//! The contract is on [`FastPath`].

use std::fmt;

/// The disp32 a fast path writes for the thread's `inside` byte
/// (`fs:[disp32]`).
pub const INSIDE_PLACEHOLDER: u32 = 0x5eed_0000;
/// The disp32 a fast path writes for the thread's dropped-call counter.
pub const DROPPED_PLACEHOLDER: u32 = 0x5eed_0008;

/// Most bytes a fast path may have (a quarter of a pool slot, which is
/// sized for the full template with AVX-512: over 1 KiB).
pub(crate) const MAX_LEN: usize = 512;

/// Machine code serving an ops' calls ([`crate::OpsBuilder::fast_path`]).
///
/// A fast path is copied, like a trampoline, into a pool near the sites it
/// serves, and a site calls it where its ops is alone on the function. Its
/// contract:
///
/// - It is entered by the site's `call`, with the function's entry state
///   plus that return address on the stack, and must either return into
///   the function with every register the dedicated trampoline preserves
///   (rdi, rsi, rdx, rcx, r8-r11, rax, vector registers 0-7 at their full
///   width; rbx, rbp, r12-r15 and rsp as usual) unchanged, or jump through
///   its *fallback word* with the registers and stack exactly as it found
///   them. The fallback is the ops' ordinary dedicated trampoline, which
///   runs the callback. It may use xmm8-15 as scratch with SSE (or VEX
///   128-bit) instructions: they are never arguments, nor are their upper
///   halves. `rsp` is only 8-aligned (gcc calls local functions with the
///   stack 8 bytes off), so it must not assume more.
/// - It calls nothing. So the quiescence wait covers it by its address
///   alone: a thread sampled inside a dying copy is waited for.
/// - It never runs inside a callback or another fast path, and marks
///   itself the way a callback is marked, so that neither a callback nor a
///   signal handler's traced calls interleave with it: if the thread's
///   `inside` byte is set (`cmp byte ptr fs:[INSIDE], 0`) it goes to the
///   fallback at once (which counts the call as dropped); otherwise,
///   before touching per-thread state a callback may also touch, it
///   stores 1 there (`mov byte ptr fs:[INSIDE], 1`), and 0 when done, as
///   the trampolines do. `INSIDE` is written as the disp32
///   [`INSIDE_PLACEHOLDER`] (the dropped-call counter as
///   [`DROPPED_PLACEHOLDER`]); each copy gets the real thread-pointer
///   offsets.
/// - A fast path made with [`FastPath::calling_original`] serves each
///   site through a small per-site *stub*: the site `jmp`s to the stub
///   (nothing pushed), which `call`s the fast path (so `[rsp]` is the
///   stub's return address, and the site's address is the 8-byte word
///   [`STUB_IP_FROM_RETURN`] bytes past it), then, if the fast path returned, calls
///   the function's body itself and jumps to the *exit routine* when the
///   body returns, with `rsp` just past the return slot (whose content the
///   stub's call replaced: the fast path must have saved the caller's
///   return address, and the exit routine must return there, with a `ret`
///   to keep the return-stack buffer in step). Every branch is then
///   predicted, where hooking a return by rewriting its slot costs a
///   mispredicted `ret` per call. Its fallback still sees exactly a site's
///   call (a thunk rewrites the stub's return address first). Stubs are
///   never freed, so the exit routine must be code that stays mapped.
/// - Its last 8 bytes are the fallback word (zero in the code given); it
///   reaches it RIP-relatively (`jmp qword ptr [rip + fallback]`). Anything
///   else position dependent (absolute addresses, its own thread-locals'
///   offsets) its owner patches in before handing the code over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FastPath {
    code: Vec<u8>,
    exit: Option<usize>,
    personality: usize,
}

/// From the return address a stub pushes when it calls a fast path to the
/// stub's 8-byte word holding the site's address.
pub const STUB_IP_FROM_RETURN: usize = crate::tramp::STUB_IP_FROM_RETURN;

/// From the return address a stub pushes when it calls a fast path to the
/// return address its call of the body pushes: what the function's return
/// slot holds while the body runs.
pub const STUB_BODY_RETURN_FROM_RETURN: usize = crate::tramp::STUB_BODY_RETURN_FROM_RETURN;

/// Why code was not accepted as a fast path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FastPathError {
    /// Longer than a trampoline slot.
    TooLong(usize),
    /// The last 8 bytes, the fallback word, are not zero (or missing).
    NoFallbackWord,
    /// The code never takes the recursion guard (no `fs:[INSIDE]` operand).
    NoGuard,
}

impl fmt::Display for FastPathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FastPathError::TooLong(n) => {
                write!(
                    f,
                    "fast path is {n} bytes, more than the {MAX_LEN} of a slot"
                )
            }
            FastPathError::NoFallbackWord => {
                f.write_str("fast path does not end with a zero 8-byte fallback word")
            }
            FastPathError::NoGuard => {
                f.write_str("fast path never takes the recursion guard (fs:[INSIDE_PLACEHOLDER])")
            }
        }
    }
}

impl std::error::Error for FastPathError {}

impl FastPath {
    /// Checks what can be checked of the contract: the size, the fallback
    /// word, and that the guard is taken somewhere.
    pub fn new(code: Vec<u8>) -> Result<FastPath, FastPathError> {
        if code.len() > MAX_LEN {
            return Err(FastPathError::TooLong(code.len()));
        }
        if code.len() < 8 || code[code.len() - 8..] != [0; 8] {
            return Err(FastPathError::NoFallbackWord);
        }
        let has = |v: u32| code.windows(4).any(|w| w == v.to_le_bytes());
        if !has(INSIDE_PLACEHOLDER) {
            return Err(FastPathError::NoGuard);
        }
        Ok(FastPath {
            code,
            exit: None,
            personality: 0,
        })
    }

    /// A fast path that calls the original function itself, through
    /// per-site stubs, and has `exit` run when the function returns (see
    /// the module documentation for the contract).
    pub fn calling_original(code: Vec<u8>, exit: usize) -> Result<FastPath, FastPathError> {
        let mut f = FastPath::new(code)?;
        f.exit = Some(exit);
        Ok(f)
    }

    /// Names `personality` (a routine with the signature of libgcc's
    /// `__gcc_personality_v0`) in the unwind information of the stubs this
    /// fast path serves. While the body of a function runs, its return slot
    /// holds the stub's return address, and an unwinder going through
    /// finds a frame at that address whose return address is in the slot
    /// (CFA - 8): the personality routine, called for that frame in every
    /// phase of an exception or a forced unwind, must put the real return
    /// address there (the fast path saved it). Without one, an unwinder
    /// stops at the stub.
    pub fn with_personality(mut self, personality: usize) -> FastPath {
        self.personality = personality;
        self
    }

    /// The personality routine of the stubs' unwind information (0: none).
    pub fn personality(&self) -> usize {
        self.personality
    }

    /// The exit routine, for a fast path that calls the original.
    pub fn exit(&self) -> Option<usize> {
        self.exit
    }

    /// The code, placeholders unpatched.
    pub fn code(&self) -> &[u8] {
        &self.code
    }
}

/// The thread-pointer offset of the thread's `inside` byte (the recursion
/// guard and quiescence marker), for code that is not a copy and so cannot
/// be patched (a return hook in a library's text): it follows the same
/// rules, reading the offset from memory, and declares itself with
/// [`crate::add_critical_code`]. `None` when the core cannot be set up
/// (dynamic TLS).
pub fn inside_tpoff() -> Option<isize> {
    crate::core()
        .ok()
        .map(|g| g.as_ref().expect("initialised").tpoff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_is_checked() {
        let mut code = vec![0x90; 16];
        code.extend(INSIDE_PLACEHOLDER.to_le_bytes());
        code.extend([0; 8]);
        assert!(FastPath::new(code.clone()).is_ok());
        let mut bad = code.clone();
        *bad.last_mut().unwrap() = 1;
        assert_eq!(FastPath::new(bad), Err(FastPathError::NoFallbackWord));
        assert_eq!(FastPath::new(vec![0; 16]), Err(FastPathError::NoGuard));
        assert_eq!(
            FastPath::new(vec![0; 600]),
            Err(FastPathError::TooLong(600))
        );
    }
}
