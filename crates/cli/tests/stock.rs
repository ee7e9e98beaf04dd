//! Stock binaries, as the distribution ships them (no patchable entries,
//! stripped, started without livetrace): the `sqlite3` shell on
//! `libsqlite3.so.0` and the `lua5.4` interpreter (its VM inside the PIE
//! executable). Each is kept busy answering queries while `livetrace
//! trace PID` attaches, relocates the functions its filter names and
//! traces them with every tracer; then `detach`. Every answer, during and
//! after, must be the one it gave before livetrace came, and the program
//! must end normally.
//!
//! The tools come from Debian's packages (`.ci/setup-packages`).

mod common;

use std::io::{BufRead, BufReader, Write};

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;

use common::{preload_lib, TempDir, CLI};

/// A stock program answering one query per input line, kept busy by a
/// thread that checks every answer against the first.
struct Busy {
    child: Child,
    pid: String,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    asker: Option<JoinHandle<Result<(), String>>>,
    sockets: TempDir,
}

impl Busy {
    fn start(cmd: &mut Command, query: &'static str) -> Busy {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut ask = move || -> Result<String, String> {
            stdin
                .write_all(query.as_bytes())
                .and_then(|_| stdin.flush())
                .map_err(|e| format!("writing the query: {e}"))?;
            let mut line = String::new();
            match stdout.read_line(&mut line) {
                Ok(0) => Err("the program closed its output (died?)".into()),
                Ok(_) => Ok(line),
                Err(e) => Err(format!("reading the answer: {e}")),
            }
        };
        let first = ask().unwrap();
        assert!(!first.trim().is_empty());
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let asker = {
            let (stop, answered) = (stop.clone(), answered.clone());
            std::thread::spawn(move || {
                while !stop.load(Relaxed) {
                    let a = ask()?;
                    if a != first {
                        return Err(format!("answer changed: {first:?} became {a:?}"));
                    }
                    answered.fetch_add(1, Relaxed);
                }
                Ok(())
            })
        };
        let pid = child.id().to_string();
        let sockets = TempDir::new("stock");
        std::fs::create_dir_all(sockets.path()).unwrap();
        Busy {
            child,
            pid,
            stop,
            answered,
            asker: Some(asker),
            sockets,
        }
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(CLI)
            .args(args)
            .env("LIVETRACE_SOCKET_DIR", self.sockets.path())
            .env("LIVETRACE_PRELOAD_LIB", preload_lib())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success(),
            "livetrace {args:?}: {:?}\n{err}",
            o.status
        );
        String::from_utf8_lossy(&o.stdout).into_owned() + &err
    }

    /// `trace` from a flight recorder (each thread's newest records) into
    /// `file`.
    fn flight(&self, tracer: &str, glob: &str, file: &Path) -> String {
        let o = file.to_str().unwrap();
        let pid = &self.pid;
        self.ok(&[
            "trace", pid, "-t", tracer, "-f", glob, "-d", "400ms", "--flight", "--buffer", "4096",
            "-o", o,
        ])
    }

    /// Checks the answers so far, and that some came meanwhile.
    fn still_right(&mut self, since: u64) -> u64 {
        if self.asker.as_ref().is_some_and(|a| a.is_finished()) {
            let r = self.asker.take().unwrap().join().unwrap();
            panic!("the program stopped answering right: {r:?}");
        }
        let n = self.answered.load(Relaxed);
        assert!(n > since, "no answer since the last check ({n})");
        n
    }

    /// Every tracer, on the functions `glob` names, in the running
    /// program; `expect` is a function the profile must count (the traced
    /// files hold the newest calls, of any function `glob` names). The traced
    /// calls run at millions a second: files are written from small
    /// flight-recorder buffers (each thread's newest 4,096 records), not
    /// every call (a gigabyte of JSON).
    fn trace_every_tracer(&mut self, glob: &str, expect: &str) {
        let dir = TempDir::new("stock-out");
        std::fs::create_dir_all(dir.path()).unwrap();
        let mut n = self.answered.load(Relaxed);
        let pid = self.pid.clone();
        let prefix = glob.trim_end_matches('*');
        let func = dir.path().join("func.json");
        let out = self.flight("function", glob, &func);
        let text = std::fs::read_to_string(&func).unwrap();
        assert!(
            text.contains(&format!("\"name\":\"{prefix}")),
            "{out}\n{text:.1000}"
        );
        serde_json::from_str::<serde_json::Value>(&text).expect("Chrome JSON");
        n = self.still_right(n);
        let graph = dir.path().join("graph.txt");
        self.flight("graph", glob, &graph);
        let text = std::fs::read_to_string(&graph).unwrap();
        assert!(
            text.lines()
                .any(|l| l.contains(prefix) && (l.contains("() {") || l.contains("();"))),
            "{text:.2000}"
        );
        n = self.still_right(n);
        // Long enough for calls to end even on a loaded machine: a profile
        // row counts finished calls.
        let profile = self.ok(&["trace", &pid, "-t", "profile", "-f", glob, "-d", "1s"]);
        assert!(profile.contains(expect), "{profile}");
        self.still_right(n);
    }

    /// Detaches, checks the answers go on right, and ends the program.
    fn finish(mut self) {
        let pid = self.pid.clone();
        let n = self.answered.load(Relaxed);
        let d = self.ok(&["detach", &pid]);
        assert!(d.contains("unloaded"), "{d}");
        std::thread::sleep(std::time::Duration::from_millis(200));
        self.still_right(n);
        self.stop.store(true, Relaxed);
        let r = self.asker.take().unwrap().join().unwrap();
        assert_eq!(r, Ok(()));
        // End of input: the program ends on its own, normally.
        drop(self.child.stdin.take());
        let mut child =
            std::mem::replace(&mut self.child, Command::new("true").spawn().expect("true"));
        // The asker owned its stdin: the program sees end of input now.
        let status = child.wait().unwrap();
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        assert!(status.success(), "{status:?}: {err}");
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success())
        || Command::new(cmd)
            .arg("-v")
            .output()
            .is_ok_and(|o| o.status.success())
}

#[test]
fn stock_sqlite3_shell_traced_by_attach_with_every_tracer() {
    assert!(
        have("sqlite3"),
        "sqlite3 is installed by .ci/setup-packages"
    );
    let mut p = Busy::start(
        Command::new("sqlite3").arg(":memory:"),
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000) \
         SELECT sum(x * x % 7), sum(length(printf('%d-%s', x, hex(x)))), \
         group_concat(substr(upper(hex(x)), 1, 1), '') LIKE '%F%', count(*) FROM c;\n",
    );
    // The library's API, as the shell calls it (through the PLT).
    p.trace_every_tracer("sqlite3_*", "sqlite3_step");
    p.finish();
}

#[test]
fn stock_lua_interpreter_traced_by_attach_with_every_tracer() {
    assert!(have("lua5.4"), "lua5.4 is installed by .ci/setup-packages");
    let script = r#"
        local function work(n)
            local t = {}
            for i = 1, n do t[i] = string.format("%d:%x", i, i * i) end
            local s = 0
            for i, v in ipairs(t) do s = (s + #v * i) % 1000003 end
            table.sort(t)
            return s .. " " .. t[1] .. " " .. t[#t] .. " " .. #table.concat(t, ",")
        end
        for line in io.lines() do
            print(work(tonumber(line)))
            io.stdout:flush()
        end
    "#;
    let mut p = Busy::start(Command::new("lua5.4").args(["-e", script]), "400\n");
    // The C API inside the executable, which its own libraries call
    // directly (the full caller: callers may keep any register).
    p.trace_every_tracer("lua_*", "lua_pushinteger");
    p.finish();
}
