//! Recording real C programs end to end, the records leaving through
//! shared memory: everything kept while the program runs slowly enough,
//! a killed program's records kept, a killed command leaving the program
//! unaffected and its buffers freed, a full disk, the flight recorder's
//! snapshot, the volume controls' exact events, and the command's memory
//! over ten million events.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{preload_lib, wait_for, TempDir, CLI};
use livetrace_format::{EndReason, Kind, LossReason, Reader};

/// The test programs, built once with patchable function entries.
fn program(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("lt-progs-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        for p in ["hot", "controls"] {
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/progs/{p}.c"));
            let out = Command::new("gcc")
                .args(["-O2", "-fpatchable-function-entry=5", "-pthread", "-o"])
                .arg(d.join(p))
                .arg(&src)
                .output()
                .expect("gcc");
            assert!(
                out.status.success(),
                "gcc {}: {}",
                src.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        d
    });
    dir.join(name)
}

/// `livetrace ARGS`, with the preload library and a socket directory.
fn livetrace(sockets: &Path) -> Command {
    let mut c = Command::new(CLI);
    c.env("LIVETRACE_PRELOAD_LIB", preload_lib())
        .env("LIVETRACE_SOCKET_DIR", sockets)
        .env_remove("LD_PRELOAD")
        .env_remove("LIVETRACE");
    c
}

struct Ran {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// Peak resident memory of the command, KiB.
    max_rss_kb: i64,
}

/// Runs `cmd` to its end, with its peak memory (reaped with `wait4`, for
/// the rusage, not `Child::wait`).
#[allow(clippy::zombie_processes)]
fn run(mut cmd: Command) -> Ran {
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
    let (mut out, mut err) = (child.stdout.unwrap(), child.stderr.unwrap());
    let o = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).unwrap();
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).unwrap();
        s
    });
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, filling `status` and `ru`.
    assert_eq!(unsafe { libc::wait4(pid, &mut status, 0, &mut ru) }, pid);
    Ran {
        ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
        // Sampled; wait4's figure only if the command ended before the
        // first sample (it would include a traced child's memory).
        max_rss_kb: match sampler.join().unwrap_or(0) {
            0 => ru.ru_maxrss,
            kb => kb,
        },
    }
}

/// Records per function name and kind, and the losses, of a recording.
struct Counts {
    by: HashMap<(String, Kind), u64>,
    records: u64,
    lost: u64,
    threads: usize,
    end: Option<EndReason>,
}

fn counts(path: &Path) -> Counts {
    let mut r = Reader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let names: HashMap<u64, String> = r
        .symbols()
        .iter()
        .map(|s| (s.addr, s.name.clone()))
        .collect();
    let mut by = HashMap::new();
    let mut ts_ok = true;
    let tids: Vec<u32> = r.threads().iter().map(|t| t.tid).collect();
    for tid in &tids {
        let mut last = 0;
        let mut it = r.thread_records(*tid);
        while let Some((_, chunk)) = it.next_chunk().unwrap() {
            for rec in chunk {
                ts_ok &= rec.ts >= last;
                last = rec.ts;
                let name = names
                    .get(&rec.a)
                    .cloned()
                    .unwrap_or(format!("{:#x}", rec.a));
                *by.entry((name, rec.kind())).or_default() += 1;
            }
        }
    }
    assert!(ts_ok, "timestamps go back within a thread");
    Counts {
        by,
        records: r.record_count(),
        lost: r.lost_count(),
        threads: r.threads().iter().filter(|t| t.records > 0).count(),
        end: r.end().map(|e| e.reason),
    }
}

impl Counts {
    fn get(&self, f: &str, k: Kind) -> u64 {
        self.by.get(&(f.to_string(), k)).copied().unwrap_or(0)
    }
}

#[test]
fn stream_keeps_every_event_of_a_program_slower_than_the_disk() {
    let dir = TempDir::new("stream");
    std::fs::create_dir_all(dir.path()).unwrap();
    let out = dir.path().join("hot.lttrace");
    let mut c = livetrace(dir.path());
    c.args(["record", "-t", "graph", "-f", "hot_*", "-o"])
        .arg(&out)
        .arg("--")
        .arg(program("hot"))
        .args(["0", "2", "200", "20000"]);
    let r = run(c);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.contains("HOT calls=40000"), "{}", r.stdout);
    assert!(
        r.stderr.contains("exited with status 0") && r.stderr.contains(", 0 lost"),
        "{}",
        r.stderr
    );
    let n = counts(&out);
    assert_eq!(n.end, Some(EndReason::Exited));
    assert_eq!(n.lost, 0);
    assert_eq!(n.threads, 2);
    for (f, calls) in [("hot_a", 40_000), ("hot_b", 40_000), ("hot_c", 80_000)] {
        assert_eq!(n.get(f, Kind::Entry), calls, "{f} entries");
        assert_eq!(n.get(f, Kind::Exit), calls, "{f} exits");
    }
    assert_eq!(n.records, 2 * 160_000);
    // The recording converts (livetrace-output's converters read it).
    let txt = dir.path().join("hot.txt");
    let o = Command::new(CLI)
        .args(["convert"])
        .arg(&out)
        .arg("-o")
        .arg(&txt)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&txt).unwrap();
    assert!(text.contains("hot_c();"), "{:.1000}", text);
}

/// The program the command started, found among its children.
fn child_of(cli: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{cli}/task/{cli}/children")).ok()?;
    s.split_whitespace().next()?.parse().ok()
}

#[test]
fn a_program_killed_mid_record_leaves_everything_recorded_until_then() {
    let dir = TempDir::new("kill9");
    std::fs::create_dir_all(dir.path()).unwrap();
    let out = dir.path().join("hot.lttrace");
    let mut c = livetrace(dir.path());
    c.args(["record", "-t", "graph", "-f", "hot_*", "-o"])
        .arg(&out)
        .arg("--")
        .arg(program("hot"))
        .args(["60", "2", "50"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let cmd = c.spawn().unwrap();
    let cli = cmd.id();
    let mut prog = None;
    wait_for(
        Duration::from_secs(20),
        || {
            prog = child_of(cli);
            prog.is_some() && std::fs::metadata(&out).is_ok_and(|m| m.len() > 1 << 20)
        },
        || "the recording never grew".to_string(),
    );
    // SAFETY: kill of the program the command started.
    unsafe { libc::kill(prog.unwrap() as i32, libc::SIGKILL) };
    let o = cmd.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("was killed by signal 9"), "{stderr}");
    let n = counts(&out);
    assert_eq!(n.end, Some(EndReason::Killed));
    assert!(n.records > 10_000, "{} records", n.records);
    // Whole calls up to the kill: each thread's entries and exits differ by
    // at most the calls open when it died (3 deep).
    for f in ["hot_a", "hot_b", "hot_c"] {
        let (e, x) = (n.get(f, Kind::Entry), n.get(f, Kind::Exit));
        assert!(e >= x && e - x <= 2 * 2, "{f}: {e} entries, {x} exits");
    }
}

/// A C program started under the preload library with its control socket.
struct Running {
    child: Child,
    pid: u32,
}

impl Running {
    fn start(sockets: &Path, prog: &str, args: &[&str]) -> Running {
        let mut child = Command::new(program(prog))
            .args(args)
            .env("LD_PRELOAD", preload_lib())
            .env("LIVETRACE_SOCKET_DIR", sockets)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let sock = sockets.join(format!("{pid}.sock"));
        wait_for(
            Duration::from_secs(20),
            || sock.exists() || child.try_wait().unwrap().is_some(),
            || "no control socket".to_string(),
        );
        assert!(child.try_wait().unwrap().is_none(), "the program died");
        Running { child, pid }
    }

    fn maps(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/maps", self.pid)).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn enabled(sockets: &Path, pid: u32) -> String {
    let o = livetrace(sockets)
        .args(["ls", &pid.to_string(), "--enabled"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_killed_consumer_leaves_the_program_untraced_and_its_buffers_freed() {
    let dir = TempDir::new("consumer");
    std::fs::create_dir_all(dir.path()).unwrap();
    let p = Running::start(dir.path(), "hot", &["120", "2", "100"]);
    assert!(!p.maps().contains("livetrace-rings"));
    let out = dir.path().join("t.lttrace");
    let mut cmd = livetrace(dir.path())
        .args([
            "trace",
            &p.pid.to_string(),
            "-t",
            "graph",
            "-f",
            "hot_*",
            "-o",
        ])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        Duration::from_secs(20),
        || std::fs::metadata(&out).is_ok_and(|m| m.len() > 1 << 20),
        || "nothing recorded".to_string(),
    );
    assert!(
        p.maps().contains("livetrace-rings"),
        "the buffers are mapped"
    );
    assert!(enabled(dir.path(), p.pid).contains("hot_a"));
    cmd.kill().unwrap();
    cmd.wait().unwrap();
    wait_for(
        Duration::from_secs(20),
        || !p.maps().contains("livetrace-rings") && !enabled(dir.path(), p.pid).contains("hot_"),
        || format!("still traced or mapped:\n{}", p.maps()),
    );
    assert!(!p.maps().contains("livetrace-tails"));
    std::thread::sleep(Duration::from_millis(200));
    let mut p = p;
    assert!(p.child.try_wait().unwrap().is_none(), "the program died");
    // What the killed command wrote reads back (cut short, no END).
    let r = Reader::open(&out).unwrap();
    assert!(r.end().is_none());
    assert!(r.record_count() > 0);
}

#[test]
fn a_full_disk_is_a_clear_error_and_the_program_runs_on() {
    let dir = TempDir::new("enospc");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .output()
        .is_ok_and(|o| o.status.success());
    if !mounted {
        println!("skipped: cannot mount a 1 MiB tmpfs here (needs root)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(mnt.clone());
    let out = mnt.join("hot.lttrace");
    let mut c = livetrace(dir.path());
    c.args(["record", "-t", "graph", "-f", "hot_*", "-o"])
        .arg(&out)
        .arg("--")
        .arg(program("hot"))
        .args(["0", "2", "20", "300000"]);
    let r = run(c);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("No space left on device"), "{}", r.stderr);
    assert!(r.stderr.contains("goes on, untraced"), "{}", r.stderr);
    // The program ran to its end, every call made.
    assert!(r.stdout.contains("HOT calls=600000"), "{}", r.stdout);
    // What fitted reads back.
    let rd = Reader::open(&out).unwrap();
    assert!(rd.record_count() > 0);
}

#[test]
fn the_flight_recorder_snapshot_holds_each_threads_newest_records() {
    let dir = TempDir::new("flight");
    std::fs::create_dir_all(dir.path()).unwrap();
    let p = Running::start(dir.path(), "hot", &["120", "2", "200"]);
    let pid = p.pid.to_string();
    let last = dir.path().join("last.lttrace");
    let mut flight = livetrace(dir.path())
        .args([
            "trace", &pid, "--flight", "-t", "graph", "-f", "hot_*", "--buffer", "4096", "-o",
        ])
        .arg(&last)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(
        Duration::from_secs(20),
        || enabled(dir.path(), p.pid).contains("hot_a"),
        || "the flight recorder never started".to_string(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let snap = dir.path().join("snap.lttrace");
    let o = livetrace(dir.path())
        .args(["snapshot", &pid, "-o"])
        .arg(&snap)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut r = Reader::open(&snap).unwrap();
    assert_eq!(r.end().unwrap().reason, EndReason::Snapshot);
    let threads: Vec<(u32, u64, u64)> = r
        .threads()
        .iter()
        .filter(|t| t.records > 0)
        .map(|t| (t.tid, t.records, t.lost.get(LossReason::Overwritten)))
        .collect();
    assert_eq!(threads.len(), 2, "{threads:?}");
    for &(tid, kept, lost) in &threads {
        // The newest 4096 (a record being written at the freeze may be
        // left out), the rest counted overwritten.
        assert!((4090..=4096).contains(&kept), "{threads:?}");
        assert!(lost > 10_000, "{threads:?}");
        let mut it = r.thread_records(tid);
        let (first, _) = it.next_chunk().unwrap().unwrap();
        assert_eq!(first, lost, "the kept records follow the overwritten ones");
    }
    // The snapshot thawed the buffers: the recorder goes on, and writes its
    // own last records when it ends.
    // SAFETY: SIGINT to the command we started.
    unsafe { libc::kill(flight.id() as i32, libc::SIGINT) };
    let status = flight.wait().unwrap();
    let mut err = String::new();
    BufReader::new(flight.stderr.take().unwrap())
        .lines()
        .for_each(|l| err.push_str(&l.unwrap()));
    assert!(status.success(), "{err}");
    let n = counts(&last);
    assert!(n.records >= 2 * 4000, "{} records", n.records);
    assert!(n.lost > 0);
    // A trigger takes the snapshot: the buffers freeze at the first call of
    // hot_b after the start, and the command writes them and ends.
    let trig = dir.path().join("trig.lttrace");
    let o = livetrace(dir.path())
        .args([
            "trace",
            &pid,
            "--flight",
            "-t",
            "graph",
            "-f",
            "hot_*",
            "--buffer",
            "1024",
            "--snapshot-at",
            "hot_b",
            "-d",
            "60s",
            "-o",
        ])
        .arg(&trig)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("the snapshot trigger fired"), "{err}");
    let r = Reader::open(&trig).unwrap();
    assert_eq!(r.end().unwrap().reason, EndReason::Snapshot);
    assert!(r.record_count() > 0 && r.record_count() <= 2 * 1024);
    wait_for(
        Duration::from_secs(20),
        || !enabled(dir.path(), p.pid).contains("hot_"),
        || "still traced".to_string(),
    );
}

/// Records `controls` with `args`; the entries per function.
fn controlled(tracer: &str, args: &[&str]) -> Counts {
    let dir = TempDir::new("controls");
    std::fs::create_dir_all(dir.path()).unwrap();
    let out = dir.path().join("c.lttrace");
    let mut c = livetrace(dir.path());
    c.args(["record", "-t", tracer]);
    if !args.contains(&"-f") {
        c.args(["-f", "*"]);
    }
    c.args(args)
        .arg("-o")
        .arg(&out)
        .arg("--")
        .arg(program("controls"));
    let r = run(c);
    assert!(r.ok, "{args:?}: {}", r.stderr);
    counts(&out)
}

#[test]
fn volume_controls_keep_exactly_what_they_say() {
    let entries = |n: &Counts| -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> =
            n.by.iter()
                .filter(|((_, k), _)| *k == Kind::Entry)
                .map(|((f, _), c)| (f.clone(), *c))
                .collect();
        v.sort();
        v
    };
    let e = |v: &[(&str, u64)]| -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = v.iter().map(|(f, c)| (f.to_string(), *c)).collect();
        v.sort();
        v
    };
    // Everything: main, fast x5+6+4, begin, outer x3, slow x3, end.
    let all = controlled("graph", &[]);
    assert_eq!(
        entries(&all),
        e(&[
            ("main", 1),
            ("fast", 15),
            ("begin", 1),
            ("outer", 3),
            ("slow", 3),
            ("end", 1)
        ])
    );
    // Depth 2: main and what it calls itself.
    let d = controlled("graph", &["--depth", "2"]);
    assert_eq!(
        entries(&d),
        e(&[
            ("main", 1),
            ("fast", 9),
            ("begin", 1),
            ("outer", 3),
            ("end", 1)
        ])
    );
    assert_eq!(d.get("outer", Kind::Exit), 3);
    // Calls of at least 1 ms: the sleeping ones and their callers.
    let m = controlled("graph", &["--min-duration", "1ms"]);
    assert_eq!(entries(&m), e(&[("main", 1), ("outer", 3), ("slow", 3)]));
    assert_eq!(m.get("slow", Kind::Exit), 3);
    assert_eq!(m.get("main", Kind::Exit), 1);
    // From begin's call to end's: begin and the three outer calls.
    let t = controlled("graph", &["--start-at", "begin", "--stop-at", "end"]);
    assert_eq!(
        entries(&t),
        e(&[("begin", 1), ("outer", 3), ("fast", 6), ("slow", 3)])
    );
    let f = controlled("function", &["--start-at", "begin", "--stop-at", "end"]);
    assert_eq!(f.get("begin", Kind::Call), 1);
    assert_eq!(f.get("outer", Kind::Call), 3);
    assert_eq!(f.get("fast", Kind::Call), 6);
    assert_eq!(f.get("end", Kind::Call), 0);
    assert_eq!(f.get("main", Kind::Call), 0);
    // A trigger outside the filter only triggers.
    let o = controlled("function", &["-f", "fast", "--start-at", "begin"]);
    assert_eq!(o.get("begin", Kind::Call), 0);
    assert_eq!(o.get("fast", Kind::Call), 6 + 4);
    // Controls that do not fit the tracer are refused before anything runs.
    let dir = TempDir::new("badctl");
    let o = livetrace(dir.path())
        .args([
            "record",
            "-t",
            "function",
            "--depth",
            "2",
            "-o",
            "x.lttrace",
            "--",
        ])
        .arg(program("controls"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("need the graph tracer"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn memory_stays_bounded_over_ten_million_events() {
    let dir = TempDir::new("bounded");
    std::fs::create_dir_all(dir.path()).unwrap();
    let out = dir.path().join("big.lttrace");
    let mut c = livetrace(dir.path());
    c.args(["record", "-t", "graph", "-f", "hot_*", "-o"])
        .arg(&out)
        .arg("--")
        .arg(program("hot"))
        .args(["0", "2", "4", "800000"]);
    let started = Instant::now();
    let r = run(c);
    assert!(r.ok, "{}", r.stderr);
    let n = Reader::open(&out).unwrap();
    let kept = n.record_count();
    eprintln!(
        "{kept} records kept, {} lost, in {:.1}s, command peak RSS {} KiB",
        n.lost_count(),
        started.elapsed().as_secs_f64(),
        r.max_rss_kb
    );
    assert!(kept >= 10_000_000, "only {kept} records");
    assert!(
        r.max_rss_kb <= 64 * 1024,
        "record used {} KiB",
        r.max_rss_kb
    );
    // Converting it is bounded too.
    let folded = dir.path().join("big.folded");
    let mut c = Command::new(CLI);
    c.arg("convert").arg(&out).arg("-o").arg(&folded);
    let r = run(c);
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.max_rss_kb <= 64 * 1024,
        "convert used {} KiB",
        r.max_rss_kb
    );
    let s = std::fs::read_to_string(&folded).unwrap();
    assert!(
        s.lines().any(|l| l.starts_with("hot_a;hot_b;hot_c ")),
        "{s}"
    );
}

#[test]
fn a_program_that_ends_mid_trace_leaves_everything_received_written() {
    let dir = TempDir::new("ends");
    std::fs::create_dir_all(dir.path()).unwrap();
    let p = Running::start(dir.path(), "hot", &["1.5", "2", "300"]);
    let out = dir.path().join("x.folded");
    let o = livetrace(dir.path())
        .args([
            "trace",
            &p.pid.to_string(),
            "-t",
            "graph",
            "-f",
            "hot_*",
            "-d",
            "20s",
            "-o",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("the program ended"), "{err}");
    assert!(!err.contains("Broken pipe"), "{err}");
    let folded = std::fs::read_to_string(&out).unwrap();
    let calls: u64 = folded
        .lines()
        .filter_map(|l| l.strip_prefix("hot_a;hot_b;hot_c "))
        .map(|n| n.parse::<u64>().unwrap())
        .sum();
    assert!(calls > 0, "{folded}");
}
