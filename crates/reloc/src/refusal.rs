//! Why a function gets no relocated site.

use std::fmt;

/// Why a candidate function cannot be given a relocated site, or is not a
/// function one should trace at all. Shown by `livetrace ls --why-not`.
///
/// Addresses are those the [`Prologue`](crate::Prologue) or
/// [`Image`](crate::Image) was built with (link-time for an ELF file).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// An `STT_GNU_IFUNC` symbol: its code is the resolver, which runs once
    /// when the symbol is bound; calls go to the implementation it returns.
    IfuncResolver,
    /// Code in `.plt`, `.plt.sec`, `.plt.got` or `.iplt`: stubs, not functions.
    Plt,
    /// A `.cold` part that gcc split off another function: it is entered by a
    /// jump from the middle of its parent, with no return address on top of
    /// the stack, so a tracer would misread its entry as a call.
    ColdPart,
    /// The unwind information at the candidate's start is not that of a
    /// function entry (the CFA is not `rsp+8`, or callee-saved registers are
    /// already saved): code entered in the middle of another function's
    /// frame, such as a cold part in a stripped object.
    MidFrame,
    /// A signal-return trampoline (`__restore_rt`; its CIE has the `S`
    /// augmentation): entered by a signal handler's `ret`, with the signal
    /// frame, not a return address, on top of the stack.
    SignalTrampoline,
    /// The unwind information marks the return address undefined: an
    /// outermost frame such as `_start` or a thread's first function,
    /// entered by the kernel with no return address.
    Outermost,
    /// Unnamed code (an `.eh_frame` range with no symbol) that is only ever
    /// entered by conditional jumps from other functions, and that nothing
    /// calls or takes the address of: a cold part of another function (no
    /// compiler turns a conditional jump into a tail call except clang at
    /// `-Os`, and then the target is also called or exported).
    JumpedIntoOnly,
    /// A symbol of size zero with no unwind range either: where the function
    /// ends is unknown, so its body cannot be checked.
    UnknownSize,
    /// The symbol does not point into an executable section with contents.
    NotCode,
    /// The function ends before the instructions the 5-byte jump overwrites
    /// do.
    TooShort {
        /// The function's size in bytes.
        size: u64,
        /// Bytes needed from the function's start (the `endbr64`, if any, and
        /// the whole instructions covering the jump).
        needed: u64,
    },
    /// An instruction the jump would overwrite does not decode.
    Undecodable {
        /// Its address.
        at: u64,
    },
    /// An instruction the jump would overwrite cannot run out of line.
    Unrelocatable {
        /// Its address.
        at: u64,
        /// The instruction (Intel syntax).
        insn: String,
        /// Why.
        why: Unrelocatable,
    },
    /// A direct jump or call lands strictly inside the overwritten bytes: a
    /// thread taking it would execute the middle of the 5-byte jump.
    BranchIntoRegion {
        /// The branch.
        from: u64,
        /// Where it lands.
        target: u64,
    },
    /// A jump in the function's own body goes back to its entry (a loop the
    /// compiler made of tail recursion): each iteration would run the site
    /// and count as a call, and the return-address hook of the graph tracer
    /// would be taken twice on the same frame.
    BranchToEntry {
        /// The jump.
        from: u64,
    },
    /// A jump table read by the function's indirect jump has an entry that
    /// lands inside the overwritten bytes.
    JumpTableIntoRegion {
        /// The table.
        table: u64,
        /// The entry's destination.
        target: u64,
    },
    /// Code or data takes the address of a byte inside the overwritten bytes
    /// (a RIP-relative `lea`, an absolute immediate or pointer, a dynamic
    /// relocation): something may jump there indirectly.
    AddressTakenInRegion {
        /// The instruction, data word or relocated slot holding the address.
        at: u64,
        /// The address.
        target: u64,
    },
    /// An exception landing pad (`.gcc_except_table`) lies inside the
    /// overwritten bytes.
    LandingPadInRegion {
        /// The landing pad.
        target: u64,
    },
    /// Another `.eh_frame` range starts inside the overwritten bytes: that is
    /// another function's entry.
    FdeStartsInRegion {
        /// Where it starts.
        start: u64,
    },
    /// Another symbol starts inside the overwritten bytes: a second entry
    /// point.
    SymbolInRegion {
        /// Its name.
        name: String,
        /// Its address.
        addr: u64,
    },
    /// The function's body does not decode linearly, so its branches cannot
    /// all be known (data in text, or a wrong symbol size).
    BodyUndecodable {
        /// The first byte that does not decode.
        at: u64,
    },
    /// The function's exception table could not be read, so its landing pads
    /// are unknown.
    ExceptionTableUnreadable,
    /// A rel32 field of the detour would not reach its target from the
    /// detour address given (it must be within ±2 GiB of everything the
    /// relocated instructions refer to; see
    /// [`Prologue::detour_window`](crate::Prologue::detour_window)).
    OutOfReach {
        /// The original instruction (or the site's end, for the jump back).
        at: u64,
        /// The address the field must reach.
        target: u64,
    },
}

/// Why one instruction cannot be moved out of line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unrelocatable {
    /// A call that is not the last overwritten instruction: its return
    /// address would lie inside the overwritten bytes.
    CallNotLast,
    /// An indirect call whose operand uses `rsp`: emulating it out of line
    /// pushes the return address first, which moves the operand.
    CallThroughStack,
    /// `syscall`/`sysenter`: the kernel sees (and saves in `rcx`) the
    /// detour's address, and a thread may sleep inside the detour for
    /// arbitrarily long.
    SystemCall,
    /// `int3`, `int n`, `ud2` and friends: whoever handles the trap expects
    /// it at its original address (and `int3` there is likely another tool's
    /// breakpoint).
    Trap,
    /// `xbegin`: its abort path is relative and transactions out of line are
    /// not worth the risk.
    Xbegin,
    /// A far or privileged control transfer (`jmp far`, `iret`, `sysret`...).
    FarOrPrivileged,
    /// An `eip`-relative operand (`addr32` prefix): the detour's address
    /// would have to fit in 32 bits.
    EipRelative,
    /// A branch in the overwritten bytes lands in the middle of one of them.
    BranchIntoInsn,
    /// A relative branch with a 16- or 32-bit operand size (`66`/`67`
    /// prefix), which truncates the instruction pointer.
    BranchOperandSize,
}

impl Refusal {
    /// A short stable key for grouping refusals (benchmarks, summaries).
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::IfuncResolver => "ifunc-resolver",
            Refusal::Plt => "plt",
            Refusal::ColdPart => "cold-part",
            Refusal::MidFrame => "mid-frame",
            Refusal::JumpedIntoOnly => "jumped-into-only",
            Refusal::SignalTrampoline => "signal-trampoline",
            Refusal::Outermost => "outermost",
            Refusal::UnknownSize => "unknown-size",
            Refusal::NotCode => "not-code",
            Refusal::TooShort { .. } => "too-short",
            Refusal::Undecodable { .. } => "undecodable",
            Refusal::Unrelocatable { why, .. } => why.kind(),
            Refusal::BranchIntoRegion { .. } => "branch-into-region",
            Refusal::BranchToEntry { .. } => "branch-to-entry",
            Refusal::JumpTableIntoRegion { .. } => "jump-table-into-region",
            Refusal::AddressTakenInRegion { .. } => "address-taken-in-region",
            Refusal::LandingPadInRegion { .. } => "landing-pad-in-region",
            Refusal::FdeStartsInRegion { .. } => "fde-in-region",
            Refusal::SymbolInRegion { .. } => "symbol-in-region",
            Refusal::BodyUndecodable { .. } => "body-undecodable",
            Refusal::ExceptionTableUnreadable => "exception-table-unreadable",
            Refusal::OutOfReach { .. } => "out-of-reach",
        }
    }

    /// Whether this says the candidate is not a function to trace at all
    /// (as opposed to a function whose prologue cannot be relocated).
    pub fn is_exclusion(&self) -> bool {
        matches!(
            self,
            Refusal::IfuncResolver
                | Refusal::Plt
                | Refusal::ColdPart
                | Refusal::MidFrame
                | Refusal::JumpedIntoOnly
                | Refusal::SignalTrampoline
                | Refusal::Outermost
                | Refusal::NotCode
        )
    }
}

impl Unrelocatable {
    /// A short stable key for grouping.
    pub fn kind(self) -> &'static str {
        match self {
            Unrelocatable::CallNotLast => "call-not-last",
            Unrelocatable::CallThroughStack => "call-through-stack",
            Unrelocatable::SystemCall => "syscall",
            Unrelocatable::Trap => "trap",
            Unrelocatable::Xbegin => "xbegin",
            Unrelocatable::FarOrPrivileged => "far-or-privileged",
            Unrelocatable::EipRelative => "eip-relative",
            Unrelocatable::BranchIntoInsn => "branch-into-insn",
            Unrelocatable::BranchOperandSize => "branch-operand-size",
        }
    }
}

impl fmt::Display for Unrelocatable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unrelocatable::CallNotLast => {
                "a call before the end of the overwritten bytes would return into them"
            }
            Unrelocatable::CallThroughStack => "an indirect call through the stack",
            Unrelocatable::SystemCall => "a system call (the kernel sees and saves its address)",
            Unrelocatable::Trap => "a trapping instruction (its handler expects it in place)",
            Unrelocatable::Xbegin => "a transaction start (xbegin)",
            Unrelocatable::FarOrPrivileged => "a far or privileged control transfer",
            Unrelocatable::EipRelative => "an eip-relative operand",
            Unrelocatable::BranchIntoInsn => {
                "a branch into the middle of another overwritten instruction"
            }
            Unrelocatable::BranchOperandSize => "a branch with a truncating operand size",
        })
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::IfuncResolver => f.write_str("an ifunc resolver, not the function it selects"),
            Refusal::Plt => f.write_str("a PLT stub, not a function"),
            Refusal::ColdPart => f.write_str("the cold part of another function (entered by a jump, not a call)"),
            Refusal::MidFrame => f.write_str(
                "starts inside another function's frame (unwind info), so it is not an entry",
            ),
            Refusal::SignalTrampoline => f.write_str(
                "a signal-return trampoline (entered by a handler's return, not a call)",
            ),
            Refusal::Outermost => f.write_str(
                "an outermost frame (no return address: entered by the kernel or a new thread)",
            ),
            Refusal::JumpedIntoOnly => f.write_str(
                "unnamed code only entered by conditional jumps from other functions (a cold part)",
            ),
            Refusal::UnknownSize => f.write_str("size unknown (symbol size 0 and no unwind range)"),
            Refusal::NotCode => f.write_str("not in an executable section"),
            Refusal::TooShort { size, needed } => write!(
                f,
                "too short: {size} bytes, and the jump needs {needed} (whole instructions)"
            ),
            Refusal::Undecodable { at } => write!(f, "the instruction at {at:#x} does not decode"),
            Refusal::Unrelocatable { at, insn, why } => {
                write!(f, "`{insn}` at {at:#x} cannot be moved: {why}")
            }
            Refusal::BranchIntoRegion { from, target } => write!(
                f,
                "the branch at {from:#x} lands at {target:#x}, inside the bytes the jump overwrites"
            ),
            Refusal::BranchToEntry { from } => write!(
                f,
                "the jump at {from:#x} loops back to the entry (every iteration would count as a call)"
            ),
            Refusal::JumpTableIntoRegion { table, target } => write!(
                f,
                "the jump table at {table:#x} has an entry {target:#x} inside the bytes the jump overwrites"
            ),
            Refusal::AddressTakenInRegion { at, target } => write!(
                f,
                "{at:#x} holds the address {target:#x}, inside the bytes the jump overwrites"
            ),
            Refusal::LandingPadInRegion { target } => write!(
                f,
                "an exception landing pad at {target:#x} is inside the bytes the jump overwrites"
            ),
            Refusal::FdeStartsInRegion { start } => write!(
                f,
                "an unwind range starts at {start:#x}, inside the bytes the jump overwrites"
            ),
            Refusal::SymbolInRegion { name, addr } => write!(
                f,
                "the symbol {name} at {addr:#x} is inside the bytes the jump overwrites (a second entry)"
            ),
            Refusal::BodyUndecodable { at } => write!(
                f,
                "the body does not decode at {at:#x}, so its branches are unknown"
            ),
            Refusal::ExceptionTableUnreadable => {
                f.write_str("its exception table cannot be read, so its landing pads are unknown")
            }
            Refusal::OutOfReach { at, target } => write!(
                f,
                "from the detour, the instruction at {at:#x} cannot reach {target:#x} (rel32)"
            ),
        }
    }
}

impl std::error::Error for Refusal {}
