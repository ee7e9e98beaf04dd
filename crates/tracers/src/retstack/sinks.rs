//! Sinks by id. Hooked frames may outlive what they report to (a traced
//! `main` returns when the program ends), so a frame names its sink by id
//! and the exit path looks the id up in a published registry. The registry
//! is read with tracing suppressed, so the core's quiescence wait covers
//! its readers: a sink is unpublished, waited for, and only then freed.

use super::handler::{slow_exit_code, VECTOR_STATE};
use super::Sink;

struct Registry {
    sinks: Vec<(u32, *const dyn Sink)>,
}

static REGISTRY: std::sync::atomic::AtomicPtr<Registry> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());
static REGISTRY_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub(super) fn lookup_sink(id: u32) -> Option<&'static dyn Sink> {
    let r = REGISTRY.load(std::sync::atomic::Ordering::Acquire);
    if r.is_null() {
        return None;
    }
    // SAFETY: a published registry, and every sink in it, is freed only
    // after a quiescence wait, which waits for this (suppressed) thread.
    let r = unsafe { &*r };
    r.sinks.iter().find(|(i, _)| *i == id).map(|&(_, p)| {
        // SAFETY: as above.
        unsafe { &*p }
    })
}

/// Registries replaced since the last wait, and whether a sink left.
struct Graveyard(Vec<*mut Registry>);
// SAFETY: the pointers are owned boxes only touched under REGISTRY_LOCK.
unsafe impl Send for Graveyard {}
static GRAVEYARD: std::sync::Mutex<Graveyard> = std::sync::Mutex::new(Graveyard(Vec::new()));

/// Replaces the registry. Old registries are freed only when a sink is
/// removed (which must wait for quiescence anyway, before its owner frees
/// it): publishing a sink never probes the program's threads.
fn change_registry(change: impl FnOnce(&mut Vec<(u32, *const dyn Sink)>), removing: bool) -> bool {
    use std::sync::atomic::Ordering::{AcqRel, Acquire};
    let _g = REGISTRY_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let old = REGISTRY.load(Acquire);
    let mut sinks = if old.is_null() {
        Vec::new()
    } else {
        // SAFETY: replaced only under the lock we hold.
        unsafe { &*old }.sinks.clone()
    };
    change(&mut sinks);
    let old = REGISTRY.swap(Box::into_raw(Box::new(Registry { sinks })), AcqRel);
    let mut grave = GRAVEYARD.lock().unwrap_or_else(|e| e.into_inner());
    if !old.is_null() {
        grave.0.push(old);
    }
    if removing {
        // Exit paths may still hold an old registry, or the sink removed.
        if livetrace_ftrace::synchronize().is_err() {
            // The wait gave up: keep every old registry (and the caller
            // keeps the sink) rather than free what a thread may read.
            return false;
        }
        for r in grave.0.drain(..) {
            // SAFETY: from Box::into_raw above; no reader is left.
            drop(unsafe { Box::from_raw(r) });
        }
    }
    true
}

/// Publishes `sink` under `id` for hooked frames to report to.
///
/// # Safety
/// `sink` stays valid until [`unpublish_sink`]`(id)` has returned.
pub(crate) unsafe fn publish_sink(id: u32, sink: *const dyn Sink) {
    static HOOK_CODE: std::sync::Once = std::sync::Once::new();
    HOOK_CODE.call_once(|| {
        for code in slow_exit_code() {
            let _ = livetrace_ftrace::add_callback_caller(code);
        }
    });
    crate::unwind::resolve();
    VECTOR_STATE.store(
        livetrace_ftrace::vector_state() as u8,
        std::sync::atomic::Ordering::Relaxed,
    );
    change_registry(|v| v.push((id, sink)), false);
}

/// Removes sink `id`. Returns true when no exit path can still be using it;
/// false when the quiescence wait gave up — the caller must then keep the
/// sink alive (leak it) rather than free it.
#[must_use]
pub(crate) fn unpublish_sink(id: u32) -> bool {
    // The fast exit first: the wait below covers it too.
    crate::layout::remove_sink(id);
    change_registry(|v| v.retain(|(i, _)| *i != id), true)
}
