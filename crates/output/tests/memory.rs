//! Memory stays bounded whatever the trace's length: every writer at once
//! (one stream fanned out to all of them) over a long synthetic trace, in a
//! child process whose peak RSS (`VmHWM`) is read when it is done. The
//! trace is a hot 3-level call tree on 4 threads whose main function never
//! returns, a function-tracer thread, losses, and threads coming and going,
//! fed in interleaved chunks as a recording holds them.
//!
//! `LIVETRACE_MEMORY_EVENTS` sets the long run's length (default 10 M).

use std::io::Write;
use std::process::Command;

use livetrace_output::{
    chrome, folded, perfetto, profile, text, uftrace, Event, LossReason, Process, Sink, Symbols,
    Tee,
};

const CHILD_ENV: &str = "LIVETRACE_MEMORY_CHILD";
const FUNCS: u64 = 200;
const BASE: u64 = 0x5555_0000_0000;

fn symbols() -> Symbols {
    (0..FUNCS)
        .map(|i| {
            (
                BASE + i * 0x100,
                0x100,
                format!("app::module{}::function_{i}", i % 7),
            )
        })
        .collect()
}

/// Feeds `events` events to `sink`: graph threads of `main > f(i) >
/// g(i) > h(i)` calls (main open throughout), one function-tracer thread,
/// and every 64 chunks a short-lived thread; chunks of 4096 events per
/// thread, round robin.
fn generate(events: u64, sink: &mut dyn Sink, names: &Symbols) -> std::io::Result<()> {
    const CHUNK: u64 = 4096;
    let f = |i: u64| BASE + (i % FUNCS) * 0x100;
    let mut ts = [1_000_000_000u64; 5];
    let mut call = [0u64; 5];
    let mut sent = 0u64;
    let mut chunk = 0u64;
    for tid in 100..105 {
        sink.thread(tid, &format!("worker-{tid}"))?;
    }
    for tid in 100..104u32 {
        sink.event(
            tid,
            Event::Entry {
                ts: 1_000_000_000,
                func: f(0),
                depth: 0,
            },
            names,
        )?;
    }
    while sent < events {
        let t = (chunk % 5) as usize;
        let tid = 100 + t as u32;
        if chunk % 97 == 3 {
            sink.lost(tid, 123, LossReason::BufferFull)?;
        }
        let mut n = 0;
        while n < CHUNK {
            let i = call[t];
            call[t] += 1;
            let now = &mut ts[t];
            if t == 4 {
                *now += 15;
                sink.event(
                    tid,
                    Event::Call {
                        ts: *now,
                        func: f(i * 7),
                        caller: f(i * 3) + 0x42,
                    },
                    names,
                )?;
                n += 1;
                continue;
            }
            let path = [f(i % 13 + 1), f(i % 5 + 20), f(i % 11 + 40)];
            for (d, &func) in path.iter().enumerate() {
                *now += 10;
                sink.event(
                    tid,
                    Event::Entry {
                        ts: *now,
                        func,
                        depth: d as u32 + 1,
                    },
                    names,
                )?;
            }
            for (d, &func) in path.iter().enumerate().rev() {
                *now += 20;
                sink.event(
                    tid,
                    Event::Exit {
                        ts: *now,
                        func,
                        depth: d as u32 + 1,
                    },
                    names,
                )?;
            }
            n += 6;
        }
        sent += n;
        chunk += 1;
        if chunk.is_multiple_of(64) {
            // A thread that comes, makes one call and goes.
            let tid = 10_000 + chunk as u32;
            sink.thread(tid, "short-lived")?;
            let t0 = ts[0];
            sink.event(
                tid,
                Event::Entry {
                    ts: t0,
                    func: f(chunk),
                    depth: 0,
                },
                names,
            )?;
            sink.event(
                tid,
                Event::Exit {
                    ts: t0 + 100,
                    func: f(chunk),
                    depth: 0,
                },
                names,
            )?;
            sent += 2;
        }
    }
    Ok(())
}

fn vm_hwm_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

/// The child's work: every writer over `events` events.
#[test]
fn memory_child() {
    let Some(events) = std::env::var(CHILD_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return; // Only run as the parent's child.
    };
    let dir = std::env::temp_dir().join(format!("livetrace-memory-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let names = symbols();
    let sink = std::io::sink;
    let mut tee = Tee(vec![
        Box::new(chrome::ChromeJson::new(sink())),
        Box::new(perfetto::PerfettoTrace::new(sink())),
        Box::new(text::GraphText::new(sink())),
        Box::new(text::FunctionText::new(sink())),
        Box::new(folded::FoldedWriter::new(None, sink())),
        Box::new(folded::FlameGraph::new(None, sink())),
        Box::new(profile::ProfileTable::new(sink())),
        Box::new(uftrace::UftraceDir::new(&dir)),
    ]);
    tee.begin(&Process {
        pid: 100,
        program: "/bin/hot".into(),
        start_ns: 1_000_000_000,
        ..Default::default()
    })
    .unwrap();
    generate(events, &mut tee, &names).unwrap();
    let summary = tee.finish(&names).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(summary.events() >= events);
    println!(
        "CHILD events={} vm_hwm_kb={}",
        summary.events(),
        vm_hwm_kb()
    );
}

/// Runs the child over `events` events; returns its peak RSS in KiB.
fn child_peak_kb(events: u64) -> u64 {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "memory_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, events.to_string())
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.find("CHILD events=").map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("no CHILD line in {stdout}"));
    let kb = line
        .rsplit("vm_hwm_kb=")
        .next()
        .and_then(|v| v.parse().ok())
        .expect("vm_hwm_kb");
    let _ = writeln!(std::io::stderr(), "{line}");
    kb
}

#[test]
fn every_writer_stays_bounded_on_a_long_trace() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let long: u64 = std::env::var("LIVETRACE_MEMORY_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let short = long / 10;
    let short_kb = child_peak_kb(short);
    let long_kb = child_peak_kb(long);
    assert!(
        long_kb <= 64 * 1024,
        "{long} events: peak RSS {long_kb} KiB > 64 MiB"
    );
    // Ten times the events, (almost) the same memory: nothing grows with
    // the trace.
    assert!(
        long_kb <= short_kb + 4 * 1024,
        "peak RSS grows with the trace: {short_kb} KiB for {short} events, {long_kb} KiB for \
         {long}"
    );
}
