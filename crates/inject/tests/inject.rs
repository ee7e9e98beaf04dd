//! The injector on a real program: a C program started normally, with
//! busy threads checking their own registers and threads blocked in
//! `poll`, gets a library loaded, functions called on chosen threads, the
//! library unloaded, and must not notice any of it.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use livetrace_inject::{Arg, Error, Process, Refusal, Safety, Target};

const T: Duration = Duration::from_secs(20);

fn build_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("inject-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c");
        let gcc = |args: &[&str]| {
            let out = Command::new("gcc").args(args).output().expect("gcc");
            assert!(
                out.status.success(),
                "gcc {args:?}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let s = |n: &str| src.join(n).display().to_string();
        let o = |n: &str| dir.join(n).display().to_string();
        gcc(&["-O2", "-pthread", "-o", &o("target"), &s("target.c")]);
        gcc(&[
            "-O2",
            "-shared",
            "-fPIC",
            "-o",
            &o("libprobe.so"),
            &s("probe.c"),
        ]);
        gcc(&["-O2", "-static", "-o", &o("static"), &s("static.c")]);
        dir
    })
}

struct Program {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pid: i32,
    poll: [i32; 2],
    busy0: i32,
}

impl Program {
    fn start() -> Program {
        let mut child = Command::new(build_dir().join("target"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let f = fields(&line);
        Program {
            pid: f("pid"),
            poll: [f("poll0"), f("poll1")],
            busy0: f("busy0"),
            child,
            stdin,
            stdout,
        }
    }

    fn ask(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line
    }

    /// Both poll threads must wake on their data, with no EINTR, no error
    /// and no early timeout ever seen, and the busy threads intact and
    /// moving.
    fn assert_unharmed(&mut self) {
        let before = self.ask("status");
        let woken = self.ask("poke");
        assert_eq!(woken.trim(), "woken0=1 woken1=1", "{woken}");
        std::thread::sleep(Duration::from_millis(50));
        let after = self.ask("status");
        for s in [&before, &after] {
            assert!(
                s.contains("corrupt=0 eintr=0 errors=0 timeouts=0"),
                "the program noticed: {s}"
            );
        }
        let progress = |s: &str| -> Vec<u64> {
            let p = s.split_whitespace().next().unwrap();
            p.trim_start_matches("progress=")
                .split(',')
                .map(|v| v.parse().unwrap())
                .collect()
        };
        let (a, b) = (progress(&before), progress(&after));
        assert!(a.iter().zip(&b).all(|(x, y)| y > x), "{before} {after}");
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fields(line: &str) -> impl Fn(&str) -> i32 + '_ {
    move |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {k} in {line:?}"))
            .trim()
            .parse()
            .unwrap()
    }
}

fn maps_has(pid: i32, needle: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .contains(needle)
}

fn tracer_of(pid: i32) -> i32 {
    livetrace_inject::procfs::status(&pid.to_string())
        .unwrap()
        .tracer
}

#[test]
fn load_call_unload_unnoticed() {
    let mut prog = Program::start();
    let lib = build_dir().join("libprobe.so");
    let lib_s = lib.display().to_string();
    let target = Target::inspect(prog.pid).expect("inspect");
    let mut p = Process::seize(target).expect("seize");
    assert!(p.tids().len() >= 7, "{:?}", p.tids());

    let handle = p.dlopen(&lib_s, libc::RTLD_NOW, T).expect("dlopen");
    assert_ne!(handle, 0);
    let m = p.module(&lib_s).unwrap().expect("mapped");
    let sym = |n: &str| m.symbol(n).unwrap().unwrap().addr;
    // The constructor ran.
    let mut v = [0u8; 4];
    p.read(sym("probe_constructed"), &mut v).unwrap();
    assert_eq!(i32::from_le_bytes(v), 42);

    // Arguments copied onto the stack.
    let sum = p
        .call(
            sym("probe_sum"),
            &[Arg::Bytes(b"hello\0")],
            Safety::CallsLibc,
            T,
        )
        .unwrap();
    assert_eq!(sum, b"hello".iter().map(|&b| u64::from(b)).sum::<u64>());

    // On each poll thread: one interrupted without a timeout
    // (-ERESTARTNOHAND), one with (-ERESTART_RESTARTBLOCK); each call
    // clobbers every vector and scratch register and sets errno.
    for &tid in &prog.poll {
        let got = p
            .call_on_thread(tid, sym("probe_tid"), &[], Safety::CallsLibc, T)
            .unwrap();
        assert_eq!(got as i32, tid);
        p.call_on_thread(tid, sym("probe_clobber"), &[], Safety::LockFree, T)
            .unwrap();
        p.call_on_thread(tid, sym("probe_errno"), &[], Safety::CallsLibc, T)
            .unwrap();
    }
    // On a busy thread, interrupted anywhere: its registers must come back.
    let busy: Vec<i32> = [prog.busy0].into();
    for &tid in &busy {
        for _ in 0..20 {
            p.call_on_thread(tid, sym("probe_clobber"), &[], Safety::LockFree, T)
                .unwrap();
        }
    }

    // Holding the world: every thread stopped, positions checked.
    p.hold().unwrap();
    let probe_text = m.text();
    assert_eq!(
        p.find_inside(|a| probe_text.iter().any(|&(lo, hi)| lo <= a && a < hi))
            .unwrap(),
        None
    );
    // A lock-free call while everything is held.
    let got = p
        .call(sym("probe_clobber"), &[], Safety::LockFree, T)
        .unwrap();
    assert_eq!(got, 7);
    p.release().unwrap();

    p.dlclose(handle, T).expect("dlclose");
    assert!(!maps_has(prog.pid, "libprobe.so"));
    let stats = p.detach().unwrap();
    assert!(stats.calls >= 10, "{stats:?}");
    assert_eq!(tracer_of(prog.pid), 0);

    prog.assert_unharmed();
}

#[test]
fn a_failed_load_says_why_and_changes_nothing() {
    let mut prog = Program::start();
    let mut p = Process::seize(Target::inspect(prog.pid).unwrap()).unwrap();
    let e = p
        .dlopen("/nonexistent/libnothing.so", libc::RTLD_NOW, T)
        .unwrap_err();
    match &e {
        Error::Load(msg) => assert!(msg.contains("No such file"), "{msg}"),
        other => panic!("{other}"),
    }
    drop(p); // detaches
    assert_eq!(tracer_of(prog.pid), 0);
    prog.assert_unharmed();
}

#[test]
fn refuses_static_and_traced_processes() {
    let mut stat = Command::new(build_dir().join("static")).spawn().unwrap();
    let r = Target::inspect(stat.id() as i32).unwrap_err();
    assert!(matches!(r, Refusal::Static { .. }), "{r}");
    assert!(r.to_string().contains("statically linked"), "{r}");
    let _ = stat.kill();
    let _ = stat.wait();

    let prog = Program::start();
    let p = Process::seize(Target::inspect(prog.pid).unwrap()).unwrap();
    // While we trace it, it is traced.
    let r = Target::inspect(prog.pid).unwrap_err();
    match &r {
        // TracerPid names the tracing thread: this one.
        Refusal::Traced { tracer, .. } => {
            // SAFETY: gettid cannot fail.
            assert_eq!(*tracer, unsafe { libc::syscall(libc::SYS_gettid) } as i32)
        }
        other => panic!("{other}"),
    }
    drop(p);
    Target::inspect(prog.pid).expect("free again");

    assert!(matches!(
        Target::inspect(std::process::id() as i32),
        Err(Refusal::Ourselves)
    ));
    assert!(matches!(
        Target::inspect(i32::MAX),
        Err(Refusal::NoSuchProcess(_))
    ));
}

#[test]
fn held_threads_stay_held() {
    let mut prog = Program::start();
    let mut p = Process::seize(Target::inspect(prog.pid).unwrap()).unwrap();
    p.hold().unwrap();
    let status = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    for tid in p.tids() {
        let s = status(tid);
        assert!(s.contains("State:\tt (tracing stop)"), "{tid}: {s}");
    }
    p.release().unwrap();
    drop(p);
    prog.assert_unharmed();
}

#[test]
fn signals_pass_through_holds_and_calls() {
    // A queued real-time signal (counted by a handler) is sent to a busy
    // thread while the world is held, released and borrowed for calls:
    // each must be delivered exactly once, and every hold must succeed,
    // after the signals stop too (a signal's stop also ends a pending
    // interrupt: no later hold may wait for that one).
    let mut prog = Program::start();
    let lib = build_dir().join("libprobe.so");
    let lib_s = lib.display().to_string();
    let (pid, tid) = (prog.pid, prog.busy0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let sender = std::thread::spawn(move || {
        let mut sent = 0u64;
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            // SAFETY: a queued signal to a thread of our child.
            let rc = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGRTMIN() + 1) };
            assert_eq!(rc, 0);
            sent += 1;
            std::thread::sleep(Duration::from_micros(300));
        }
        sent
    });
    let mut p = Process::seize(Target::inspect(prog.pid).unwrap()).unwrap();
    let handle = p.dlopen(&lib_s, libc::RTLD_NOW, T).unwrap();
    let m = p.module(&lib_s).unwrap().unwrap();
    let clobber = m.symbol("probe_clobber").unwrap().unwrap().addr;
    let mut sender = Some(sender);
    let mut sent = 0;
    for i in 0..60 {
        if i == 30 {
            // No more signals: a hold must not wait for one.
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            sent = sender.take().unwrap().join().unwrap();
        }
        p.hold().unwrap();
        if i % 3 == 0 {
            p.call(clobber, &[], Safety::LockFree, T).unwrap();
        }
        p.release().unwrap();
        if i % 5 == 0 {
            p.call_on_thread(tid, clobber, &[], Safety::LockFree, T)
                .unwrap();
        }
    }
    p.dlclose(handle, T).unwrap();
    drop(p);
    std::thread::sleep(Duration::from_millis(100));
    let got = prog.ask("signals");
    assert!(
        got.trim().starts_with(&format!("signals={sent} ")),
        "sent {sent}: {got}"
    );
    prog.assert_unharmed();
}

/// Calls on a thread that creates threads without pause, and holds with a
/// call while it does: it is nearly always inside `clone3`, where ptrace
/// stops it to report the new thread. A call made from there (registers
/// saved inside the system call, `rax` still the kernel's `-ENOSYS`
/// placeholder) returned "ENOSYS" to glibc for a thread that was created,
/// and glibc created it again on the same stack: the program crashed.
#[test]
fn calls_never_start_inside_clone() {
    let mut prog = Program::start();
    let spawner = fields(&prog.ask("spawn"))("spawner");
    let lib = build_dir().join("libprobe.so");
    let lib_s = lib.display().to_string();
    let mut p = Process::seize(Target::inspect(prog.pid).unwrap()).unwrap();
    let handle = p.dlopen(&lib_s, libc::RTLD_NOW, T).unwrap();
    let m = p.module(&lib_s).unwrap().unwrap();
    let clobber = m.symbol("probe_clobber").unwrap().unwrap().addr;
    let tid = m.symbol("probe_tid").unwrap().unwrap().addr;
    for i in 0..300 {
        let got = p
            .call_on_thread(spawner, tid, &[], Safety::LockFree, T)
            .unwrap();
        assert_eq!(got as i32, spawner);
        if i % 10 == 0 {
            // Every thread held, one of them borrowed (the spawner, or
            // the thread it was creating, are candidates).
            p.hold().unwrap();
            p.call(clobber, &[], Safety::LockFree, T).unwrap();
            p.release().unwrap();
        }
    }
    p.dlclose(handle, T).unwrap();
    drop(p);
    std::thread::sleep(Duration::from_millis(100));
    let s = prog.ask("spawned");
    let f = |k: &str| -> i64 {
        s.split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("the program died? {s:?}"))
            .trim()
            .parse()
            .unwrap()
    };
    // Each thread created ran once, and no creation failed.
    assert!(f("spawned") > 0, "{s}");
    assert_eq!(f("failed"), 0, "{s}");
    assert_eq!(f("miscounted"), 0, "{s}");
    prog.assert_unharmed();
}
