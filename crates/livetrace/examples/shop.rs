//! A small multithreaded shop, traced live.
//!
//! Worker threads take orders in a loop: parse them, price each line, add
//! tax, and check out — every step a `#[traced]` function. While they run,
//! the main thread turns each tracer on for a moment and off again, and
//! writes what it recorded in the formats people already read:
//!
//! ```text
//! cargo run --release -p livetrace-server --example shop [OUTPUT_DIR]
//! ```
//!
//! writes into OUTPUT_DIR (default `livetrace-out`): `function.txt` (ftrace's
//! function layout), `function_graph.txt`, `trace.json` (Perfetto /
//! chrome://tracing), `stacks.folded` and `flame.svg`, `uftrace.data/`
//! (`uftrace replay -d …`), and `profile.txt`.
//!
//! With `--serve [SECONDS]` it only runs the shop, with the control socket
//! open, for someone to attach with the `livetrace` command (see
//! `demo.sh`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use livetrace::raw::output::{chrome, folded, profile, text, uftrace};
use livetrace::{traced, Config, Tracer};

/// One line of an order: an item code and a quantity.
#[derive(Clone, Debug)]
struct Line {
    item: u32,
    qty: u32,
}

/// A parsed order.
#[derive(Clone, Debug)]
struct Order {
    id: u64,
    lines: Vec<Line>,
}

#[traced]
fn parse_order(id: u64, text: &str) -> Order {
    let lines = text
        .split(',')
        .filter_map(|l| {
            let (item, qty) = l.split_once('x')?;
            Some(Line {
                item: item.trim().parse().ok()?,
                qty: qty.trim().parse().ok()?,
            })
        })
        .collect();
    Order { id, lines }
}

#[traced]
fn unit_price(item: u32) -> u64 {
    // A little work standing in for a catalogue lookup.
    let mut h = u64::from(item).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20 {
        h ^= h >> 13;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    }
    100 + h % 900
}

#[traced]
fn price_line(line: &Line) -> u64 {
    unit_price(line.item) * u64::from(line.qty)
}

#[traced]
fn tax(cents: u64) -> u64 {
    cents * 8 / 100
}

#[traced]
fn checkout(order: &Order) -> u64 {
    let net: u64 = order.lines.iter().map(price_line).sum();
    net + tax(net)
}

fn worker(id: u64, stop: &AtomicBool, orders: &AtomicU64, revenue: &AtomicU64) {
    let mut n = 0u64;
    while !stop.load(Relaxed) {
        n += 1;
        let text = format!("{}x{}, {}x{}, {}x1", n % 97, 1 + n % 3, (n * 7) % 89, 2, id);
        let order = parse_order(n, &text);
        revenue.fetch_add(checkout(&order), Relaxed);
        orders.fetch_add(1, Relaxed);
        if order.id.is_multiple_of(16) {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

fn create(dir: &Path, name: &str) -> std::io::Result<BufWriter<File>> {
    Ok(BufWriter::new(File::create(dir.join(name))?))
}

/// Prints the first lines of a file written.
fn show(path: &Path, lines: usize) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    println!("  {} ({} bytes):", path.display(), text.len());
    for l in text.lines().take(lines) {
        let l: String = l.chars().take(110).collect();
        println!("    {l}");
    }
}

/// Runs the shop with the control socket open, untraced until someone
/// attaches.
fn serve(seconds: u64) -> Result<(), Box<dyn std::error::Error>> {
    livetrace::init()?;
    livetrace::serve()?;
    let stop = AtomicBool::new(false);
    let (orders, revenue) = (AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        for id in 0..3 {
            let (stop, orders, revenue) = (&stop, &orders, &revenue);
            s.spawn(move || worker(id, stop, orders, revenue));
        }
        println!(
            "shop: serving as pid {} for {seconds} s",
            std::process::id()
        );
        std::thread::sleep(Duration::from_secs(seconds));
        stop.store(true, Relaxed);
    });
    println!("shop: {} orders", orders.load(Relaxed));
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    if first.as_deref() == Some("--serve") {
        return serve(args.next().and_then(|s| s.parse().ok()).unwrap_or(3600));
    }
    let dir = PathBuf::from(first.unwrap_or_else(|| "livetrace-out".into()));
    std::fs::create_dir_all(&dir)?;
    // Before the workers start: the site table is built with nobody running.
    let report = livetrace::init()?;
    println!(
        "livetrace: {} #[traced] sites, {} compiler-emitted sites",
        report.macro_sites, report.compiler_sites
    );

    let stop = AtomicBool::new(false);
    let (orders, revenue) = (AtomicU64::new(0), AtomicU64::new(0));
    let period = Duration::from_millis(300);
    std::thread::scope(|s| -> Result<(), Box<dyn std::error::Error>> {
        for id in 0..3 {
            let (stop, orders, revenue) = (&stop, &orders, &revenue);
            std::thread::Builder::new()
                .name(format!("shop-worker-{id}"))
                .spawn_scoped(s, move || worker(id, stop, orders, revenue))?;
        }
        std::thread::sleep(Duration::from_millis(100));

        // 1. The function tracer: every call of every shop function.
        let session = livetrace::trace(Config::new(Tracer::Function, &["shop::*"]))?;
        std::thread::sleep(period / 3);
        let trace = session.snapshot();
        drop(session);
        text::write_function(&trace, create(&dir, "function.txt")?)?;

        // 2. The function-graph tracer on the checkout path.
        let mut cfg = Config::new(
            Tracer::Graph,
            &[
                "shop::checkout",
                "shop::price_line",
                "shop::unit_price",
                "shop::tax",
            ],
        );
        cfg.notrace
            .push(livetrace::Pattern::parse("shop::parse_order"));
        let session = livetrace::trace(cfg)?;
        std::thread::sleep(period / 3);
        let trace = session.snapshot();
        drop(session);
        text::write_function_graph(&trace, create(&dir, "function_graph.txt")?)?;
        chrome::write(&trace, create(&dir, "trace.json")?)?;
        folded::write(&trace, create(&dir, "stacks.folded")?)?;
        folded::flamegraph(&trace, create(&dir, "flame.svg")?)?;
        let ufdir = dir.join("uftrace.data");
        let _ = std::fs::remove_dir_all(&ufdir);
        uftrace::write_dir(&trace, &ufdir)?;

        // 3. The profiler.
        let session = livetrace::trace(Config::new(Tracer::Profile, &["shop::*"]))?;
        std::thread::sleep(period);
        let rows = session.profile();
        drop(session);
        let mut out = create(&dir, "profile.txt")?;
        profile::write_table(&rows, &mut out)?;
        out.flush()?;

        stop.store(true, Relaxed);
        Ok(())
    })?;

    let enabled = livetrace::enabled_functions()?;
    println!(
        "{} orders, revenue {} cents; every tracer detached again ({} functions enabled)",
        orders.load(Relaxed),
        revenue.load(Relaxed),
        enabled.len()
    );
    println!("outputs:");
    for (f, n) in [
        ("function.txt", 4),
        ("function_graph.txt", 12),
        ("trace.json", 0),
        ("stacks.folded", 4),
        ("flame.svg", 0),
        ("profile.txt", 8),
    ] {
        show(&dir.join(f), n);
    }
    println!("  {} (uftrace replay -d {0})", ufdir_display(&dir));
    Ok(())
}

fn ufdir_display(dir: &Path) -> String {
    dir.join("uftrace.data").display().to_string()
}
