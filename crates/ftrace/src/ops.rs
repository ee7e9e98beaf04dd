//! `Ops`: a callback, the functions it wants, and what it needs.

use std::fmt;
use std::sync::atomic::{AtomicPtr, Ordering::*};
use std::sync::{Arc, Mutex};

use crate::Regs;

/// One way of naming functions in a filter.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// A glob over full names: `*` any run, `?` one character
    /// (`parser::*`, `*alloc*`).
    Glob(String),
    /// An exact full name (`app::parser::parse`) or raw symbol name; it
    /// may end in a [`livetrace_sites::Disambiguator`] that picks one of
    /// several functions of that name: `NAME[h0123456789abcdef]` (the
    /// legacy Rust hash) or `NAME@0xADDR` (its site or entry).
    Name(String),
    /// A function by its address (its site, or its entry).
    Addr(usize),
}

impl Pattern {
    /// Reads a pattern the way the command line writes one: `0x…` is an
    /// address; a name with a disambiguator (`NAME[h<hash>]`,
    /// `NAME@0xADDR`) is a name even when it holds `*` or `?` (`*const T`
    /// in a Rust name), since it picks one function; anything else with
    /// `*` or `?` is a glob, and the rest a name.
    pub fn parse(s: &str) -> Pattern {
        if let Some(hex) = s.strip_prefix("0x") {
            if let Ok(a) = usize::from_str_radix(hex, 16) {
                return Pattern::Addr(a);
            }
        }
        if s.contains(['*', '?']) && livetrace_sites::Disambiguator::split(s).is_none() {
            Pattern::Glob(s.to_string())
        } else {
            Pattern::Name(s.to_string())
        }
    }
}

impl From<&str> for Pattern {
    fn from(s: &str) -> Pattern {
        Pattern::parse(s)
    }
}

impl From<usize> for Pattern {
    fn from(a: usize) -> Pattern {
        Pattern::Addr(a)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Glob(g) => f.write_str(g),
            Pattern::Name(n) => f.write_str(n),
            Pattern::Addr(a) => write!(f, "{a:#x}"),
        }
    }
}

/// What the trampoline passes to a callback for one call.
pub struct Call<'a> {
    pub(crate) ip: usize,
    pub(crate) parent_slot: *mut usize,
    pub(crate) regs: Option<&'a mut Regs>,
    pub(crate) ops: &'a OpsInner,
    pub(crate) full: bool,
}

impl Call<'_> {
    /// The traced function's address (its site).
    pub fn ip(&self) -> usize {
        self.ip
    }

    /// Where the traced function will return to: the caller's address just
    /// past its `call`.
    pub fn parent_ip(&self) -> usize {
        // SAFETY: the trampoline passes the address of the traced function's
        // return-address slot on the live stack, valid for the whole call.
        unsafe { *self.parent_slot }
    }

    /// The slot on the stack holding the return address into the caller.
    /// Writing it hooks the function's return (the function-graph tracer's
    /// `return_to_handler`); whoever writes it must make the original return
    /// address reachable again before that return happens.
    pub fn return_slot(&self) -> *mut usize {
        self.parent_slot
    }

    /// The full register set, when the ops asked for it
    /// ([`OpsBuilder::regs`] or [`OpsBuilder::ipmodify`]); changes are
    /// restored into the function.
    pub fn regs(&mut self) -> Option<&mut Regs> {
        self.regs.as_deref_mut()
    }

    /// The name of the ops this call is delivered to.
    pub fn ops_name(&self) -> &str {
        &self.ops.name
    }

    /// Whether the function's callers may keep values in *any* register
    /// across the call, not only in those the ABI says a call preserves:
    /// true for a function relocated to get a site that its own object
    /// calls directly and that clobbers less than every call-clobbered
    /// register — those callers were compiled knowing it had no site (gcc's
    /// `-fipa-ra` keeps values in the registers a local callee does not
    /// touch). The trampoline saved and
    /// restores the whole register state around this callback; code that
    /// runs at the function's *return* (a hook written into
    /// [`Call::return_slot`]) must do the same.
    pub fn preserves_all(&self) -> bool {
        self.full
    }
}

/// A callback: receives every call of the functions its ops is attached to.
/// It runs on the calling thread, before the function body, with this
/// thread's traced calls suppressed (a traced function it calls runs
/// untraced, and the drop is counted).
pub type Callback = dyn Fn(&mut Call<'_>) + Send + Sync + 'static;

/// The functions an ops is attached to, as published to the list walker:
/// sorted sites.
pub(crate) struct FuncSet {
    pub sites: Vec<usize>,
}

impl FuncSet {
    pub fn contains(&self, ip: usize) -> bool {
        self.sites.binary_search(&ip).is_ok()
    }
}

pub(crate) struct Spec {
    pub filter: Vec<Pattern>,
    pub notrace: Vec<Pattern>,
}

/// The shared body of an [`Ops`].
pub struct OpsInner {
    pub(crate) id: u32,
    pub(crate) name: String,
    pub(crate) callback: Box<Callback>,
    /// What a dedicated trampoline calls: `entry::<F>` for the callback's
    /// own type, so the callback is called directly, not through a vtable.
    pub(crate) entry: crate::tramp::FastEntryFn,
    pub(crate) regs: bool,
    pub(crate) ipmodify: bool,
    /// Where every call resumes, for an ops built with
    /// [`OpsBuilder::redirect_to`]: applied even inside callbacks.
    pub(crate) redirect: Option<usize>,
    /// Machine code serving this ops alone on a function, if it has any.
    pub(crate) fast: Option<crate::FastPath>,
    pub(crate) spec: Mutex<Spec>,
    /// The published function set (read by the list walker, lock-free).
    pub(crate) funcs: AtomicPtr<FuncSet>,
}

impl Drop for OpsInner {
    fn drop(&mut self) {
        let p = *self.funcs.get_mut();
        if !p.is_null() {
            // SAFETY: `funcs` always holds null or a pointer from
            // Box::into_raw, owned by this ops.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

/// A tracing client: a callback plus the functions it wants. Cheap to clone;
/// [`crate::register`] attaches it, [`crate::unregister`] detaches it.
#[derive(Clone)]
pub struct Ops(pub(crate) Arc<OpsInner>);

impl fmt::Debug for Ops {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ops")
            .field("id", &self.0.id)
            .field("name", &self.0.name)
            .field("regs", &self.0.regs)
            .field("ipmodify", &self.0.ipmodify)
            .finish()
    }
}

impl Ops {
    /// Starts an ops named `name` (shown by introspection and in errors).
    pub fn builder(name: impl Into<String>) -> OpsBuilder {
        OpsBuilder {
            name: name.into(),
            filter: Vec::new(),
            notrace: Vec::new(),
            regs: false,
            ipmodify: false,
            redirect: None,
            fast: None,
        }
    }

    /// The ops' name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The ops' unique id.
    pub fn id(&self) -> u32 {
        self.0.id
    }

    /// The filter and notrace patterns in force.
    pub fn patterns(&self) -> (Vec<Pattern>, Vec<Pattern>) {
        let s = self.0.spec.lock().unwrap_or_else(|e| e.into_inner());
        (s.filter.clone(), s.notrace.clone())
    }
}

/// Builds an [`Ops`].
pub struct OpsBuilder {
    name: String,
    filter: Vec<Pattern>,
    notrace: Vec<Pattern>,
    regs: bool,
    ipmodify: bool,
    redirect: Option<usize>,
    fast: Option<crate::FastPath>,
}

impl OpsBuilder {
    /// Adds functions to trace. With no filter at all, an ops traces every
    /// function the process has.
    pub fn filter(mut self, p: impl Into<Pattern>) -> Self {
        self.filter.push(p.into());
        self
    }

    /// Adds functions never to trace, even when the filter names them.
    pub fn notrace(mut self, p: impl Into<Pattern>) -> Self {
        self.notrace.push(p.into());
        self
    }

    /// The callback needs the full register set (served by the regs caller).
    pub fn regs(mut self) -> Self {
        self.regs = true;
        self
    }

    /// The callback changes where the function resumes (live patching).
    /// Only one such ops may be attached to any function.
    pub fn ipmodify(mut self) -> Self {
        self.ipmodify = true;
        self.regs = true;
        self
    }

    /// Every call of the ops' functions resumes at `target` (a function of
    /// the same signature) instead of the body: an IPMODIFY ops whose
    /// redirection is data, not code, so it holds in every context — also
    /// for calls made inside another ops' callback or a signal handler that
    /// interrupted one, where callbacks are not run (the recursion guard
    /// suppresses callbacks, not redirection). The callback still runs for
    /// the other calls, after the redirection is set, and may change
    /// `regs().ip` again. An IPMODIFY ops without it redirects only where
    /// its callback runs. What [`crate::livepatch()`] builds.
    pub fn redirect_to(mut self, target: usize) -> Self {
        self.redirect = Some(target);
        self.ipmodify().regs()
    }

    /// Serves this ops with `fast` on every function where it is the only
    /// ops (instead of its dedicated trampoline, which the fast path falls
    /// back on). The callback must do what the fast path does: it runs
    /// whenever the fast path cannot, and wherever this ops shares a
    /// function. Ignored for regs and IPMODIFY ops, which always go through
    /// the regs caller.
    pub fn fast_path(mut self, fast: crate::FastPath) -> Self {
        self.fast = Some(fast);
        self
    }

    /// Finishes the ops with its callback.
    pub fn build<F: Fn(&mut Call<'_>) + Send + Sync + 'static>(self, callback: F) -> Ops {
        static NEXT_ID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        Ops(Arc::new(OpsInner {
            id: NEXT_ID.fetch_add(1, Relaxed),
            name: self.name,
            callback: Box::new(callback),
            entry: entry::<F>,
            regs: self.regs,
            ipmodify: self.ipmodify,
            redirect: self.redirect,
            fast: self.fast,
            spec: Mutex::new(Spec {
                filter: self.filter,
                notrace: self.notrace,
            }),
            funcs: AtomicPtr::new(std::ptr::null_mut()),
        }))
    }
}

/// The entry of a dedicated trampoline for an ops whose callback is an `F`:
/// `data` is the ops, `slot` where the return address into the function is.
extern "C" fn entry<F: Fn(&mut Call<'_>) + Send + Sync + 'static>(data: usize, slot: *mut usize) {
    // SAFETY: a dedicated trampoline's data word is `Arc::as_ptr` of an ops
    // the core keeps alive until no thread can be inside the trampoline.
    let ops = unsafe { &*(data as *const OpsInner) };
    // SAFETY: `entry::<F>` is stored only by `build::<F>`, next to a
    // callback box that holds an `F`.
    let f = unsafe { &*(&*ops.callback as *const Callback as *const F) };
    // SAFETY: the trampoline passes its return slot, on the live stack for
    // the whole call; the site's call pushed site + 5 there, and the
    // caller's return address is the word above.
    let (ip, parent_slot) = unsafe { (slot.read() - 5, slot.add(1)) };
    let mut call = Call {
        ip,
        parent_slot,
        regs: None,
        ops,
        full: false,
    };
    // A panic must not unwind into the trampoline's assembly.
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut call))).is_err() {
        crate::fatal("an ops callback panicked");
    }
}

/// Delivers a call to an ops through its callback's vtable (the list walk).
#[inline]
pub(crate) fn deliver(
    ops: &OpsInner,
    ip: usize,
    parent_slot: *mut usize,
    regs: Option<&mut Regs>,
    full: bool,
) {
    let mut call = Call {
        ip,
        parent_slot,
        regs,
        ops,
        full,
    };
    // A panic must not unwind into the trampoline's assembly.
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (ops.callback)(&mut call))).is_err()
    {
        crate::fatal("an ops callback panicked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_parse_like_the_command_line() {
        assert_eq!(Pattern::parse("0x1234"), Pattern::Addr(0x1234));
        assert_eq!(
            Pattern::parse("parser::*"),
            Pattern::Glob("parser::*".into())
        );
        assert_eq!(Pattern::parse("a?c"), Pattern::Glob("a?c".into()));
        assert_eq!(
            Pattern::parse("app::main"),
            Pattern::Name("app::main".into())
        );
        assert_eq!(Pattern::parse("0xzz"), Pattern::Name("0xzz".into()));
        assert_eq!(Pattern::parse("0x10").to_string(), "0x10");
    }

    #[test]
    fn disambiguated_names_are_names_even_with_glob_characters() {
        for s in [
            "core::ptr::drop_in_place<foo::Bar>[h1a2b3c4d5e6f7a8b]",
            "core::ptr::drop_in_place<*const u8>[h1a2b3c4d5e6f7a8b]",
            "<T as core::any::Any>::type_id@0x55d0c0de1130",
            "f<*mut u8>@0x4011d0",
        ] {
            assert_eq!(Pattern::parse(s), Pattern::Name(s.into()), "{s}");
            assert_eq!(Pattern::parse(s).to_string(), s);
        }
        // Without a well-formed disambiguator, `*` still makes a glob.
        assert_eq!(
            Pattern::parse("drop_in_place<*const u8>[h12]"),
            Pattern::Glob("drop_in_place<*const u8>[h12]".into())
        );
        assert_eq!(
            Pattern::parse("*@0x4011d0x"),
            Pattern::Glob("*@0x4011d0x".into())
        );
    }
}
