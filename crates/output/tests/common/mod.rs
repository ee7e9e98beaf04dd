//! Synthetic traces shared by the integration tests. Times are offsets from
//! `T0` in ns; the expected numbers in the tests are worked out by hand from
//! the tables below.
#![allow(dead_code)]

use livetrace_output::{Event, Mapping, Symbols, ThreadTrace, Trace};

pub const T0: u64 = 1_000_000_000_000; // 1000 s of CLOCK_MONOTONIC
pub const PID: u32 = 4242;
pub const WORKER: u32 = 4243;

/// Where /usr/local/bin/demo's file starts in memory (PIE).
pub const EXE: u64 = 0x5555_5555_4000;
/// Where /usr/lib/libfoo.so's file starts.
pub const LIB: u64 = 0x7f00_0000_0000;

pub const MAIN: u64 = EXE + 0x1000;
pub const PARSE: u64 = EXE + 0x1100;
pub const LEX: u64 = EXE + 0x1180;
pub const FIB: u64 = EXE + 0x1200;
pub const WORKER_FN: u64 = EXE + 0x1300;
pub const LEAF: u64 = EXE + 0x1400;
pub const FOO: u64 = LIB + 0x2100;

pub fn symbols() -> Symbols {
    [
        (MAIN, 0x100, "main"),
        (PARSE, 0x80, "parse"),
        (LEX, 0x40, "lex"),
        (FIB, 0x60, "fib"),
        (WORKER_FN, 0x100, "worker"),
        (LEAF, 0x20, "leaf"),
        (FOO, 0x40, "foo_init"),
    ]
    .into_iter()
    .collect()
}

pub fn maps() -> Vec<Mapping> {
    vec![
        Mapping {
            start: EXE + 0x1000,
            end: EXE + 0x2000,
            offset: 0x1000,
            path: "/usr/local/bin/demo".into(),
        },
        Mapping {
            start: LIB + 0x2000,
            end: LIB + 0x3000,
            offset: 0x2000,
            path: "/usr/lib/libfoo.so".into(),
        },
    ]
}

fn entry(t: u64, func: u64, depth: u32) -> Event {
    Event::Entry {
        ts: T0 + t,
        func,
        depth,
    }
}

fn exit(t: u64, func: u64, depth: u32) -> Event {
    Event::Exit {
        ts: T0 + t,
        func,
        depth,
    }
}

fn call(t: u64, func: u64, caller: u64) -> Event {
    Event::Call {
        ts: T0 + t,
        func,
        caller,
    }
}

/// The main thread: nesting, recursion, a 200 us library call, and `main`
/// still running (no exit) when the trace was taken.
pub fn main_thread() -> ThreadTrace {
    ThreadTrace {
        tid: PID,
        name: "demo".into(),
        events: vec![
            entry(0, MAIN, 0),
            entry(100, PARSE, 1),
            entry(200, LEX, 2),
            exit(700, LEX, 2), // 500
            entry(800, LEX, 2),
            exit(1_000, LEX, 2),    // 200
            exit(26_000, PARSE, 1), // 25.9 us, self 25.2 us
            entry(26_100, FIB, 1),
            entry(26_200, FIB, 2),
            entry(26_300, FIB, 3),
            exit(26_400, FIB, 3), // 100
            entry(26_500, FIB, 3),
            exit(26_550, FIB, 3), // 50
            exit(26_600, FIB, 2), // 400, self 250
            exit(26_700, FIB, 1), // 600, self 200
            entry(26_800, FOO, 1),
            exit(226_800, FOO, 1), // 200 us
            entry(227_000, LEAF, 1),
            exit(227_100, LEAF, 1), // 100
        ],
        lost: 0,
        depth_overflows: 0,
    }
}

/// A worker whose ring wrapped: the first events are exits of calls whose
/// entries were overwritten (worker > parse > lex), and 7 events were lost.
pub fn worker_thread() -> ThreadTrace {
    ThreadTrace {
        tid: WORKER,
        name: "worker-1".into(),
        events: vec![
            exit(500, LEX, 2),   // orphan
            exit(600, PARSE, 1), // orphan
            entry(700, PARSE, 1),
            entry(800, LEX, 2),
            exit(900, LEX, 2),         // 100
            exit(1_000, PARSE, 1),     // 300, self 200
            exit(1_500, WORKER_FN, 0), // orphan
            entry(2_000, WORKER_FN, 0),
            entry(2_100, LEAF, 1),
            exit(2_150, LEAF, 1),      // 50
            exit(3_000, WORKER_FN, 0), // 1000, self 950
        ],
        lost: 7,
        depth_overflows: 2,
    }
}

/// The function-graph trace the tests format.
pub fn graph_trace() -> Trace {
    Trace {
        pid: PID,
        program: "/usr/local/bin/demo".into(),
        cmdline: vec!["demo".into(), "--fast".into()],
        start_ns: T0,
        threads: vec![main_thread(), worker_thread()],
        symbols: symbols(),
        maps: maps(),
    }
}

/// A function-tracer trace: Call events only. Callers are return
/// addresses inside the calling function.
pub fn function_trace() -> Trace {
    Trace {
        pid: PID,
        program: "/usr/local/bin/demo".into(),
        cmdline: vec!["demo".into()],
        start_ns: T0,
        threads: vec![
            ThreadTrace {
                tid: PID,
                name: "demo".into(),
                events: vec![
                    call(0, PARSE, MAIN + 0x10),
                    call(1_500, LEX, PARSE + 0x8),
                    call(2_000_123, LEX, PARSE + 0x8),
                    call(3_000_000, FOO, MAIN + 0x20),
                ],
                lost: 3,
                depth_overflows: 0,
            },
            ThreadTrace {
                tid: WORKER,
                name: "worker-1".into(),
                events: vec![
                    call(1_000, LEAF, WORKER_FN + 0x4),
                    call(2_500_000, LEAF, 0xdead_0000),
                ],
                lost: 0,
                depth_overflows: 0,
            },
        ],
        symbols: symbols(),
        maps: maps(),
    }
}
