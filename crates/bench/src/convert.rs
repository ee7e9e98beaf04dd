//! `convert-json` (and other formats): converting a recorded trace
//! (`.lttrace`) the way `livetrace convert` does, in a child process, timed
//! from its start to its exit, with its peak RSS from `wait4`. The baseline,
//! in this process and on the same file, is reading every record through
//! the file reader without converting. Two recordings, one 8 times longer
//! than the other, show whether the converter's memory grows with the
//! trace (goal: ≤ 64 MiB whatever the length) and its speed (goal: ≥ 5 M
//! events/s to JSON).
//!
//! The recording is what the `datapath` program records: 2 threads running
//! a 3-level call tree under the graph tracer, 200 functions, chunks of
//! records interleaved by thread as a recorder writes them. Output goes to
//! `/dev/null` unless `--to-file` (then beside the recording).

use std::path::{Path, PathBuf};
use std::time::Instant;

use livetrace_format as lf;
use livetrace_output::convert::{self, Dest, Format, Recording};

use crate::stats::median;

#[derive(clap::Args)]
pub struct Args {
    /// Events in the long recording (the short one has an eighth)
    #[arg(long, default_value_t = 16_000_000)]
    events: u64,
    /// Conversions of each recording per format (the median time counts)
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Where the recordings go [default: the system's temporary directory]
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Write the outputs next to the recordings instead of to /dev/null
    #[arg(long)]
    to_file: bool,
    /// Formats to measure (json, perfetto, folded, svg, profile, text,
    /// uftrace), comma-separated
    #[arg(long, value_delimiter = ',', default_value = "json")]
    formats: Vec<String>,
}

/// What the child process is told (a hidden subcommand).
#[derive(clap::Args)]
pub struct ChildArgs {
    input: PathBuf,
    format: String,
    output: PathBuf,
}

const FUNCS: u64 = 200;
const BASE: u64 = 0x5555_0000_0000;

/// Writes a graph recording of about `events` events.
pub fn write_recording(path: &Path, events: u64) -> std::io::Result<u64> {
    let file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut w = lf::Writer::new(
        file,
        &lf::Info {
            pid: 4242,
            tracer: Some(lf::Tracer::Graph),
            mode: Some(lf::Mode::Stream),
            program: "/usr/bin/hot".into(),
            cmdline: vec!["hot".into(), "2".into()],
        },
    )?;
    let symbols: Vec<lf::Symbol> = (0..FUNCS)
        .map(|i| lf::Symbol {
            addr: BASE + i * 0x100,
            size: 0x100,
            name: format!("hot::level{}::function_{i}", i % 3),
        })
        .collect();
    w.symbols(&symbols)?;
    w.thread(4242, "hot", false)?;
    w.thread(4243, "hot-worker", false)?;
    let f = |i: u64| BASE + (i % FUNCS) * 0x100;
    let rec = |ts: u64, a: u64, depth: u64, kind: lf::Kind| lf::Record {
        ts,
        a,
        b: depth,
        c: kind.code(),
    };
    const BLOCK: usize = 32 * 1024;
    let mut buf: Vec<lf::Record> = Vec::with_capacity(BLOCK);
    let mut index = [0u64; 2];
    let mut ts = [1_000_000_000u64; 2];
    let mut calls = [0u64; 2];
    let mut written = 0u64;
    while written < events {
        for t in 0..2 {
            buf.clear();
            while buf.len() + 6 <= BLOCK {
                let i = calls[t];
                calls[t] += 1;
                let path = [f(i % 7), f(i % 5 + 60), f(i % 11 + 120)];
                for (d, &a) in path.iter().enumerate() {
                    ts[t] += 9;
                    buf.push(rec(ts[t], a, d as u64, lf::Kind::Entry));
                }
                for (d, &a) in path.iter().enumerate().rev() {
                    ts[t] += 14;
                    buf.push(rec(ts[t], a, d as u64, lf::Kind::Exit));
                }
            }
            w.records(4242 + t as u32, index[t], &buf)?;
            index[t] += buf.len() as u64;
            written += buf.len() as u64;
        }
    }
    w.end(&lf::End {
        reason: lf::EndReason::Exited,
        status: 0,
        message: String::new(),
    })?;
    w.flush()?;
    Ok(written)
}

/// The child: converts, prints the events converted.
pub fn child(a: ChildArgs) {
    let format: Format = a.format.parse().expect("a format name");
    let mut rec = Recording::open(&a.input).expect("a recording");
    let done = convert::convert(&mut rec, format, &Dest::Path(a.output)).expect("conversion");
    println!("CHILD events={}", done.summary.events());
}

/// Runs the child on `input`; returns (seconds, peak RSS in MiB).
fn measure(input: &Path, format: &str, output: &Path) -> (f64, f64) {
    let exe = std::env::current_exe().expect("own path");
    let started = Instant::now();
    let child = std::process::Command::new(exe)
        .arg("convert-child")
        .arg(input)
        .arg(format)
        .arg(output)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the converter");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet waited for (std's Child is
    // dropped without waiting); `status` and `usage` are valid for writes.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the converter failed (status {status:#x})"
    );
    drop(child);
    // ru_maxrss is in KiB on Linux.
    (secs, usage.ru_maxrss as f64 / 1024.0)
}

/// Reading every record through the file reader: the baseline.
fn read_all(path: &Path) -> (u64, f64) {
    let started = Instant::now();
    let mut reader = lf::Reader::open(path).expect("a recording");
    let mut n = 0u64;
    let mut sum = 0u64;
    reader
        .for_each_block(|_, records| {
            n += records.len() as u64;
            sum = sum.wrapping_add(records.iter().fold(0, |s, r| s ^ r.ts));
            Ok(())
        })
        .expect("reading");
    std::hint::black_box(sum);
    (n, started.elapsed().as_secs_f64())
}

pub fn run(a: Args) {
    let dir = a
        .dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("livetrace-bench-convert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench directory");
    let long = dir.join("long.lttrace");
    let short = dir.join("short.lttrace");
    eprintln!(
        "writing recordings of {} and {} events in {}",
        a.events,
        a.events / 8,
        dir.display()
    );
    let long_events = write_recording(&long, a.events).expect("write the recording");
    let short_events = write_recording(&short, a.events / 8).expect("write the recording");
    let file_mb = std::fs::metadata(&long).map_or(0.0, |m| m.len() as f64 / (1 << 20) as f64);

    let mut read_rates = Vec::new();
    for _ in 0..a.runs {
        let (n, secs) = read_all(&long);
        read_rates.push(n as f64 / secs);
    }
    let read_rate = median(&mut read_rates);

    let mut line = format!(
        "RESULT bench=convert events={long_events} file_mb={file_mb:.0} read_events_per_s={read_rate:.0}"
    );
    for format in &a.formats {
        let ext = match format.as_str() {
            "json" => "json",
            "perfetto" => "perfetto-trace",
            "folded" => "folded",
            "svg" => "svg",
            "profile" => "profile",
            "text" => "txt",
            "uftrace" => "uftrace.data",
            other => panic!("unknown format {other}"),
        };
        let out = |name: &str| -> PathBuf {
            if a.to_file || format == "uftrace" {
                dir.join(format!("{name}.{ext}"))
            } else {
                PathBuf::from("/dev/null")
            }
        };
        let mut rates = Vec::new();
        let mut rss_long = 0.0f64;
        let mut rss_short = 0.0f64;
        for run in 0..a.runs {
            let (_, rss) = measure(&short, format, &out("short"));
            rss_short = rss_short.max(rss);
            let (secs, rss) = measure(&long, format, &out("long"));
            rss_long = rss_long.max(rss);
            let rate = long_events as f64 / secs;
            eprintln!(
                "{format} run {run}: {:.2} s, {:.1} M events/s, peak RSS {rss:.1} MiB",
                secs,
                rate / 1e6
            );
            rates.push(rate);
        }
        let rate = median(&mut rates);
        let key = format.replace('-', "_");
        line.push_str(&format!(
            " convert_{key}_events_per_s={rate:.0} convert_{key}_max_rss_mb={rss_long:.1} \
             convert_{key}_short_max_rss_mb={rss_short:.1}"
        ));
        if format == "json" {
            line.push_str(&format!(" convert_max_rss_mb={rss_long:.1}"));
        }
        let _ = std::fs::remove_dir_all(dir.join(format!("long.{ext}")));
        let _ = std::fs::remove_dir_all(dir.join(format!("short.{ext}")));
        let _ = std::fs::remove_file(dir.join(format!("long.{ext}")));
        let _ = std::fs::remove_file(dir.join(format!("short.{ext}")));
    }
    eprintln!("short recording: {short_events} events");
    println!("{line}");
    let _ = std::fs::remove_dir_all(&dir);
}
