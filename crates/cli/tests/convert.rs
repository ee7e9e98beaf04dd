//! `livetrace convert` and the offline `livetrace report FILE` on a
//! recording: every format, the closing kept/lost lines, and clear errors.

mod common;

use std::path::Path;

use common::*;
use livetrace_format as lf;

const MAIN: u64 = 0x1000;
const WORK: u64 = 0x2000;

/// Two threads of a graph recording: main > work (x2), with 3 records of
/// the worker lost (buffer full) before its second call.
fn write_recording(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut w = lf::Writer::new(
        std::fs::File::create(path).unwrap(),
        &lf::Info {
            pid: 77,
            tracer: Some(lf::Tracer::Graph),
            mode: Some(lf::Mode::Stream),
            program: "/bin/prog".into(),
            cmdline: vec!["prog".into()],
        },
    )
    .unwrap();
    w.symbols(&[
        lf::Symbol {
            addr: MAIN,
            size: 0x100,
            name: "main".into(),
        },
        lf::Symbol {
            addr: WORK,
            size: 0x100,
            name: "work".into(),
        },
    ])
    .unwrap();
    w.thread(77, "prog", false).unwrap();
    w.thread(78, "worker", false).unwrap();
    let r = |ts: u64, a: u64, depth: u64, kind: lf::Kind| lf::Record {
        ts: 1_000_000 + ts,
        a,
        b: depth,
        c: kind.code(),
    };
    use lf::Kind::{Entry, Exit};
    w.records(
        77,
        0,
        &[
            r(0, MAIN, 0, Entry),
            r(10, WORK, 1, Entry),
            r(30, WORK, 1, Exit),
        ],
    )
    .unwrap();
    w.records(78, 0, &[r(5, WORK, 0, Entry), r(50, WORK, 0, Exit)])
        .unwrap();
    w.loss(78, lf::LossReason::BufferFull, 3).unwrap();
    w.records(
        77,
        3,
        &[
            r(40, WORK, 1, Entry),
            r(45, WORK, 1, Exit),
            r(90, MAIN, 0, Exit),
        ],
    )
    .unwrap();
    w.records(78, 5, &[r(60, WORK, 0, Entry), r(70, WORK, 0, Exit)])
        .unwrap();
    w.end(&lf::End {
        reason: lf::EndReason::Exited,
        status: 0,
        message: String::new(),
    })
    .unwrap();
}

#[test]
fn converts_to_every_format_and_reports() {
    let dir = TempDir::new("convert");
    let input = dir.path().join("rec.lttrace");
    write_recording(&input);
    let input = input.to_str().unwrap();

    for out in [
        "x.txt",
        "x.json",
        "x.perfetto-trace",
        "x.folded",
        "x.svg",
        "x.profile",
        "x.uftrace.data",
    ] {
        let path = dir.path().join(out);
        let o = cli(
            dir.path(),
            &["convert", input, "-o", path.to_str().unwrap()],
        );
        let err = stderr(&o);
        assert!(o.status.success(), "{out}: {err}");
        let last = err.lines().last().unwrap_or_default();
        assert_eq!(
            last,
            format!(
                "livetrace: 10 events written to {} from 2 threads, 3 lost",
                path.display()
            ),
            "{err}"
        );
        assert!(
            err.contains(
                "livetrace: tid 78 (worker): 4 events kept, 3 events lost (buffer full, the \
                 consumer was late)"
            ),
            "{err}"
        );
        assert!(path.exists(), "{out}");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("x.json")).unwrap()).unwrap();
    let spans = json["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "X")
        .count();
    assert_eq!(spans, 5);
    let folded = std::fs::read_to_string(dir.path().join("x.folded")).unwrap();
    assert_eq!(folded, "main 65\nmain;work 25\nwork 55\n");

    // Text to the terminal by default; the graph layout for a graph trace.
    let o = cli(dir.path(), &["convert", input]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("# tracer: function_graph"), "{text}");
    assert!(text.contains("TID:78 [LOST 3 EVENTS]"), "{text}");

    // The offline report.
    let o = cli(dir.path(), &["report", input]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("       90 ns       65 ns           1       90 ns       90 ns  main"),
        "{table}"
    );
    assert!(
        table.contains("           4 "),
        "work ran 4 times:\n{table}"
    );
}

#[test]
fn bad_conversions_say_why() {
    let dir = TempDir::new("convert-bad");
    let input = dir.path().join("rec.lttrace");
    write_recording(&input);
    let input = input.to_str().unwrap();
    // A directory format to the terminal: usage.
    let o = cli(dir.path(), &["convert", input, "--format", "uftrace"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("directory"), "{}", stderr(&o));
    // A name that implies no format: usage.
    let o = cli(dir.path(), &["convert", input, "-o", "x.bin"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // Not a recording: a failure, nothing written.
    let not = dir.path().join("not.lttrace");
    std::fs::write(&not, "hello").unwrap();
    let out = dir.path().join("y.json");
    let o = cli(
        dir.path(),
        &[
            "convert",
            not.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("not a livetrace trace file"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
    let o = cli(dir.path(), &["report", "/nonexistent/rec.lttrace"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}
