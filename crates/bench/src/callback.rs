//! `callback`: what a call costs with ops attached, against the same kind of
//! function with its site disabled, in interleaved rounds.
//!
//! Four fixture functions (`nop5; mov eax, imm; ret`): one left disabled
//! (reported as `disabled`), one with a single ops and an empty callback (its
//! dedicated trampoline), one with two such ops (the list caller), one with
//! a regs ops (the regs caller). The trampolines save vector registers at
//! the width `vector_state` reports (`LIVETRACE_VECTOR_STATE=xmm|ymm`
//! measures a narrower one).

use livetrace_fixtures as fx;
use livetrace_ftrace::{register, unregister, Ops, Pattern};

use crate::stats::{median, per_call, per_call_plain, register_fixtures};

#[derive(clap::Args)]
pub struct Args {
    /// Calls per measurement.
    #[arg(long, default_value_t = 2_000_000)]
    calls: usize,
    /// Rounds of each kind, interleaved.
    #[arg(long, default_value_t = 21)]
    rounds: usize,
}

const BASE: usize = 0;
const DEDICATED: usize = 1;
const LIST: usize = 2;
const REGS: usize = 3;

pub fn run(a: Args) {
    register_fixtures(4);
    let empty = |name: &str, f: usize| {
        Ops::builder(name)
            .filter(Pattern::Addr(fx::site(f)))
            .build(|_| {})
    };
    let one = empty("one", DEDICATED);
    let two_a = empty("two-a", LIST);
    let two_b = empty("two-b", LIST);
    let regs = Ops::builder("regs")
        .filter(Pattern::Addr(fx::site(REGS)))
        .regs()
        .build(|c| {
            std::hint::black_box(c.regs());
        });
    for o in [&one, &two_a, &two_b, &regs] {
        register(o).unwrap_or_else(|e| panic!("{e}"));
    }
    let mut t = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    let mut plain = Vec::new();
    per_call(BASE, a.calls / 10); // warm up
    for _ in 0..a.rounds {
        plain.push(per_call_plain(BASE, a.calls));
        for (k, v) in t.iter_mut().enumerate() {
            v.push(per_call(k, a.calls));
        }
    }
    for o in [&one, &two_a, &two_b, &regs] {
        unregister(o).unwrap();
    }
    let [n, d, l, r] = t.map(|mut v| median(&mut v));
    let b = median(&mut plain);
    eprintln!("callback: {} rounds of {} calls each", a.rounds, a.calls);
    // Overheads are against the uninstrumented twin (no site at all).
    println!(
        "RESULT bench=callback baseline_ns={b:.2} disabled_ns={n:.2} dedicated_ns={d:.2} list_ns={l:.2} \
         regs_ns={r:.2} dedicated_overhead_ns={:.2} list_overhead_ns={:.2} regs_overhead_ns={:.2} \
         vector_state={:?}",
        d - b,
        l - b,
        r - b,
        livetrace_ftrace::vector_state()
    );
}
