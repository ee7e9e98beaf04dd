//! The server inside this test process: its socket directory rules, a
//! client's sessions torn down with its connection, and a clean shutdown.
//! One test: the server is process-wide.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use livetrace_proto::{Client, ClientError, ErrorCode, Request, Response, TracerKind};

#[livetrace::traced]
fn tick(x: u64) -> u64 {
    x + 1
}

#[livetrace::traced]
fn tock(x: u64) -> u64 {
    x + 2
}

fn enabled() -> usize {
    livetrace::enabled_functions().unwrap().len()
}

fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < end, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn server_lifecycle() {
    let base = std::path::PathBuf::from(format!("/tmp/lt-server-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();

    // A symlink or a loose directory is not trusted blindly.
    let real = base.join("real");
    std::fs::create_dir(&real).unwrap();
    let link = base.join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let e = livetrace_server::serve_in(&link).unwrap_err();
    assert!(e.to_string().contains("not a directory"), "{e}");
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o755)).unwrap();

    let path = livetrace_server::serve_in(&real).unwrap();
    assert_eq!(path, real.join(format!("{}.sock", std::process::id())));
    assert_eq!(livetrace_server::socket_path(), Some(path.clone()));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&real), 0o700, "a loose directory is tightened");
    assert_eq!(mode(&path), 0o600);
    // Idempotent.
    assert_eq!(livetrace_server::serve().unwrap(), path);

    // A session lives as long as its connection.
    let mut c = Client::connect_path(&path).unwrap();
    assert_eq!(c.server().pid, std::process::id());
    let Response::Started { session } = c
        .call(&Request::StartTrace {
            tracer: TracerKind::Graph,
            filter: vec!["*::tick".into()],
            notrace: vec![],
            buffer_records: Some(4096),
            mode: None,
            memory_budget: None,
            controls: Default::default(),
            no_relocate: false,
        })
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(enabled(), 1);
    for i in 0..10 {
        assert_eq!(tick(i), i + 1);
    }
    let Response::Events { trace, more, .. } = c.call(&Request::PollEvents { session }).unwrap()
    else {
        panic!()
    };
    assert!(!more);
    assert_eq!(
        trace.event_count(),
        20,
        "10 entries and 10 exits, drained once"
    );
    let Response::Events { trace, .. } = c.call(&Request::PollEvents { session }).unwrap() else {
        panic!()
    };
    assert_eq!(trace.event_count(), 0, "a drain consumes");
    // Non-persistent patches go with the connection too.
    let r = c
        .call(&Request::Patch {
            original: "server::tick".into(),
            replacement: "server::tock".into(),
            persist: false,
        })
        .unwrap();
    assert!(matches!(r, Response::Patched { .. }), "{r:?}");
    assert_eq!(tick(1), 3, "patched");
    drop(c);
    wait("teardown", || enabled() == 0);
    assert_eq!(tick(1), 2, "reverted with the connection");

    // Sessions belong to their connection.
    let mut a = Client::connect_path(&path).unwrap();
    let mut b = Client::connect_path(&path).unwrap();
    let Response::Started { session } = a
        .call(&Request::StartTrace {
            tracer: TracerKind::Function,
            filter: vec!["*::tock".into()],
            notrace: vec![],
            buffer_records: None,
            mode: None,
            memory_budget: None,
            controls: Default::default(),
            no_relocate: false,
        })
        .unwrap()
    else {
        panic!()
    };
    match b.call(&Request::StopTrace { session }) {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::NotFound),
        other => panic!("{other:?}"),
    }
    // A persistent patch survives its connection.
    b.call(&Request::Patch {
        original: "server::tock".into(),
        replacement: "server::tick".into(),
        persist: true,
    })
    .unwrap();
    drop(b);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(tock(1), 2, "still patched");

    // Shutdown: connections torn down, socket removed; persistent patches
    // stay until reverted.
    livetrace_server::shutdown(Duration::from_secs(5));
    assert!(!path.exists());
    assert_eq!(livetrace_server::socket_path(), None);
    let Err(_) = a.call(&Request::Ping) else {
        panic!("connection survived shutdown")
    };
    assert_eq!(enabled(), 1, "only the persistent patch is left");
    let path = livetrace_server::serve_in(&real).unwrap();
    let mut c = Client::connect_path(&path).unwrap();
    let Response::Patches { patches } = c.call(&Request::ListPatches).unwrap() else {
        panic!()
    };
    assert_eq!(patches.len(), 1);
    assert!(patches[0].persistent);
    c.call(&Request::Revert {
        patch: patches[0].id,
    })
    .unwrap();
    assert_eq!(tock(1), 3);
    assert_eq!(enabled(), 0);
    livetrace_server::shutdown(Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&base);
}
