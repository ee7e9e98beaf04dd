//! Recorded `.lttrace` files convert to every format with the same
//! content as the in-memory trace they were recorded from, losses where
//! the file shows them, and clear errors for what cannot be written.

mod common;

use std::collections::BTreeMap;
use std::io::Cursor;

use livetrace_format as lf;
use livetrace_output::convert::{self, Dest, FileOrder, Format, Recording};
use livetrace_output::folded::{self, Folded, Weight};
use livetrace_output::profile::{self, Profile};
use livetrace_output::{chrome, text, Event, LossReason, Trace};

fn record(e: &Event) -> lf::Record {
    let (kind, ts, a, b) = match *e {
        Event::Call { ts, func, caller } => (lf::Kind::Call, ts, func, caller),
        Event::Entry { ts, func, depth } => (lf::Kind::Entry, ts, func, u64::from(depth)),
        Event::Exit { ts, func, depth } => (lf::Kind::Exit, ts, func, u64::from(depth)),
    };
    lf::Record {
        ts,
        a,
        b,
        c: kind.code(),
    }
}

fn info(trace: &Trace, tracer: lf::Tracer) -> lf::Info {
    lf::Info {
        pid: trace.pid,
        tracer: Some(tracer),
        mode: Some(lf::Mode::Stream),
        program: trace.program.clone(),
        cmdline: trace.cmdline.clone(),
    }
}

/// `trace` as a recording: threads' records in blocks of `chunk`,
/// interleaved as a recorder writes them; no CLOCK block (ticks are ns).
/// `gaps`: (tid, before record index, records lost) as jumps in the
/// thread's record indices, counted as BufferFull in LOSS blocks.
fn recording(trace: &Trace, chunk: usize, gaps: &[(u32, usize, u64)]) -> Vec<u8> {
    let mut w = lf::Writer::new(Vec::new(), &info(trace, lf::Tracer::Graph)).unwrap();
    let symbols: Vec<lf::Symbol> = trace
        .symbols
        .iter()
        .map(|s| lf::Symbol {
            addr: s.addr,
            size: s.size,
            name: s.name.clone(),
        })
        .collect();
    w.symbols(&symbols).unwrap();
    let locations: Vec<lf::Location> = trace
        .symbols
        .locations()
        .map(|(addr, l)| lf::Location {
            addr,
            line: l.line,
            file: l.file.clone(),
        })
        .collect();
    w.locations(&locations).unwrap();
    let maps: Vec<lf::Mapping> = trace
        .maps
        .iter()
        .map(|m| lf::Mapping {
            start: m.start,
            end: m.end,
            offset: m.offset,
            path: m.path.clone(),
        })
        .collect();
    w.maps(&maps).unwrap();
    for t in &trace.threads {
        w.thread(t.tid, &t.name, false).unwrap();
    }
    // (position in the thread's events, index in its stream)
    let mut at: Vec<(usize, u64)> = vec![(0, 0); trace.threads.len()];
    loop {
        let mut any = false;
        for (i, t) in trace.threads.iter().enumerate() {
            let (pos, index) = &mut at[i];
            if *pos >= t.events.len() {
                continue;
            }
            any = true;
            let mut end = (*pos + chunk).min(t.events.len());
            // A gap starts a new block.
            if let Some(&(_, _, n)) = gaps
                .iter()
                .find(|&&(tid, before, _)| tid == t.tid && before == *pos)
            {
                *index += n;
                w.loss(t.tid, lf::LossReason::BufferFull, n).unwrap();
            }
            if let Some(&(_, before, _)) = gaps
                .iter()
                .find(|&&(tid, before, _)| tid == t.tid && before > *pos && before < end)
            {
                end = before;
            }
            let records: Vec<lf::Record> = t.events[*pos..end].iter().map(record).collect();
            w.records(t.tid, *index, &records).unwrap();
            *index += records.len() as u64;
            *pos = end;
        }
        if !any {
            break;
        }
    }
    w.end(&lf::End {
        reason: lf::EndReason::Stopped,
        status: 0,
        message: String::new(),
    })
    .unwrap();
    w.into_inner().unwrap()
}

fn open(bytes: Vec<u8>) -> Recording<Cursor<Vec<u8>>> {
    Recording::new(lf::Reader::new(Cursor::new(bytes)).unwrap()).unwrap()
}

/// The graph trace without its in-memory loss counts (a recording carries
/// its own).
fn graph() -> Trace {
    let mut t = common::graph_trace();
    for th in &mut t.threads {
        th.lost = 0;
        th.depth_overflows = 0;
    }
    t
}

#[test]
fn aggregates_match_the_in_memory_trace() {
    let trace = graph();
    for chunk in [1, 3, 100] {
        for order in [FileOrder::Blocks, FileOrder::ByThread, FileOrder::ByTime] {
            let mut rec = open(recording(&trace, chunk, &[]));
            assert_eq!(rec.process().start_ns, common::T0);
            let mut p = Profile::new();
            let summary = rec.feed(order, &mut p).unwrap();
            assert_eq!(summary.events(), 30);
            assert_eq!(p.rows(rec.symbols()), profile::compute(&trace));

            let mut rec = open(recording(&trace, chunk, &[]));
            let mut f = Folded::new(None);
            rec.feed(order, &mut f).unwrap();
            assert_eq!(f.weight(), Weight::SelfTime);
            assert_eq!(
                f.stacks(rec.symbols()),
                folded::stacks(&trace, Weight::SelfTime)
            );
        }
    }
}

#[test]
fn json_and_text_say_what_the_trace_says() {
    let trace = graph();
    let mut rec = open(recording(&trace, 4, &[]));
    let mut out = Vec::new();
    rec.feed(FileOrder::Blocks, &mut chrome::ChromeJson::new(&mut out))
        .unwrap();
    let got: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let want = chrome::to_value(&trace);
    let spans = |v: &serde_json::Value| {
        let mut s: Vec<String> = v["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["ph"] == "X")
            .map(|e| e.to_string())
            .collect();
        s.sort();
        s
    };
    assert_eq!(spans(&got), spans(&want));

    // The graph layout, each thread whole, as from memory.
    let mut rec = open(recording(&trace, 4, &[]));
    let mut out = Vec::new();
    rec.feed(FileOrder::ByThread, &mut text::GraphText::new(&mut out))
        .unwrap();
    let mut want = Vec::new();
    text::write_function_graph(&trace, &mut want).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        String::from_utf8(want).unwrap()
    );
}

#[test]
fn losses_are_shown_where_the_records_jump() {
    let trace = graph();
    // 5 records lost in the main thread before its 8th (fib's entry), and
    // 2 calls too deep in the worker.
    let mut bytes = recording(&trace, 100, &[(common::PID, 7, 5)]);
    {
        let mut w = lf::Writer::new(Vec::new(), &info(&trace, lf::Tracer::Graph)).unwrap();
        let overflow = lf::Record {
            ts: common::T0 + 4_000,
            a: common::LEAF,
            b: 0,
            c: lf::Kind::Overflow.code(),
        };
        let tail = lf::Record {
            ts: common::T0 + 5_000,
            a: common::LEAF,
            b: 0,
            c: lf::Kind::Entry.code(),
        };
        w.records(common::WORKER, 11, &[overflow, overflow, tail])
            .unwrap();
        // Just its RECORDS block, appended to the file (no header).
        let extra = w.into_inner().unwrap();
        let header = lf::HEADER_BYTES as usize;
        let info_len = u64::from_le_bytes(extra[header + 8..header + 16].try_into().unwrap());
        let info_block = 16 + info_len.next_multiple_of(16) as usize;
        bytes.extend_from_slice(&extra[header + info_block..]);
    }
    let mut rec = open(bytes);
    let mut out = Vec::new();
    let summary = rec
        .feed(FileOrder::ByThread, &mut text::GraphText::new(&mut out))
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let lost = lines
        .iter()
        .position(|l| *l == "TID:4242 [LOST 5 EVENTS]")
        .expect(&text);
    assert!(lines[lost - 1].contains("} /* parse */"), "{text}");
    assert!(lines[lost + 1].contains("fib() {"), "{text}");
    let deep = lines
        .iter()
        .position(|l| *l == "# TID:4243 2 calls deeper than the depth limit not recorded")
        .expect(&text);
    assert!(lines[deep - 1].contains("} /* worker */"), "{text}");
    assert!(lines[deep + 1].contains("leaf() {"), "{text}");
    let main = &summary.threads[0];
    assert_eq!(main.losses.get(LossReason::BufferFull), 5);
    assert_eq!(summary.threads[1].losses.get(LossReason::DepthLimit), 2);
    assert!(
        text.contains(
            "# TID:4242 demo: 19 events, 5 events lost (buffer full, the consumer was late)"
        ),
        "{text}"
    );
}

#[test]
fn a_file_cut_short_converts_what_is_complete() {
    let trace = graph();
    let bytes = recording(&trace, 4, &[]);
    // Cut inside the last records block (before the END block).
    let cut = bytes.len() - 40;
    let mut rec = open(bytes[..cut].to_vec());
    assert!(rec.reader().truncated().is_some());
    let mut p = Profile::new();
    let summary = rec.feed(FileOrder::Blocks, &mut p).unwrap();
    assert!(summary.events() > 0 && summary.events() < 30);
}

#[test]
fn formats_that_do_not_fit_are_refused() {
    let trace = graph();
    let mut rec = open(recording(&trace, 4, &[]));
    let err = convert::convert(&mut rec, Format::Uftrace, &Dest::Stdout).unwrap_err();
    assert!(err.to_string().contains("directory"), "{err}");

    // A profile-tracer recording: its table, in text or JSON only.
    let mut w = lf::Writer::new(Vec::new(), &info(&trace, lf::Tracer::Profile)).unwrap();
    w.profile(&[lf::ProfileRow {
        name: "shop::checkout::__livetrace_body".into(),
        calls: 3,
        total_ns: 3000,
        self_ns: 2000,
        min_ns: 900,
        max_ns: 1100,
    }])
    .unwrap();
    let mut rec = open(w.into_inner().unwrap());
    let err = convert::convert(&mut rec, Format::Folded, &Dest::Stdout).unwrap_err();
    assert!(err.to_string().contains("profile tracer"), "{err}");
    let mut out = Vec::new();
    convert::report(&mut rec, &mut out).unwrap();
    let table = String::from_utf8(out).unwrap();
    assert!(
        table.contains(
            "    3.000 us    2.000 us           3      900 ns    1.100 us  shop::checkout"
        ),
        "{table}"
    );
}

#[test]
fn every_format_writes_a_file() {
    let trace = graph();
    let dir = std::env::temp_dir().join(format!("livetrace-convert-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut sizes: BTreeMap<&str, u64> = BTreeMap::new();
    for (name, format) in [
        ("t.txt", Format::Text),
        ("t.json", Format::Json),
        ("t.perfetto-trace", Format::Perfetto),
        ("t.folded", Format::Folded),
        ("t.svg", Format::Svg),
        ("t.profile", Format::Profile),
        ("t.uftrace.data", Format::Uftrace),
    ] {
        let mut rec = open(recording(&trace, 4, &[]));
        let path = dir.join(name);
        let done = convert::convert(&mut rec, format, &Dest::Path(path.clone())).unwrap();
        assert_eq!(done.summary.events(), 30, "{name}");
        let size = if format == Format::Uftrace {
            assert!(path.join("info").exists() && path.join("4242.dat").exists());
            std::fs::metadata(path.join("4242.dat")).unwrap().len()
        } else {
            std::fs::metadata(&path).unwrap().len()
        };
        sizes.insert(name, size);
    }
    assert!(sizes.values().all(|&s| s > 0), "{sizes:?}");
    let folded = std::fs::read_to_string(dir.join("t.folded")).unwrap();
    assert!(folded.contains("main;foo_init 200000\n"), "{folded}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The recording's source locations reach the symbols every writer is
/// given.
#[test]
fn source_locations_come_with_the_symbols() {
    let mut trace = graph();
    trace
        .symbols
        .set_location(common::PARSE, "/src/demo/parse.c", 42);
    let rec = open(recording(&trace, 4, &[]));
    let loc = rec.symbols().location(common::PARSE).expect("a location");
    assert_eq!((loc.file.as_str(), loc.line), ("/src/demo/parse.c", 42));
    assert!(rec.symbols().location(common::LEX).is_none());
    assert_eq!(rec.symbols(), &trace.symbols);
}
