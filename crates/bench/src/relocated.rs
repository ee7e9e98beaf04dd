//! `relocated`: how many functions of stock objects (built with no
//! patchable-entry flag) can be given a site by prologue relocation
//! (`livetrace-reloc`), and why the others cannot.
//!
//! Per object: `RESULT bench=relocated object=NAME ... patchable_pct=P`,
//! where P is relocatable functions over functions (candidates minus
//! ifunc resolvers, PLT stubs and cold parts), then one `RESULT
//! ... refusal=KIND count=N` line per refusal kind, most frequent first,
//! with an example of each on stderr. Every relocatable function's detour
//! is also built, at an address in its window, as a check.

use std::path::PathBuf;
use std::time::Instant;

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;

use livetrace_fixtures::stock::{self, Stock, StockFn};
use livetrace_ftrace::Pattern;
use livetrace_poke::Insn;
use livetrace_reloc::{Image, Refusal};
use livetrace_tracers::{Config, Session, Tracer};

use crate::stats::{median, per_call, per_call_plain, register_fixtures};

/// The system's libc and the no-site builds of the real-code drivers
/// (`/work/shared/realcode/build.sh /tmp/rc zstd zlib` makes them).
const DEFAULT_OBJECTS: &[&str] = &[
    "/lib/x86_64-linux-gnu/libc.so.6",
    "/tmp/rc/plain/zstd_driver",
    "/tmp/rc/plain/zlib_driver",
];

#[derive(clap::Args)]
pub struct Args {
    /// ELF objects to analyse (default: the system's libc and the no-site
    /// real-code drivers).
    #[arg(long = "object")]
    objects: Vec<PathBuf>,
    /// Refusal kinds to print per object.
    #[arg(long, default_value_t = 12)]
    top: usize,
    /// Analyses per object, for the median time.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Skip the live measurements.
    #[arg(long)]
    static_only: bool,
    /// Relocated functions for the enable measurement.
    #[arg(long, default_value_t = 10_000)]
    functions: usize,
    /// Calls per overhead measurement.
    #[arg(long, default_value_t = 1_000_000)]
    calls: usize,
    /// Interleaved rounds of each measurement.
    #[arg(long, default_value_t = 15)]
    live_rounds: usize,
}

pub fn run(a: Args) {
    analyse(&a);
    if !a.static_only {
        live(&a);
    }
}

fn analyse(a: &Args) {
    let objects: Vec<PathBuf> = if a.objects.is_empty() {
        DEFAULT_OBJECTS.iter().map(PathBuf::from).collect()
    } else {
        a.objects.clone()
    };
    for path in objects {
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("relocated: skipping {}: {e}", path.display());
                continue;
            }
        };
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let mut times = Vec::new();
        let mut image = None;
        for _ in 0..a.rounds.max(1) {
            let t = Instant::now();
            match Image::parse(&data) {
                Ok(i) => image = Some(i),
                Err(e) => {
                    eprintln!("relocated: {}: {e}", path.display());
                    break;
                }
            }
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let Some(image) = image else { continue };
        let s = image.summary();

        // Build every detour, in the middle of its window (bias 0).
        let mut built = 0usize;
        let mut detour_bytes = 0usize;
        let mut region_bytes = 0usize;
        let mut after_endbr = 0usize;
        // Relocatable functions whose callers may keep registers across a
        // call (served by the full caller when traced).
        let mut full = 0usize;
        for c in image.candidates() {
            let Ok(p) = &c.verdict else { continue };
            full += c.callers_keep_registers() as usize;
            let (lo, hi) = p.detour_window(0).expect("window");
            if let Ok(d) = p.relocate(0, lo / 2 + hi / 2) {
                built += 1;
                detour_bytes += d.bytes.len();
                region_bytes += p.len();
                after_endbr += p.after_endbr() as usize;
            }
        }
        assert_eq!(
            built, s.relocatable,
            "{name}: every relocatable prologue builds a detour"
        );
        let n = built.max(1) as f64;
        println!(
            "RESULT bench=relocated object={name} candidates={} excluded={} functions={} relocatable={} \
             patchable_pct={:.2} refused={} after_endbr={after_endbr} region_bytes_avg={:.2} \
             detour_bytes_avg={:.2} full_caller_pct={:.2} analyze_ms={:.2}",
            s.candidates,
            s.excluded,
            s.functions,
            s.relocatable,
            s.patchable_pct(),
            s.functions - s.relocatable,
            region_bytes as f64 / n,
            detour_bytes as f64 / n,
            100.0 * full as f64 / n,
            median(&mut times),
        );
        for (kind, count) in s.reasons.iter().take(a.top) {
            let example = image
                .candidates()
                .iter()
                .find(|c| c.verdict.as_ref().err().map(Refusal::kind) == Some(kind));
            let excluded = example.is_some_and(|c| !c.is_function());
            println!(
                "RESULT bench=relocated object={name} refusal={kind} count={count} excluded={}",
                excluded as u8
            );
            if let Some(c) = example {
                eprintln!(
                    "  {name}: {count} × {kind}, e.g. {} ({:#x}): {}",
                    c.name(),
                    c.addr,
                    c.verdict.as_ref().unwrap_err()
                );
            }
        }
    }
}

/// Calls `f` `n` times; ns per call.
#[inline(never)]
fn per_call_fn(f: StockFn, n: usize) -> f64 {
    let t = Instant::now();
    for i in 0..n {
        std::hint::black_box(f(std::hint::black_box(i as i64), 1));
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

fn live(a: &Args) {
    let dir = std::env::temp_dir().join(format!("lt-bench-reloc-{}", std::process::id()));
    let n = a.functions.max(1);
    let t = Instant::now();
    let path = stock::build(&dir, "libstock_bench.so", n + stock::HAND.len());
    let twin_path = dir.join("libstock_bench_twin.so");
    std::fs::copy(&path, &twin_path).expect("copy");
    eprintln!(
        "relocated: built {n} stock functions in {:.1?}",
        t.elapsed()
    );
    let lib = Stock::open(&path, n + stock::HAND.len());
    let twin = Stock::open(&twin_path, n + stock::HAND.len());
    livetrace_ftrace::discover().expect("scan");
    register_fixtures(2);

    // Per-call overhead: `lt_hand_tiny` (mov rax, rdi; ret) is the same
    // body as the fixtures' (mov eax, imm; ret).
    let tiny = lib.sym("lt_hand_tiny").expect("tiny");
    let (f, f_twin) = (lib.func("lt_hand_tiny"), twin.func("lt_hand_tiny"));
    let start = |p: Pattern| {
        let mut cfg = Config::new(Tracer::Function, &[]);
        cfg.filter = vec![p];
        cfg.ring.mode = livetrace_ring::Mode::Overwrite;
        Session::start(cfg).unwrap_or_else(|e| panic!("{e}"))
    };
    // Relocated, not traced yet: the detour's cost alone.
    livetrace_ftrace::relocate(&Pattern::Addr(tiny)).expect("relocate tiny");
    let (mut plain, mut detour) = (Vec::new(), Vec::new());
    for _ in 0..a.live_rounds {
        plain.push(per_call_fn(f_twin, a.calls));
        detour.push(per_call_fn(f, a.calls));
    }
    let (pl, de) = (median(&mut plain), median(&mut detour));
    let traced_reloc = start(Pattern::Addr(tiny));
    let traced_site = start(Pattern::parse("bench::f1"));
    let (mut rb, mut rt, mut sb, mut st) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    per_call_fn(f, a.calls / 10);
    per_call(1, a.calls / 10);
    for _ in 0..a.live_rounds {
        rb.push(per_call_fn(f_twin, a.calls));
        rt.push(per_call_fn(f, a.calls));
        sb.push(per_call_plain(0, a.calls));
        st.push(per_call(1, a.calls));
    }
    let fast = traced_reloc.has_fast_path() && traced_site.has_fast_path();
    drop(traced_reloc);
    drop(traced_site);
    let (rb, rt, sb, st) = (
        median(&mut rb),
        median(&mut rt),
        median(&mut sb),
        median(&mut st),
    );
    let (ro, so) = (rt - rb, st - sb);
    println!(
        "RESULT bench=relocated live=overhead plain_ns={rb:.2} relocated_traced_ns={rt:.2} \
         function_overhead_ns={ro:.2} site_plain_ns={sb:.2} site_traced_ns={st:.2} \
         site_overhead_ns={so:.2} delta_ns={:.2} detour_ns={:.2} fast_path={fast}",
        ro - so,
        de - pl
    );

    // A function its object calls directly (`lt_hand_call` calls the
    // static `lt_hand_twice`): its callers may keep values in any register,
    // so the full caller serves it (every vector and mask register kept):
    // the price of correctness where gcc's -fipa-ra may have been at work.
    let call_entry = lib.sym("lt_hand_call").expect("lt_hand_call");
    livetrace_ftrace::relocate(&Pattern::parse("lt_hand_twice")).expect("relocate twice");
    let (twice, full) = livetrace_ftrace::inspect(|t| {
        let i = t
            .lookup_name("lt_hand_twice")
            .into_iter()
            .filter(|&i| t.relocated(i).is_some())
            .min_by_key(|&i| {
                t.relocated(i)
                    .expect("relocated")
                    .entry
                    .abs_diff(call_entry)
            })
            .expect("lt_hand_twice relocated");
        (
            t.relocated(i).expect("relocated").entry,
            t.record(i).preserves_all(),
        )
    })
    .expect("core");
    let (g, g_twin) = (lib.func("lt_hand_call"), twin.func("lt_hand_call"));
    let traced_full = start(Pattern::Addr(twice));
    let (mut fb, mut ft) = (Vec::new(), Vec::new());
    per_call_fn(g, a.calls / 10);
    for _ in 0..a.live_rounds {
        fb.push(per_call_fn(g_twin, a.calls));
        ft.push(per_call_fn(g, a.calls));
    }
    drop(traced_full);
    let (fb, ft) = (median(&mut fb), median(&mut ft));
    println!(
        "RESULT bench=relocated live=overhead_direct plain_ns={fb:.2} relocated_traced_ns={ft:.2} \
         function_overhead_ns={:.2} vs_site_ns={:.2} full_caller={full}",
        ft - fb,
        ft - fb - so
    );

    // Enabling 10,000 relocated functions with 2 busy threads.
    let stop = AtomicBool::new(false);
    let fns: Vec<StockFn> = (0..n).map(|i| lib.f(i)).collect();
    std::thread::scope(|s| {
        for w in 0..2usize {
            let (fns, stop) = (&fns, &stop);
            s.spawn(move || {
                let mut i = w;
                while !stop.load(Relaxed) {
                    std::hint::black_box(fns[i % fns.len()](i as i64, 3));
                    i += 2;
                }
            });
        }
        let all = Pattern::parse("lt_stock_*");
        // The library's image is analysed once; relocation then reuses it.
        let t = Instant::now();
        let wn = livetrace_ftrace::why_not(&all).expect("why not").len();
        let analyse_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let r = livetrace_ftrace::relocate(&all).unwrap_or_else(|e| panic!("{e}"));
        let reloc = t.elapsed();
        // The twin's functions have the same names: trace only ours.
        let ours: Vec<Pattern> = (0..n)
            .filter_map(|i| {
                livetrace_ftrace::inspect(|t| {
                    t.find_relocated_entry(lib.addr(i))
                        .map(|j| t.record(j).ip())
                })
                .expect("core")
                .map(Pattern::Addr)
            })
            .collect();
        let k = ours.len();
        let (mut en, mut dis) = (Vec::new(), Vec::new());
        for _ in 0..a.live_rounds.clamp(1, 7) {
            let mut cfg = Config::new(Tracer::Function, &[]);
            cfg.filter = ours.clone();
            cfg.ring.mode = livetrace_ring::Mode::Overwrite;
            let t = Instant::now();
            let mut s = Session::start(cfg).unwrap_or_else(|e| panic!("{e}"));
            en.push(t.elapsed().as_nanos() as f64 / k as f64);
            std::thread::sleep(std::time::Duration::from_millis(20));
            let t = Instant::now();
            s.stop().unwrap_or_else(|e| panic!("{e}"));
            dis.push(t.elapsed().as_nanos() as f64 / k as f64);
            drop(s);
        }
        // The engine alone: one batch calling a counting stub from every
        // detour site, and one putting the NOPs back.
        let sites: Vec<usize> = ours
            .iter()
            .map(|p| match p {
                Pattern::Addr(a) => *a,
                _ => unreachable!(),
            })
            .collect();
        let stub = lib.counter(0);
        let (mut ben, mut bdis) = (Vec::new(), Vec::new());
        for _ in 0..a.live_rounds.clamp(1, 7) {
            for (on, v) in [(true, &mut ben), (false, &mut bdis)] {
                let mut b = livetrace_poke::Batch::with_capacity(k);
                for &site in &sites {
                    let (old, new) = if on {
                        (Insn::Nop, Insn::Call(stub))
                    } else {
                        (Insn::Call(stub), Insn::Nop)
                    };
                    b.queue(site, old, new).expect("queue");
                }
                let t = Instant::now();
                b.apply().unwrap_or_else(|e| panic!("{e}"));
                v.push(t.elapsed().as_nanos() as f64 / k as f64);
            }
        }
        stop.store(true, Relaxed);
        println!(
            "RESULT bench=relocated live=enable functions={k} refused={wn} busy_threads=2 \
             enable_ns_per_site={:.1} disable_ns_per_site={:.1} batch_enable_ns_per_site={:.1} \
             batch_disable_ns_per_site={:.1} relocate_ns_per_function={:.1} \
             relocated_now={} analyse_ms={analyse_ms:.1}",
            median(&mut en),
            median(&mut dis),
            median(&mut ben),
            median(&mut bdis),
            reloc.as_nanos() as f64 / r.relocated.len().max(1) as f64,
            r.relocated.len(),
        );
    });
    let _ = std::fs::remove_dir_all(dir);
}
