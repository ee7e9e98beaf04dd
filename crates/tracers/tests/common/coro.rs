//! Coroutines on their own stacks, switched with `swapcontext`, as
//! ucontext-based green threads do: a round-robin scheduler on one thread.
//! A coroutine's panic is caught at its base (unwinding never crosses a
//! stack switch) and reported to the scheduler.

#![allow(dead_code)]

use std::cell::Cell;

/// Bytes of each coroutine's stack (adjacent heap allocations: stacks of
/// different coroutines lie close together).
pub const STACK: usize = 256 << 10;

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

/// Coroutines made and ready to run: making them allocates, running them
/// does not (a test can block signals whose handlers allocate around
/// [`Coros::new`] only).
pub struct Coros(Box<Scheduler>);

impl Coros {
    /// Makes a coroutine of each body.
    pub fn new(bodies: Vec<Box<dyn FnOnce()>>) -> Coros {
        let mut s = Box::new(Scheduler {
            // SAFETY: all-zero is a valid ucontext_t to overwrite.
            main: unsafe { std::mem::zeroed() },
            coros: Vec::with_capacity(bodies.len()),
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
        Coros(s)
    }

    /// Runs the coroutines, round-robin, until all finish. Allocates
    /// nothing.
    pub fn run(&mut self) {
        let s = &mut *self.0;
        let prev = SCHED.with(|p| p.replace(s));
        loop {
            let mut live = false;
            for i in 0..s.coros.len() {
                if s.coros[i].done {
                    continue;
                }
                s.current = i;
                let c: *const libc::ucontext_t = &s.coros[i].ctx;
                // SAFETY: switches to a coroutine made in `new`, which
                // switches back to `main` when it yields or ends.
                unsafe { libc::swapcontext(&mut s.main, c) };
                live |= !s.coros[i].done;
            }
            if !live {
                break;
            }
        }
        SCHED.with(|p| p.set(prev));
    }

    /// Whether coroutine `i` panicked.
    pub fn panicked(&self, i: usize) -> bool {
        self.0.coros[i].panicked
    }
}

/// Runs `bodies` as coroutines, round-robin, until all finish; returns
/// which ones panicked.
pub fn run(bodies: Vec<Box<dyn FnOnce()>>) -> Vec<bool> {
    let n = bodies.len();
    let mut c = Coros::new(bodies);
    c.run();
    (0..n).map(|i| c.panicked(i)).collect()
}
