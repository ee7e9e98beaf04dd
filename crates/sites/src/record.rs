//! The hot per-site record: what the tracing core reads and updates on every
//! enable/disable, the kernel's `struct dyn_ftrace`. Names and source
//! positions live in a separate cold array so that walking the table to
//! (re)compute every site's instruction touches 32 bytes per site.

use livetrace_poke::Insn;

/// Identifies one loaded object (the executable or a shared library) for as
/// long as it stays loaded. Never reused within a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId(pub(crate) u32);

impl ObjectId {
    /// The raw number, for display.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// Where a site came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// `__patchable_function_entries` (gcc/clang `-fpatchable-function-entry`,
    /// rustc `-Zpatchable-function-entry`).
    Patchable,
    /// `__mcount_loc` (gcc `-pg -mfentry -mnop-mcount -mrecord-mcount`).
    Mcount,
    /// Described by the program itself (the `#[traced]` macro).
    Macro,
    /// Given by prologue relocation to a function compiled without a site:
    /// the site is the 5-byte NOP at the start of the function's detour
    /// (see [`crate::Relocated`]).
    Relocated,
}

/// What a site holds, as far as the table knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SiteState {
    /// One of the instructions the engine can rewrite live: the 5-byte NOP
    /// (disabled) or a `call`/`jmp` (enabled).
    Live(Insn),
    /// Accepted but not yet patchable: GCC's five one-byte NOPs, or a
    /// non-canonical 5-byte NOP (clang's `0f 1f 44 00 08`). Becomes
    /// `Live(Insn::Nop)` once converted (see [`crate::ConvertPolicy`]).
    Unconverted,
}

const F_CALL: u16 = 1 << 0;
const F_JMP: u16 = 1 << 1;
const F_REGS: u16 = 1 << 2;
const F_UNCONVERTED: u16 = 1 << 3;
const F_PRESERVE_ALL: u16 = 1 << 6;
const ORIGIN_SHIFT: u32 = 4;
const ORIGIN_MASK: u16 = 0b11 << ORIGIN_SHIFT;

/// One site's hot state. 32 bytes (checked at compile time below).
///
/// The instruction, address and object are owned by the table: they change
/// only through [`crate::Table::apply`] and conversion, which keep the
/// table's pinning invariant. The accounting fields (ops count, needs-regs,
/// ip-modify owner) belong to the tracing core and are set freely through
/// [`crate::Table::record_mut`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Record {
    ip: usize,
    /// Call/jmp target when `F_CALL`/`F_JMP` is set; zero otherwise.
    target: usize,
    nr_ops: u32,
    ipmodify_owner: u32,
    object: ObjectId,
    flags: u16,
}

const _: () = assert!(std::mem::size_of::<Record>() <= 32);

impl Record {
    pub(crate) fn new(ip: usize, object: ObjectId, origin: Origin, unconverted: bool) -> Record {
        let o = match origin {
            Origin::Patchable => 0,
            Origin::Mcount => 1,
            Origin::Macro => 2,
            Origin::Relocated => 3,
        };
        let mut flags = o << ORIGIN_SHIFT;
        if unconverted {
            flags |= F_UNCONVERTED;
        }
        Record {
            ip,
            target: 0,
            nr_ops: 0,
            ipmodify_owner: 0,
            object,
            flags,
        }
    }

    /// The site address: the first of its five bytes.
    pub fn ip(&self) -> usize {
        self.ip
    }

    /// The object the site's code belongs to.
    pub fn object(&self) -> ObjectId {
        self.object
    }

    /// How the site was discovered.
    pub fn origin(&self) -> Origin {
        match (self.flags & ORIGIN_MASK) >> ORIGIN_SHIFT {
            0 => Origin::Patchable,
            1 => Origin::Mcount,
            2 => Origin::Macro,
            _ => Origin::Relocated,
        }
    }

    /// Whether the function's callers may keep values in any register
    /// across a call to it, not only in those the ABI says a call keeps: a
    /// relocated function called directly from its own object and not known
    /// to clobber every call-clobbered register (see
    /// `livetrace_reloc::Candidate::callers_keep_registers`). The tracing
    /// core then serves it with a trampoline that keeps every register.
    pub fn preserves_all(&self) -> bool {
        self.flags & F_PRESERVE_ALL != 0
    }

    pub(crate) fn set_preserves_all(&mut self) {
        self.flags |= F_PRESERVE_ALL;
    }

    /// What the site holds.
    pub fn state(&self) -> SiteState {
        if self.flags & F_UNCONVERTED != 0 {
            SiteState::Unconverted
        } else {
            SiteState::Live(self.insn())
        }
    }

    /// The instruction the site holds (`Nop` for unconverted sites, which
    /// behave as NOPs but cannot be rewritten live).
    pub fn insn(&self) -> Insn {
        if self.flags & F_CALL != 0 {
            Insn::Call(self.target)
        } else if self.flags & F_JMP != 0 {
            Insn::Jmp(self.target)
        } else {
            Insn::Nop
        }
    }

    /// Whether the site holds a call or jump (its object is then pinned).
    pub fn is_enabled(&self) -> bool {
        self.flags & (F_CALL | F_JMP) != 0
    }

    /// Whether the engine may rewrite the site live.
    pub fn is_live(&self) -> bool {
        self.flags & F_UNCONVERTED == 0
    }

    pub(crate) fn set_insn(&mut self, insn: Insn) {
        self.flags &= !(F_CALL | F_JMP);
        self.target = 0;
        match insn {
            Insn::Nop => {}
            Insn::Call(t) => {
                self.flags |= F_CALL;
                self.target = t;
            }
            Insn::Jmp(t) => {
                self.flags |= F_JMP;
                self.target = t;
            }
        }
    }

    pub(crate) fn set_converted(&mut self) {
        self.flags &= !F_UNCONVERTED;
    }

    /// Copies the tracing core's accounting from another record (the same
    /// site seen again by a rescan).
    pub(crate) fn take_accounting(&mut self, from: &Record) {
        self.nr_ops = from.nr_ops;
        self.ipmodify_owner = from.ipmodify_owner;
        self.flags = (self.flags & !F_REGS) | (from.flags & F_REGS);
    }

    /// Number of tracing ops attached to the site.
    pub fn nr_ops(&self) -> u32 {
        self.nr_ops
    }

    /// Sets the number of ops attached.
    pub fn set_nr_ops(&mut self, n: u32) {
        self.nr_ops = n;
    }

    /// Whether some attached op needs the full register set saved.
    pub fn needs_regs(&self) -> bool {
        self.flags & F_REGS != 0
    }

    /// Sets the needs-regs flag.
    pub fn set_needs_regs(&mut self, on: bool) {
        if on {
            self.flags |= F_REGS;
        } else {
            self.flags &= !F_REGS;
        }
    }

    /// The id of the op that owns the right to modify the return address
    /// (live patching), if any. At most one op may own it.
    pub fn ipmodify_owner(&self) -> Option<u32> {
        (self.ipmodify_owner != 0).then_some(self.ipmodify_owner)
    }

    /// Sets or clears the ip-modify owner. Id 0 is reserved for "none".
    pub fn set_ipmodify_owner(&mut self, owner: Option<u32>) {
        self.ipmodify_owner = owner.unwrap_or(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_state_is_at_most_32_bytes() {
        assert!(
            std::mem::size_of::<Record>() <= 32,
            "{}",
            std::mem::size_of::<Record>()
        );
        assert_eq!(std::mem::align_of::<Record>(), 8);
    }

    #[test]
    fn fields_round_trip() {
        let mut r = Record::new(0x1000, ObjectId(7), Origin::Mcount, true);
        assert_eq!(r.origin(), Origin::Mcount);
        assert_eq!(r.state(), SiteState::Unconverted);
        assert!(!r.is_live());
        r.set_converted();
        assert_eq!(r.state(), SiteState::Live(Insn::Nop));
        r.set_insn(Insn::Call(0x2000));
        assert!(r.is_enabled());
        assert_eq!(r.insn(), Insn::Call(0x2000));
        r.set_insn(Insn::Jmp(0x3000));
        assert_eq!(r.insn(), Insn::Jmp(0x3000));
        r.set_needs_regs(true);
        r.set_ipmodify_owner(Some(5));
        r.set_nr_ops(3);
        assert!(r.needs_regs());
        assert_eq!(r.ipmodify_owner(), Some(5));
        assert_eq!(r.origin(), Origin::Mcount);
        r.set_insn(Insn::Nop);
        assert!(!r.is_enabled());
        assert!(r.needs_regs());
        r.set_needs_regs(false);
        assert!(!r.needs_regs());
        assert_eq!(r.nr_ops(), 3);
        assert_eq!(r.object(), ObjectId(7));
        for o in [Origin::Patchable, Origin::Macro] {
            assert_eq!(Record::new(0, ObjectId(0), o, false).origin(), o);
        }
    }
}
