//! Attaching to a running program: from the command to the first traced
//! event, the longest any thread of the program is stopped meanwhile, and
//! detaching.
//!
//! Method: a C program with 10,000 functions (generated, gcc
//! `-fpatchable-function-entry=5`: 10,000 sleds to convert) is started
//! without any livetrace setup; two threads call all of its functions in
//! turn, one waits in `poll`, and each busy thread records the longest gap
//! between two of its rounds of calls. Each round starts a fresh program
//! (its sleds are unconverted) and runs
//! `livetrace trace PID -f 'work_*' -t graph` (which attaches, then
//! streams): `attach_ms` is the time from starting the command to the first
//! event line it prints. `program_pause_ms` is the longest any one thread
//! of the program was stopped, as the injector measured it (the command
//! reports it); the program's own view, the longest gap a busy thread saw,
//! is `program_gap_ms`, next to `baseline_gap_ms`, the longest gap over as
//! long a window before attaching (the machine's own noise). `detach_ms`
//! is `livetrace detach PID` after tracing ended. Medians over the rounds.
//!
//! The `livetrace` command and `liblivetrace.so` are this build's, brought
//! up to date first.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FUNCTIONS: usize = 10_000;
const ROUNDS: usize = 5;

#[derive(clap::Args)]
pub struct Args {
    /// Rounds (a fresh program each)
    #[arg(long, default_value_t = ROUNDS)]
    rounds: usize,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `livetrace` and `liblivetrace.so` of this profile, brought up to date.
fn tools() -> (PathBuf, PathBuf) {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("target directory").to_path_buf();
    let release = dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "-q",
        "-p",
        "livetrace-preload",
        "-p",
        "livetrace-cli",
    ])
    .current_dir(workspace());
    if release {
        cmd.arg("--release");
    }
    assert!(
        cmd.status().is_ok_and(|s| s.success()),
        "cannot build livetrace-preload and livetrace-cli"
    );
    (dir.join("livetrace"), dir.join("liblivetrace.so"))
}

/// The generated program's source: FUNCTIONS functions `work_N`, a table
/// of them, busy threads calling them all in turn and timing their rounds.
fn source() -> String {
    let mut s = String::from(
        "#define _GNU_SOURCE\n#include <poll.h>\n#include <pthread.h>\n#include <stdatomic.h>\n\
         #include <stdint.h>\n#include <stdio.h>\n#include <string.h>\n#include <time.h>\n\
         #include <unistd.h>\n",
    );
    // FUNCTIONS - 2 functions f_N, and work_round calling work_step: the
    // two a `-f 'work_*'` trace names.
    for i in 0..FUNCTIONS - 2 {
        s.push_str(&format!(
            "__attribute__((noinline)) uint64_t f_{i}(uint64_t x) {{ return x * {} + {i}; }}\n",
            2 * i + 1
        ));
    }
    s.push_str(
        "__attribute__((noinline)) uint64_t work_step(uint64_t x) { return x ^ (x >> 7); }\n\
         __attribute__((noinline)) uint64_t work_round(uint64_t x) { return work_step(x) + 1; }\n",
    );
    s.push_str("typedef uint64_t (*fn_t)(uint64_t);\nstatic fn_t table[] = {\n");
    for i in 0..FUNCTIONS - 2 {
        s.push_str(&format!("f_{i},\n"));
    }
    s.push_str(
        r#"};
#define NOSITE __attribute__((patchable_function_entry(0, 0), noinline))
static _Atomic uint64_t max_gap_ns, sink;
NOSITE static uint64_t now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}
NOSITE static void *busy(void *arg) {
    uint64_t x = (uint64_t)(uintptr_t)arg, last = now();
    for (;;) {
        for (size_t i = 0; i < sizeof table / sizeof table[0]; i += 16) {
            for (size_t j = i; j < i + 16 && j < sizeof table / sizeof table[0]; j++)
                x = table[j](x);
            uint64_t t = now(), gap = t - last;
            last = t;
            uint64_t m = atomic_load(&max_gap_ns);
            while (gap > m && !atomic_compare_exchange_weak(&max_gap_ns, &m, gap))
                ;
        }
        atomic_store(&sink, work_round(x));
        usleep(200);
        last = now();
    }
    return NULL;
}
NOSITE static void *idle(void *arg) {
    int p[2];
    if (pipe(p)) return arg;
    struct pollfd f = {.fd = p[0], .events = POLLIN};
    for (;;) poll(&f, 1, -1);
}
int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    pthread_t t;
    pthread_create(&t, NULL, idle, NULL);
    for (int i = 0; i < 2; i++) pthread_create(&t, NULL, busy, (void *)(uintptr_t)(i + 1));
    usleep(50000);
    printf("ready pid=%d\n", getpid());
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (!strncmp(line, "gap", 3)) {
            printf("gap_ns=%llu\n", (unsigned long long)atomic_exchange(&max_gap_ns, 0));
        }
    }
    return 0;
}
"#,
    );
    s
}

struct Program {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Program {
    fn gap_ms(&mut self) -> f64 {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "gap").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim()
            .strip_prefix("gap_ns=")
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("unexpected {line:?}"))
            / 1e6
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the benchmark and prints its RESULT line.
pub fn run(args: Args) {
    let (cli, lib) = tools();
    let tmp = std::env::temp_dir().join(format!("livetrace-bench-attach-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let src = tmp.join("prog.c");
    std::fs::write(&src, source()).unwrap();
    let exe = tmp.join("prog");
    eprintln!("attach: building a program with {FUNCTIONS} functions");
    let built = Command::new("gcc")
        .args(["-O2", "-pthread", "-fpatchable-function-entry=5", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("gcc");
    assert!(built.success(), "gcc failed");
    let sockets = tmp.join("sockets");
    std::fs::create_dir_all(&sockets).unwrap();
    let start = || -> Program {
        let mut cmd = Command::new(&exe);
        cmd.env("LIVETRACE_SOCKET_DIR", &sockets)
            .env_remove("LD_PRELOAD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("start the program");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(line.starts_with("ready pid="), "{line:?}");
        Program { child, stdout }
    };
    let livetrace = |args: &[&str]| {
        let mut c = Command::new(&cli);
        c.args(args)
            .env("LIVETRACE_SOCKET_DIR", &sockets)
            .env("LIVETRACE_PRELOAD_LIB", &lib);
        c
    };
    let mut r = Figures::default();
    for round in 0..args.rounds {
        // From the command to the first event, attaching on demand.
        let prog = start();
        let pid = prog.child.id().to_string();
        let (attach_ms, err) =
            first_event(livetrace(&["trace", &pid, "-f", "work_*", "-t", "graph"]));
        let pause_ms = pause_of(&err);
        // On the attached process, a graph session on all of its functions:
        // what starting a session that large costs (the tracing core's).
        let (session_ms, _) = first_event(livetrace(&["trace", &pid, "-f", "f_*", "-t", "graph"]));
        let t1 = Instant::now();
        let d = livetrace(&["detach", &pid])
            .output()
            .expect("livetrace detach");
        let detach_ms = t1.elapsed().as_secs_f64() * 1e3;
        assert!(
            d.status.success(),
            "detach failed: {}",
            String::from_utf8_lossy(&d.stderr)
        );
        drop(prog);
        // Attaching alone, on a fresh program: what the program sees of it,
        // against what it sees of the machine over a window before.
        let mut prog = start();
        let pid = prog.child.id().to_string();
        prog.gap_ms();
        std::thread::sleep(Duration::from_millis(300));
        let base_ms = prog.gap_ms();
        let t2 = Instant::now();
        let a = livetrace(&["attach", &pid])
            .output()
            .expect("livetrace attach");
        let attach_only_ms = t2.elapsed().as_secs_f64() * 1e3;
        let gap_ms = prog.gap_ms();
        assert!(
            a.status.success(),
            "attach failed: {}",
            String::from_utf8_lossy(&a.stderr)
        );
        let pause2_ms = pause_of(&String::from_utf8_lossy(&a.stdout));
        drop(prog);
        eprintln!(
            "attach: round {round}: first event {attach_ms:.1} ms (session start alone \
             {session_ms:.1} ms), attach alone {attach_only_ms:.1} ms, longest thread stop \
             {pause_ms:.1} / {pause2_ms:.1} ms, program's longest gap {gap_ms:.1} ms (baseline \
             {base_ms:.1} ms), detach {detach_ms:.1} ms"
        );
        r.attach.push(attach_ms);
        r.session.push(session_ms);
        r.attach_only.push(attach_only_ms);
        r.pause.push(pause_ms.max(pause2_ms));
        r.gap.push(gap_ms);
        r.base.push(base_ms);
        r.detach.push(detach_ms);
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let m = crate::stats::median;
    println!(
        "RESULT bench=attach attach_ms={:.1} attach_only_ms={:.1} session_start_ms={:.1} \
         program_pause_ms={:.1} program_gap_ms={:.1} baseline_gap_ms={:.1} detach_ms={:.1} \
         functions={FUNCTIONS} rounds={}",
        m(&mut r.attach),
        m(&mut r.attach_only),
        m(&mut r.session),
        m(&mut r.pause),
        m(&mut r.gap),
        m(&mut r.base),
        m(&mut r.detach),
        args.rounds
    );
}

#[derive(Default)]
struct Figures {
    attach: Vec<f64>,
    attach_only: Vec<f64>,
    session: Vec<f64>,
    pause: Vec<f64>,
    gap: Vec<f64>,
    base: Vec<f64>,
    detach: Vec<f64>,
}

/// Runs a streaming `livetrace trace`: ms from its start to its first
/// event line; then Ctrl-C, and its stderr.
fn first_event(mut cmd: Command) -> (f64, String) {
    let t0 = Instant::now();
    let mut trace = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("livetrace trace");
    let mut out = BufReader::new(trace.stdout.take().unwrap());
    let mut first = None;
    let mut l = String::new();
    while out.read_line(&mut l).is_ok_and(|n| n > 0) {
        if l.contains("work_") || l.contains(" f_") {
            first = Some(t0.elapsed());
            break;
        }
        l.clear();
    }
    // SAFETY: signals our own child.
    unsafe { libc::kill(trace.id() as i32, libc::SIGINT) };
    // Keep reading, or it blocks writing events and never sees Ctrl-C.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let done = trace.wait_with_output().expect("livetrace trace");
    let err = String::from_utf8_lossy(&done.stderr).into_owned();
    let ms = first
        .unwrap_or_else(|| panic!("no event from livetrace trace:\n{err}"))
        .as_secs_f64()
        * 1e3;
    (ms, err)
}

/// The longest thread stop `livetrace` reports when it attaches.
fn pause_of(text: &str) -> f64 {
    text.split("no thread stopped longer than ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no pause figure from livetrace:\n{text}"))
}
