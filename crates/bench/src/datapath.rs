//! `datapath`: how fast records get from a traced program to disk.
//!
//! The program is `crates/cli/tests/progs/hot.c`: 2 threads calling
//! `hot_a -> hot_b -> hot_c x2` in a loop, every function traced with the
//! graph tracer (8 records per round), built with gcc
//! `-fpatchable-function-entry=5` (and `-pg` for uftrace). Measured, in one
//! run:
//!
//! - the program alone for `--seconds` (calls per second untraced);
//! - `livetrace record -t graph -f 'hot_*' -o X.lttrace -- hot ...` for as
//!   long: records written and lost (read back from the file), the
//!   program's calls per second traced (`program_slowdown` = untraced ÷
//!   traced), the command's peak resident memory (`wait4`), and the rate
//!   the file grew at over the recording's wall time (`write_mb_s`);
//! - `baseline_write_mb_s`: `write(2)` of the same number of bytes, 1 MiB at
//!   a time, into a file in the same directory, then `fdatasync` (the
//!   recorder syncs its file at the end too);
//! - `livetrace convert X.lttrace --format json -o /dev/null`: records per
//!   second and peak memory of the converter;
//! - with uftrace installed, `uftrace record` on the `-pg` build for as
//!   long: `uftrace_events_written` (its `.dat` files hold 16-byte records).
//!
//! A second RESULT line (`bench=datapath_slow`) records a slower variant
//! of the program (each `hot_c` also spins), whose record rate is about a
//! quarter of the baseline's bandwidth: the goal there is nothing lost.
//!
//! The `livetrace` command and `liblivetrace.so` are this profile's, built
//! first (`cargo build -p livetrace-cli -p livetrace-preload`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// How long each program run lasts.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Where the recordings go (default: the system's temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// This profile's target directory, with the command and the preload
/// library built in it.
fn built() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("target directory").to_path_buf();
    let release = dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "-q",
        "-p",
        "livetrace-cli",
        "-p",
        "livetrace-preload",
    ])
    .current_dir(workspace());
    if release {
        cmd.arg("--release");
    }
    assert!(
        cmd.status().is_ok_and(|s| s.success()),
        "cargo build -p livetrace-cli -p livetrace-preload failed"
    );
    dir
}

fn gcc(src: &Path, out: &Path, flags: &[&str]) {
    let st = Command::new("gcc")
        .args(["-O2", "-pthread"])
        .args(flags)
        .arg("-o")
        .arg(out)
        .arg(src)
        .status()
        .expect("gcc");
    assert!(st.success(), "gcc {flags:?} {} failed", src.display());
}

/// What a child process did: its stdout and stderr, its peak memory (KiB)
/// and wall time.
struct Ran {
    stdout: String,
    stderr: String,
    max_rss_kb: i64,
    wall: f64,
    ok: bool,
}

/// Runs `cmd` to its end; reaped with `wait4` for its rusage.
#[allow(clippy::zombie_processes)]
fn run(mut cmd: Command) -> Ran {
    let t = Instant::now();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id() as libc::pid_t;
    // The command's own peak memory: wait4's rusage would include the
    // traced program's (its reaped child). VmHWM only grows: the last value
    // read before the process ends is its peak but for its last moments.
    let sampler = std::thread::spawn(move || {
        let mut peak = 0i64;
        while let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(kb) = s
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            {
                peak = peak.max(kb);
            }
            if s.lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        peak
    });
    let (mut o, mut e) = (child.stdout.unwrap(), child.stderr.unwrap());
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut o, &mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut e, &mut s);
        s
    });
    let mut status = 0;
    // SAFETY: rusage is plain data.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: reaps our own child, filling `status` and `ru`.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid, "wait4");
    Ran {
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        // Sampled; wait4's figure only if the command ended before the
        // first sample (it would include a traced child's memory).
        max_rss_kb: match sampler.join().unwrap_or(0) {
            0 => ru.ru_maxrss,
            kb => kb,
        },
        wall: t.elapsed().as_secs_f64(),
        ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
    }
}

/// `key=` in the program's `HOT ...` line.
fn field(out: &str, key: &str) -> f64 {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {out:?}"))
}

/// `write(2)` of `bytes` into `path`, 1 MiB at a time, then `fdatasync`:
/// MB/s.
fn baseline_write(path: &Path, bytes: u64) -> f64 {
    use std::io::Write;
    let buf = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut f = std::fs::File::create(path).expect("baseline file");
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).expect("baseline write");
        left -= n as u64;
    }
    f.sync_data().expect("fdatasync");
    let s = t.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(path);
    bytes as f64 / 1e6 / s
}

/// One recording of `hot SECONDS 2 WORK`.
struct Recorded {
    written: u64,
    lost: u64,
    bytes: u64,
    rate: f64,
    rss_mb: f64,
    wall: f64,
}

fn record(cli: &Path, lib: &Path, hot: &Path, out: &Path, seconds: f64, work: u32) -> Recorded {
    let mut c = Command::new(cli);
    c.env("LIVETRACE_PRELOAD_LIB", lib)
        .args(["record", "-t", "graph", "-f", "hot_*", "-o"])
        .arg(out)
        .arg("--")
        .arg(hot)
        .args([seconds.to_string(), "2".into(), work.to_string()]);
    let r = run(c);
    assert!(r.ok, "livetrace record failed:\n{}", r.stderr);
    eprintln!("{}", r.stderr.trim_end());
    let reader = livetrace_format::Reader::open(out).expect("the recording reads back");
    Recorded {
        written: reader.record_count(),
        lost: reader.lost_count(),
        bytes: std::fs::metadata(out).map(|m| m.len()).unwrap_or(0),
        rate: field(&r.stdout, "rate"),
        rss_mb: r.max_rss_kb as f64 / 1024.0,
        wall: r.wall,
    }
}

pub fn run_bench(a: Args) {
    let target = built();
    let cli = target.join("livetrace");
    let lib = target.join("liblivetrace.so");
    let dir = a
        .dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("livetrace-datapath-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench directory");
    let src = workspace().join("crates/cli/tests/progs/hot.c");
    let hot = dir.join("hot");
    gcc(&src, &hot, &["-fpatchable-function-entry=5"]);
    let secs = a.seconds;

    // The program alone.
    let mut c = Command::new(&hot);
    c.args([secs.to_string(), "2".into(), "0".into()]);
    let plain = run(c);
    let untraced = field(&plain.stdout, "rate");
    eprintln!("datapath: untraced {untraced:.0} rounds/s");

    // Recorded.
    let file = dir.join("hot.lttrace");
    let rec = record(&cli, &lib, &hot, &file, secs, 0);
    let write_mb_s = rec.bytes as f64 / 1e6 / rec.wall;
    let baseline = baseline_write(&dir.join("baseline.bin"), rec.bytes.max(1 << 20));
    eprintln!(
        "datapath: {} records written, {} lost, {:.0} MB in {:.2}s ({write_mb_s:.0} MB/s; write(2) \
         baseline {baseline:.0} MB/s), command peak {:.1} MiB",
        rec.written,
        rec.lost,
        rec.bytes as f64 / 1e6,
        rec.wall,
        rec.rss_mb
    );

    // Converted to JSON (to /dev/null: the converter's own speed).
    let mut c = Command::new(&cli);
    c.arg("convert")
        .arg(&file)
        .args(["--format", "json", "-o", "/dev/null"]);
    let conv = run(c);
    assert!(conv.ok, "livetrace convert failed:\n{}", conv.stderr);
    let convert_eps = rec.written as f64 / conv.wall;
    let _ = std::fs::remove_file(&file);

    // uftrace on the -pg build.
    let uftrace = uftrace_events(&src, &dir, secs);

    println!(
        "RESULT bench=datapath events_written={} events_lost={} write_mb_s={write_mb_s:.0} \
         baseline_write_mb_s={baseline:.0} consumer_max_rss_mb={:.1} program_slowdown={:.2} \
         convert_json_events_per_s={convert_eps:.0} convert_max_rss_mb={:.1} \
         uftrace_events_written={}",
        rec.written,
        rec.lost,
        rec.rss_mb,
        untraced / rec.rate,
        conv.max_rss_kb as f64 / 1024.0,
        uftrace.map_or("none".to_string(), |n| n.to_string()),
    );

    // The slower variant: a record rate about a quarter of the baseline.
    // Rounds per second at WORK spins per hot_c, untraced, decide WORK.
    let want_mb_s = baseline / 4.0;
    let mut work = 100u32;
    let mut slow_rate = untraced;
    for _ in 0..4 {
        let mut c = Command::new(&hot);
        c.args(["0.5".to_string(), "2".into(), work.to_string()]);
        slow_rate = field(&run(c).stdout, "rate");
        let mb_s = slow_rate * 8.0 * 32.0 / 1e6;
        if (want_mb_s / 2.0..want_mb_s * 1.5).contains(&mb_s) {
            break;
        }
        work = ((work as f64) * mb_s / want_mb_s).clamp(1.0, 1e7) as u32;
    }
    let file = dir.join("slow.lttrace");
    let slow = record(&cli, &lib, &hot, &file, secs, work);
    let _ = std::fs::remove_file(&file);
    println!(
        "RESULT bench=datapath_slow work={work} record_mb_s_untraced={:.0} events_written={} \
         events_lost={} write_mb_s={:.0} consumer_max_rss_mb={:.1} program_slowdown={:.2}",
        slow_rate * 8.0 * 32.0 / 1e6,
        slow.written,
        slow.lost,
        slow.bytes as f64 / 1e6 / slow.wall,
        slow.rss_mb,
        slow_rate / slow.rate,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Records `hot` built with `-pg` under `uftrace record` for `secs`;
/// returns the records uftrace wrote, or `None` without uftrace.
fn uftrace_events(src: &Path, dir: &Path, secs: f64) -> Option<u64> {
    let have = Command::new("uftrace")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        eprintln!("datapath: uftrace is not installed");
        return None;
    }
    let hot = dir.join("hot_pg");
    gcc(src, &hot, &["-pg"]);
    let data = dir.join("uftrace.data");
    let mut c = Command::new("uftrace");
    c.args(["record", "--no-pager", "-d"])
        .arg(&data)
        .arg(&hot)
        .args([secs.to_string(), "2".into(), "0".into()]);
    let r = run(c);
    if !r.ok {
        eprintln!("datapath: uftrace record failed:\n{}", r.stderr);
        return None;
    }
    let bytes: u64 = std::fs::read_dir(&data)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".dat"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    eprintln!(
        "datapath: uftrace: {} records in {:.2}s ({})",
        bytes / 16,
        r.wall,
        r.stdout.trim()
    );
    let _ = std::fs::remove_dir_all(&data);
    Some(bytes / 16)
}
