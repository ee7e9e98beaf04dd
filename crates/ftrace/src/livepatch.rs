//! Live patching: an IPMODIFY ops that sends every call of a function to a
//! replacement of the same type, and the decoding that finds the site a
//! `#[traced]` wrapper calls (so a wrapper's address names its body).

use crate::{core, register, unregister, Error, Ops, Pattern};

/// Redirects every call of a function to a replacement of the same type, and
/// back with [`LivePatch::revert`].
pub struct LivePatch {
    ops: Ops,
    reverted: bool,
}

impl LivePatch {
    /// The ops doing the redirection (it is an IPMODIFY ops).
    pub fn ops(&self) -> &Ops {
        &self.ops
    }

    /// Sends calls back to the original function. Returns once no thread
    /// can still be on its way to the replacement through the patch.
    pub fn revert(mut self) -> Result<(), Error> {
        self.reverted = true;
        unregister(&self.ops)
    }

    /// Leaves the patch in place for the rest of the process's life.
    pub fn forget(mut self) {
        self.reverted = true;
    }
}

impl Drop for LivePatch {
    fn drop(&mut self) {
        if !self.reverted {
            let _ = unregister(&self.ops);
        }
    }
}

/// Redirects every call of `original` to `replacement`. Both are function
/// pointers of the same type `F` — so a mismatch of signatures is a compile
/// error: `livepatch::<fn(u32) -> u32>(old, new)`. The running function is
/// redirected live: during the switch each call runs the old or the new
/// body; once this returns, only the new one.
pub fn livepatch<F: Copy>(original: F, replacement: F) -> Result<LivePatch, Error> {
    const {
        assert!(
            std::mem::size_of::<F>() == std::mem::size_of::<usize>(),
            "livepatch takes function pointers"
        )
    };
    // SAFETY: F is pointer-sized (checked above); for a function pointer
    // this is its address. Anything else is caught below: it names no
    // traceable function.
    let (o, r) = unsafe {
        (
            std::mem::transmute_copy::<F, usize>(&original),
            std::mem::transmute_copy::<F, usize>(&replacement),
        )
    };
    livepatch_addr(o, r)
}

/// [`livepatch`] by address, for callers that have checked the signatures
/// themselves (the control socket checks the records' signatures).
pub fn livepatch_addr(original: usize, replacement: usize) -> Result<LivePatch, Error> {
    let (site, name) = {
        let g = core()?;
        let c = g.as_ref().expect("initialised");
        let i = c
            .record_at(original)
            .ok_or(Error::NoSuchFunction(original))?;
        (c.table.record(i).ip(), c.table.name(i).to_string())
    };
    let ops = Ops::builder(format!("livepatch:{name}"))
        .filter(Pattern::Addr(site))
        .redirect_to(replacement)
        .build(|_| {});
    register(&ops)?;
    Ok(LivePatch {
        ops,
        reverted: false,
    })
}

/// Looks through the first instructions at `addr` for the site a wrapper
/// calls: `call`/`jmp rel32` (optimised builds), `lea r64, [rip + disp32]`
/// followed by an indirect call (unoptimised builds), or `mov r64, [rip +
/// disp32]` loading it from the GOT (calls across crates). A candidate
/// counts only if it is exactly the address of a known site, so stray
/// byte patterns inside other instructions cannot match anything else.
pub(crate) fn wrapper_target(addr: usize, find: impl Fn(usize) -> Option<usize>) -> Option<usize> {
    const SCAN: usize = 96;
    let code = (0..=SCAN)
        .rev()
        .step_by(16)
        .find_map(|n| livetrace_poke::read_text(addr, n).ok())?;
    let rel = |at: usize| -> Option<usize> {
        let d = i32::from_le_bytes(code.get(at..at + 4)?.try_into().ok()?);
        Some((addr + at + 4).wrapping_add(d as isize as usize))
    };
    for i in 0..code.len() {
        let direct = matches!(code[i], 0xe8 | 0xe9).then(|| rel(i + 1)).flatten();
        if let Some(i) = direct.and_then(&find) {
            return Some(i);
        }
        // REX.W (+R) 8d/8b with ModRM mod=00 rm=101: RIP-relative.
        let rip_rel = matches!(code[i], 0x48 | 0x4c)
            && code.get(i + 2).is_some_and(|m| m & 0xc7 == 0x05)
            && matches!(code.get(i + 1), Some(0x8d | 0x8b));
        if rip_rel {
            let Some(t) = rel(i + 3) else { continue };
            let target = if code[i + 1] == 0x8d {
                Some(t)
            } else {
                // The GOT is data: a checked read, since a byte pattern
                // found by scanning may point anywhere.
                livetrace_poke::read_memory(t, 8)
                    .ok()
                    .map(|b| usize::from_le_bytes(b.try_into().expect("8 bytes")))
            };
            if let Some(i) = target.and_then(&find) {
                return Some(i);
            }
        }
    }
    None
}
