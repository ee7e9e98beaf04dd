//! Coroutines on their own stacks, switched with `swapcontext`, as
//! ucontext-based green threads do: a round-robin scheduler on one thread.
//! A coroutine's panic is caught at its base (unwinding never crosses a
//! stack switch) and reported to the scheduler.

#![allow(dead_code)]

use std::cell::Cell;

/// Bytes of each coroutine's stack (adjacent heap allocations: stacks of
/// different coroutines lie close together).
pub const STACK: usize = 64 << 10;

struct Coro {
    ctx: libc::ucontext_t,
    stack: Vec<u8>,
    body: Option<Box<dyn FnOnce()>>,
    done: bool,
    panicked: bool,
}

struct Scheduler {
    main: libc::ucontext_t,
    // Boxed: a ucontext_t points into itself and must never move.
    #[allow(clippy::vec_box)]
    coros: Vec<Box<Coro>>,
    current: usize,
}

thread_local! {
    static SCHED: Cell<*mut Scheduler> = const { Cell::new(std::ptr::null_mut()) };
}

/// Switches from the running coroutine back to the scheduler.
pub fn yield_now() {
    let s = SCHED.with(|s| s.get());
    assert!(!s.is_null(), "yield_now outside a coroutine");
    // SAFETY: the scheduler outlives its coroutines' runs; both contexts
    // were made by getcontext/makecontext and never moved (boxed).
    unsafe {
        let s = &mut *s;
        let c: *mut Coro = &mut *s.coros[s.current];
        libc::swapcontext(&mut (*c).ctx, &s.main);
    }
}

extern "C" fn start() {
    let s = SCHED.with(|s| s.get());
    // SAFETY: as in yield_now; this coroutine is the current one.
    let c: *mut Coro = unsafe {
        let s = &mut *s;
        &mut *s.coros[s.current]
    };
    // SAFETY: only this coroutine touches its own body and flags.
    let body = unsafe { (*c).body.take() }.expect("a body");
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
    // SAFETY: as above.
    unsafe {
        (*c).panicked = r.is_err();
        (*c).done = true;
        libc::swapcontext(&mut (*c).ctx, &(*s).main);
    }
    unreachable!("a finished coroutine was resumed");
}

/// Runs `bodies` as coroutines, round-robin, until all finish; returns
/// which ones panicked.
pub fn run(bodies: Vec<Box<dyn FnOnce()>>) -> Vec<bool> {
    let mut s = Box::new(Scheduler {
        // SAFETY: all-zero is a valid ucontext_t to overwrite.
        main: unsafe { std::mem::zeroed() },
        coros: Vec::new(),
        current: 0,
    });
    for body in bodies {
        let mut c = Box::new(Coro {
            // SAFETY: as above.
            ctx: unsafe { std::mem::zeroed() },
            stack: vec![0u8; STACK],
            body: Some(body),
            done: false,
            panicked: false,
        });
        // SAFETY: the context gets a stack that lives as long as it.
        unsafe {
            assert_eq!(libc::getcontext(&mut c.ctx), 0);
            c.ctx.uc_stack.ss_sp = c.stack.as_mut_ptr().cast();
            c.ctx.uc_stack.ss_size = STACK;
            c.ctx.uc_link = std::ptr::null_mut();
            libc::makecontext(&mut c.ctx, start, 0);
        }
        s.coros.push(c);
    }
    let prev = SCHED.with(|p| p.replace(&mut *s));
    loop {
        let mut live = false;
        for i in 0..s.coros.len() {
            if s.coros[i].done {
                continue;
            }
            s.current = i;
            let c: *const libc::ucontext_t = &s.coros[i].ctx;
            // SAFETY: switches to a coroutine made above, which switches
            // back to `main` when it yields or ends.
            unsafe { libc::swapcontext(&mut s.main, c) };
            live |= !s.coros[i].done;
        }
        if !live {
            break;
        }
    }
    SCHED.with(|p| p.set(prev));
    s.coros.iter().map(|c| c.panicked).collect()
}
