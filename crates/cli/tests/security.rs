//! The control socket under hostile or broken clients: other users, garbage
//! frames, protocol violations, clients that go silent. The traced process
//! must never be affected, and must never stay traced.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use common::*;
use livetrace_proto::{
    decode_response, encode, read_frame, write_frame, ErrorCode, Request, Response, TracerKind,
    MAX_FRAME, PROTOCOL_VERSION,
};

fn hello() -> Request {
    Request::Hello {
        version: PROTOCOL_VERSION,
        client: "test".into(),
    }
}

fn send(s: &mut UnixStream, req: &Request) -> Response {
    write_frame(s, &encode(req)).unwrap();
    recv(s)
}

fn recv(s: &mut UnixStream) -> Response {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    decode_response(&read_frame(s, MAX_FRAME).expect("a reply")).unwrap()
}

fn error_code(r: &Response) -> ErrorCode {
    match r {
        Response::Error { code, .. } => *code,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// After an error reply the server closes the connection.
fn assert_closed(s: &mut UnixStream) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).unwrap(), 0, "connection left open");
}

/// Runs `livetrace ls PID` as uid/gid 65534. With `dac_override`, the
/// child keeps CAP_DAC_OVERRIDE so it can reach the root-owned 0700
/// directory and 0600 socket (raised as an ambient capability, which
/// survives the exec): then only the server's SO_PEERCRED check stands
/// between it and the process.
fn ls_as_nobody(t: &Target, dac_override: bool) -> std::process::Output {
    let mut cmd = Command::new(CLI);
    cmd.args([
        "--socket-dir",
        t.dir.path().to_str().unwrap(),
        "ls",
        &t.pid_s(),
    ]);
    // SAFETY: the closure runs in the forked child before exec and makes
    // only async-signal-safe system calls (prctl, setgroups, setgid,
    // setuid, capset), touching no memory but its own stack.
    unsafe {
        cmd.pre_exec(move || {
            if dac_override && libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(65534) != 0
                || libc::setuid(65534) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if dac_override {
                #[repr(C)]
                struct Header {
                    version: u32,
                    pid: i32,
                }
                #[repr(C)]
                struct Data {
                    effective: u32,
                    permitted: u32,
                    inheritable: u32,
                }
                const CAP_DAC_OVERRIDE: u32 = 1;
                let h = Header {
                    version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
                    pid: 0,
                };
                let bit = 1 << CAP_DAC_OVERRIDE;
                let d = [
                    Data {
                        effective: bit,
                        permitted: bit,
                        inheritable: bit,
                    },
                    Data {
                        effective: 0,
                        permitted: 0,
                        inheritable: 0,
                    },
                ];
                if libc::syscall(libc::SYS_capset, &h, d.as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Ambient, so the capability survives the exec of an
                // ordinary binary by an ordinary user.
                if libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE,
                    CAP_DAC_OVERRIDE as libc::c_ulong,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.output().expect("run livetrace as nobody")
}

#[test]
fn other_users_are_refused() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to become another user");
        return;
    }
    let t = Target::start();
    // Without privileges, the 0700 directory and 0600 socket stop it.
    let o = ls_as_nobody(&t, false);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));
    // Past the file permissions, the server's credential check stops it.
    let o = ls_as_nobody(&t, true);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("uid 65534 may not control process") && e.contains("Refused"),
        "{e}"
    );
    assert!(o.stdout.is_empty());
    // The owner still gets in.
    assert!(t.ok(&["ls", &t.pid_s()]).contains("compute"));
}

#[test]
fn protocol_violations_get_an_error_and_a_closed_connection() {
    let t = Target::start();

    // Not JSON.
    let mut s = t.connect();
    write_frame(&mut s, b"\x00\xffgarbage").unwrap();
    assert_eq!(error_code(&recv(&mut s)), ErrorCode::Malformed);
    assert_closed(&mut s);

    // A length over the limit: refused without reading the payload.
    let mut s = t.connect();
    s.write_all(&(MAX_FRAME as u32 + 1).to_le_bytes()).unwrap();
    assert_eq!(error_code(&recv(&mut s)), ErrorCode::TooLarge);
    assert_closed(&mut s);

    // An unknown request, even after a proper hello.
    let mut s = t.connect();
    assert!(matches!(send(&mut s, &hello()), Response::Hello { .. }));
    write_frame(&mut s, br#"{"op":"Poke","addr":4096,"bytes":[204]}"#).unwrap();
    assert_eq!(error_code(&recv(&mut s)), ErrorCode::Unsupported);
    assert_closed(&mut s);

    // Anything before Hello.
    let mut s = t.connect();
    assert_eq!(
        error_code(&send(&mut s, &Request::Ping)),
        ErrorCode::Unsupported
    );
    assert_closed(&mut s);

    // Another protocol version.
    let mut s = t.connect();
    let r = send(
        &mut s,
        &Request::Hello {
            version: PROTOCOL_VERSION + 1,
            client: "future".into(),
        },
    );
    assert_eq!(error_code(&r), ErrorCode::Version);
    assert_closed(&mut s);

    // A frame cut short by the client's exit: the tracing it started on
    // the same connection is torn down.
    let mut s = t.connect();
    send(&mut s, &hello());
    let r = send(
        &mut s,
        &Request::StartTrace {
            tracer: TracerKind::Graph,
            filter: vec!["*::work::*".into()],
            notrace: vec![],
            buffer_records: Some(1024),
            mode: None,
            memory_budget: None,
            controls: Default::default(),
            no_relocate: false,
        },
    );
    assert!(matches!(r, Response::Started { .. }), "{r:?}");
    assert_eq!(t.enabled().len(), 2);
    s.write_all(&100u32.to_le_bytes()).unwrap();
    s.write_all(b"{\"op\":").unwrap();
    drop(s);
    t.wait_all_nop();

    // Well-formed but invalid values are an error reply, and the
    // connection stays usable.
    let mut s = t.connect();
    send(&mut s, &hello());
    let r = send(
        &mut s,
        &Request::StartTrace {
            tracer: TracerKind::Function,
            filter: vec!["*".into()],
            notrace: vec![],
            buffer_records: Some(1000),
            mode: None,
            memory_budget: None,
            controls: Default::default(),
            no_relocate: false,
        },
    );
    assert_eq!(error_code(&r), ErrorCode::Invalid);
    assert_eq!(
        error_code(&send(&mut s, &Request::PollEvents { session: 12345 })),
        ErrorCode::NotFound
    );
    assert_eq!(
        error_code(&send(&mut s, &Request::Revert { patch: 999 })),
        ErrorCode::NotFound
    );
    assert!(matches!(send(&mut s, &Request::Ping), Response::Pong));

    // The process never noticed.
    let n = t.line_count();
    t.wait_line(n, |l| l == "compute(21) = 42");
}

/// A small deterministic generator, so a failure can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn fuzz_smoke_against_a_live_server() {
    let t = Target::start();
    let valid: Vec<Vec<u8>> = [
        hello(),
        Request::ListFunctions {
            glob: Some("*::work::*".into()),
            enabled_only: false,
        },
        Request::StartTrace {
            tracer: TracerKind::Function,
            filter: vec!["*::compute".into()],
            notrace: vec![],
            buffer_records: None,
            mode: None,
            memory_budget: None,
            controls: Default::default(),
            no_relocate: false,
        },
        Request::PollEvents { session: 1 },
        Request::Patch {
            original: format!("{CRATE}::compute"),
            replacement: format!("{CRATE}::compute_v2"),
            persist: false,
        },
    ]
    .iter()
    .map(encode)
    .collect();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let cases = 300u32;
    for case in 0..cases {
        let mut s = t.connect();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        // Half the cases start with a proper hello so the garbage reaches
        // the request handler rather than the hello check.
        if case.is_multiple_of(2) {
            send(&mut s, &hello());
        }
        let mut payload = valid[(rng.next() % valid.len() as u64) as usize].clone();
        for _ in 0..=(rng.next() % 4) {
            let i = (rng.next() as usize) % payload.len().max(1);
            match rng.next() % 3 {
                0 if !payload.is_empty() => payload[i] ^= (rng.next() % 255 + 1) as u8,
                1 => payload.truncate(i),
                _ => payload.insert(i.min(payload.len()), rng.next() as u8),
            }
        }
        let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
        if rng.next().is_multiple_of(8) {
            // Lie about the length: short frames look truncated, long ones
            // wait for bytes that never come until the client closes.
            frame = ((rng.next() % 64) as u32).to_le_bytes().to_vec();
        }
        frame.extend_from_slice(&payload);
        if s.write_all(&frame).is_err() {
            continue;
        }
        let _ = s.shutdown(std::net::Shutdown::Write);
        // Every complete frame gets a reply: a response that decodes.
        match read_frame(&mut s, MAX_FRAME) {
            Ok(p) => {
                decode_response(&p).expect("the server always sends valid responses");
            }
            Err(e) => panic!("case {case}: no reply to {frame:?}: {e}"),
        }
    }
    // Still serving, still running, and nothing left attached.
    t.wait_all_nop();
    let n = t.line_count();
    t.wait_line(n, |l| l == "compute(21) = 42");
}

#[test]
fn a_silent_client_loses_its_lease() {
    let t = Target::start_with(&[], &[("LIVETRACE", "1"), ("LIVETRACE_LEASE_MS", "1000")]);
    let mut s = t.connect();
    let r = send(&mut s, &hello());
    let Response::Hello { lease_ms, pid, .. } = r else {
        panic!("{r:?}")
    };
    assert_eq!((lease_ms, pid), (1000, t.pid));
    let r = send(
        &mut s,
        &Request::StartTrace {
            tracer: TracerKind::Graph,
            filter: vec!["*::work::*".into()],
            notrace: vec![],
            buffer_records: None,
            mode: None,
            memory_budget: None,
            controls: Default::default(),
            no_relocate: false,
        },
    );
    assert!(matches!(r, Response::Started { .. }), "{r:?}");
    assert_eq!(t.enabled().len(), 2);
    // Connected but silent: torn down once the lease runs out.
    t.wait_all_nop();
    assert_closed(&mut s);
    // A client that keeps talking keeps its session (the command pings).
    let child = t.spawn_cli(&["trace", &t.pid_s(), "-f", "*::work::step", "-t", "profile"]);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        t.enabled().len(),
        1,
        "the command's session survived the lease"
    );
    signal(&child, libc::SIGINT);
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("work::step"));
    t.wait_all_nop();
}
