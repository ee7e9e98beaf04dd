//! A small multithreaded program to attach to: worker threads call
//! `#[traced]` functions in a loop, and the main thread prints what
//! `compute(21)` returns, so a live patch shows.
//!
//! `livetrace-demo-target [--serve] [--threads N] [--iterations N]`:
//! `--serve` starts the control socket by calling `livetrace_server::serve()`
//! (without it, `LIVETRACE=1` does, through the constructor);
//! `--iterations N` makes each worker stop after N rounds and the program
//! exit (for `livetrace record`); without it, it runs until killed.

use std::hint::black_box;
use std::io::Write;
use std::time::Duration;

// Links the server crate (and its constructor) even without `--serve`.
use livetrace_server as _;

/// What the main thread prints; `compute_v2` is its drop-in replacement.
#[livetrace::traced]
fn compute(x: u64) -> u64 {
    x * 2
}

#[livetrace::traced]
fn compute_v2(x: u64) -> u64 {
    x * 2 + 1000
}

/// The same signature spelled with full paths: a patch onto it is
/// accepted (types are compared, not their spelling).
#[livetrace::traced]
fn compute_spelled(x: core::primitive::u64) -> ::std::primitive::u64 {
    x * 2 + 2000
}

/// Same shape, another type: a patch onto it must be refused.
#[livetrace::traced]
fn compute_narrow(x: u32) -> u32 {
    x.wrapping_mul(3)
}

/// No single signature: never patchable.
#[livetrace::traced]
fn identity<T: Copy>(t: T) -> T {
    t
}

#[livetrace::traced]
mod work {
    use std::hint::black_box;

    pub fn step(i: u64) -> u64 {
        let a = leaf(i);
        let b = leaf(black_box(i + 1));
        a.wrapping_add(b)
    }

    pub fn leaf(i: u64) -> u64 {
        let mut x = black_box(i);
        for _ in 0..20 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        x
    }
}

fn arg(args: &[String], name: &str) -> Option<u64> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--serve") {
        if let Err(e) = livetrace_server::serve() {
            eprintln!("demo: cannot serve: {e}");
            std::process::exit(1);
        }
    }
    let threads = arg(&args, "--threads").unwrap_or(3);
    let iterations = arg(&args, "--iterations");
    println!(
        "demo: pid {} socket {}",
        std::process::id(),
        livetrace_server::socket_path()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "none".into())
    );
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::Builder::new()
                .name(format!("worker-{t}"))
                .spawn(move || {
                    let mut i = 0u64;
                    let mut sum = 0u64;
                    while iterations.is_none_or(|n| i < n) {
                        sum = sum.wrapping_add(work::step(black_box(i + t)));
                        sum = sum.wrapping_add(compute(black_box(i)));
                        sum = sum.wrapping_add(compute_narrow(black_box(i as u32)) as u64);
                        sum = sum.wrapping_add(identity(black_box(i)));
                        i += 1;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    black_box(sum)
                })
                .unwrap()
        })
        .collect();
    let mut out = std::io::stdout();
    loop {
        let _ = writeln!(out, "compute(21) = {}", compute(black_box(21)));
        let _ = out.flush();
        if workers.iter().all(|w| w.is_finished()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for w in workers {
        let _ = w.join();
    }
    let _ = black_box(compute_v2(1));
    let _ = black_box(compute_spelled(1));
}
