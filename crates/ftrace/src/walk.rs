//! The list walker: what the shared callers run, and the regs caller's
//! entry inside a callback.

use std::sync::atomic::{AtomicPtr, Ordering::*};
use std::sync::Arc;

use crate::ops::{self, OpsInner};
use crate::Regs;

/// The registered ops, as the list walker reads it.
pub(crate) struct OpsList {
    pub(crate) ops: Vec<Arc<OpsInner>>,
}

pub(crate) static LIST: AtomicPtr<OpsList> = AtomicPtr::new(std::ptr::null_mut());

/// The list caller's entry (a fast trampoline): see [`list_entry`].
pub(crate) extern "C" fn list_entry_fast(data: usize, slot: *mut usize) {
    // SAFETY: the trampoline passes its return slot, on the live stack for
    // the whole call (site + 5 there, the caller's return address above).
    let (ip, parent_slot) = unsafe { (slot.read() - 5, slot.add(1)) };
    list_entry(data, ip, parent_slot, std::ptr::null_mut());
}

/// Walks every registered ops and delivers the call to those whose set holds
/// `ip`: the body of the list caller and of the regs caller.
pub(crate) extern "C" fn list_entry(
    _data: usize,
    ip: usize,
    parent_slot: *mut usize,
    regs: *mut Regs,
) {
    walk(ip, parent_slot, regs, false);
}

/// The full caller's entry: the list walk, telling each callback that the
/// function's callers keep values in every register
/// ([`Call::preserves_all`](crate::Call::preserves_all)).
pub(crate) extern "C" fn list_entry_full(
    _data: usize,
    ip: usize,
    parent_slot: *mut usize,
    regs: *mut Regs,
) {
    walk(ip, parent_slot, regs, true);
}

fn walk(ip: usize, parent_slot: *mut usize, regs: *mut Regs, full: bool) {
    let list = LIST.load(Acquire);
    if list.is_null() {
        return;
    }
    // SAFETY: a published list is freed only after a quiescence wait, and
    // this thread is inside a callback (its inside byte set) until it
    // returns.
    let list = unsafe { &*list };
    // SAFETY: the regs caller passes its frame's Regs, or null.
    let mut regs = unsafe { regs.as_mut() };
    for ops in &list.ops {
        let set = ops.funcs.load(Acquire);
        // SAFETY: as for the list: replaced sets are freed after a wait.
        if !set.is_null() && unsafe { &*set }.contains(ip) {
            let mut r = if ops.regs { regs.as_deref_mut() } else { None };
            if let (Some(t), Some(r)) = (ops.redirect, r.as_deref_mut()) {
                r.ip = t as u64;
            }
            ops::deliver(ops, ip, parent_slot, r, full);
        }
    }
}

/// The regs caller's entry inside a callback (the recursion guard set):
/// no callback runs, but redirections declared as data
/// ([`OpsBuilder::redirect_to`](crate::OpsBuilder::redirect_to), live
/// patches) are applied, so a live patch holds for every caller. Runs with
/// the thread inside a callback, like the list walk, so what it reads
/// stays alive.
pub(crate) extern "C" fn guarded_entry(
    _data: usize,
    ip: usize,
    _parent_slot: *mut usize,
    regs: *mut Regs,
) {
    let list = LIST.load(Acquire);
    if list.is_null() {
        return;
    }
    // SAFETY: as in `list_entry`: the thread's inside byte is set (by the
    // callback or fast path this call interrupted or came from).
    let list = unsafe { &*list };
    // SAFETY: the regs caller passes its frame's Regs.
    let Some(regs) = (unsafe { regs.as_mut() }) else {
        return;
    };
    for ops in &list.ops {
        let Some(t) = ops.redirect else { continue };
        let set = ops.funcs.load(Acquire);
        // SAFETY: as in `list_entry`.
        if !set.is_null() && unsafe { &*set }.contains(ip) {
            regs.ip = t as u64;
            return;
        }
    }
}
