//! A Rust program with `#[traced]` functions that never starts livetrace:
//! it does not link the control socket and calls nothing of livetrace. Its
//! sites are in its own code; `livetrace trace PID` attaches to it (loading
//! liblivetrace.so, which finds them) like to any C program.
//!
//! Worker threads call `plain::work::step` in a loop and check each result
//! against an untraced copy; on stdin, `status` prints
//! `rounds=N bad=N`.

use std::hint::black_box;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

static ROUNDS: AtomicU64 = AtomicU64::new(0);
static BAD: AtomicU64 = AtomicU64::new(0);

#[livetrace::traced]
mod work {
    use std::hint::black_box;

    pub fn step(i: u64) -> u64 {
        leaf(i).wrapping_add(leaf(black_box(i + 1)))
    }

    pub fn leaf(i: u64) -> u64 {
        let mut x = black_box(i);
        for _ in 0..20 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        x
    }
}

/// `work::step` without a site.
fn reference(i: u64) -> u64 {
    let leaf = |i: u64| {
        let mut x = black_box(i);
        for _ in 0..20 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        x
    };
    leaf(i).wrapping_add(leaf(i + 1))
}

fn main() {
    for t in 0..3u64 {
        std::thread::spawn(move || {
            let mut i = t;
            loop {
                i += 3;
                if work::step(i) != reference(i) {
                    BAD.fetch_add(1, Relaxed);
                }
                ROUNDS.fetch_add(1, Relaxed);
                if i % 64 == 0 {
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
            }
        });
    }
    let mut out = std::io::stdout();
    let _ = writeln!(out, "ready pid={}", std::process::id());
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        match line.trim() {
            "status" => {
                let _ = writeln!(
                    out,
                    "rounds={} bad={}",
                    ROUNDS.load(Relaxed),
                    BAD.load(Relaxed)
                );
            }
            "quit" => break,
            _ => {}
        }
    }
}
