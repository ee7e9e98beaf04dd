//! The trace file: what is written reads back, a file cut anywhere reads
//! back as what was complete, and no input makes the reader panic.

use std::io::Cursor;

use livetrace_format::{
    ClockCal, End, EndReason, Error, Info, Kind, Location, LossReason, Mapping, Mode, ProfileRow,
    Reader, Record, Symbol, Tracer, Writer, MAX_BLOCK_RECORDS,
};
use proptest::prelude::*;

fn rec(ts: u64, func: u64, x: u64, kind: Kind) -> Record {
    Record {
        ts,
        a: func,
        b: x,
        c: kind.code(),
    }
}

fn info() -> Info {
    Info {
        pid: 4242,
        tracer: Some(Tracer::Graph),
        mode: Some(Mode::Stream),
        program: "/usr/bin/prog".into(),
        cmdline: vec!["prog".into(), "--fast".into()],
    }
}

/// A small file with every block kind; returns it and the records written
/// per thread.
fn sample() -> (Vec<u8>, Vec<Record>, Vec<Record>) {
    let mut w = Writer::new(Vec::new(), &info()).unwrap();
    w.clock(&ClockCal {
        tsc: true,
        hz: 2_000_000_000,
        base_ticks: 1000,
        base_ns: 5_000,
        mult: 1 << 31,
    })
    .unwrap();
    w.symbols(&[
        Symbol {
            addr: 0x1000,
            size: 0x100,
            name: "main".into(),
        },
        Symbol {
            addr: 0x2000,
            size: 0,
            name: "leaf".into(),
        },
    ])
    .unwrap();
    w.maps(&[Mapping {
        start: 0x1000,
        end: 0x3000,
        offset: 0,
        path: "/usr/bin/prog".into(),
    }])
    .unwrap();
    w.thread(7, "main", false).unwrap();
    w.thread(8, "worker", false).unwrap();
    let t7: Vec<Record> = (0..10)
        .map(|i| {
            rec(
                100 + 2 * i,
                0x1000,
                i % 3,
                if i % 2 == 0 { Kind::Entry } else { Kind::Exit },
            )
        })
        .collect();
    let t8: Vec<Record> = (0..6)
        .map(|i| rec(101 + 3 * i, 0x2000, 0x1010, Kind::Call))
        .collect();
    w.records(7, 0, &t7[..4]).unwrap();
    w.records(8, 0, &t8).unwrap();
    w.loss(7, LossReason::BufferFull, 5).unwrap();
    w.records(7, 9, &t7[4..]).unwrap();
    w.loss(0, LossReason::NoBuffer, 3).unwrap();
    w.thread(8, "worker-2", true).unwrap();
    w.symbols(&[
        // A size-less duplicate never hides the sized symbol.
        Symbol {
            addr: 0x1000,
            size: 0,
            name: "main?".into(),
        },
        Symbol {
            addr: 0x2000,
            size: 0x10,
            name: "leaf".into(),
        },
    ])
    .unwrap();
    let loc = |addr, line, file: &str| Location {
        addr,
        line,
        file: file.into(),
    };
    w.locations(&[loc(0x2000, 9, "/src/old.c"), loc(0x1000, 3, "/src/main.c")])
        .unwrap();
    // A later location of the same function replaces the earlier one.
    w.locations(&[loc(0x2000, 12, "/src/leaf.c")]).unwrap();
    w.profile(&[ProfileRow {
        name: "leaf".into(),
        calls: 3,
        total_ns: 30,
        self_ns: 20,
        min_ns: 5,
        max_ns: 15,
    }])
    .unwrap();
    w.end(&End {
        reason: EndReason::Exited,
        status: 0,
        message: "done".into(),
    })
    .unwrap();
    (w.into_inner().unwrap(), t7, t8)
}

#[test]
fn everything_written_reads_back() {
    let (bytes, t7, t8) = sample();
    assert_eq!(bytes.len() % 16, 0);
    let mut r = Reader::new(Cursor::new(bytes)).unwrap();
    assert_eq!(r.info(), &info());
    assert_eq!(r.clock().to_ns(1000), 5_000);
    assert_eq!(r.clock().to_ns(1002), 5_001);
    assert_eq!(r.truncated(), None);
    assert_eq!(r.end().unwrap().reason, EndReason::Exited);
    assert_eq!(r.record_count(), 16);
    assert_eq!(r.lost_count(), 8);
    assert_eq!(r.unattributed().get(LossReason::NoBuffer), 3);
    let th: Vec<(u32, &str, u64, u64, bool)> = r
        .threads()
        .iter()
        .map(|t| (t.tid, t.name.as_str(), t.records, t.lost.total(), t.exited))
        .collect();
    assert_eq!(th, [(7, "main", 10, 5, false), (8, "worker-2", 6, 0, true)]);
    assert_eq!(r.symbol(0x10ff).unwrap().name, "main");
    assert_eq!(r.symbol(0x200f).unwrap().name, "leaf");
    assert!(r.symbol(0x2010).is_none());
    assert_eq!(r.symbols().len(), 2);
    assert_eq!(r.maps().len(), 1);
    assert_eq!(r.profile()[0].calls, 3);
    let locs: Vec<(u64, u32, &str)> = r
        .locations()
        .iter()
        .map(|l| (l.addr, l.line, l.file.as_str()))
        .collect();
    assert_eq!(
        locs,
        [(0x1000, 3, "/src/main.c"), (0x2000, 12, "/src/leaf.c")]
    );

    // One thread's records, in order, with the gap visible.
    let mut got = Vec::new();
    let mut firsts = Vec::new();
    let mut it = r.thread_records(7);
    while let Some((first, chunk)) = it.next_chunk().unwrap() {
        firsts.push(first);
        got.extend_from_slice(chunk);
    }
    assert_eq!(got, t7);
    assert_eq!(firsts, [0, 9]);

    // All records in time order.
    let mut merged = Vec::new();
    let mut m = r.merged();
    while let Some((tid, rec)) = m.next().unwrap() {
        merged.push((tid, rec));
    }
    assert_eq!(merged.len(), 16);
    assert!(merged.windows(2).all(|p| p[0].1.ts <= p[1].1.ts));
    let of8: Vec<Record> = merged
        .iter()
        .filter(|(t, _)| *t == 8)
        .map(|(_, r)| *r)
        .collect();
    assert_eq!(of8, t8);

    // File order, block by block.
    let mut blocks = Vec::new();
    r.for_each_block(|b, recs| {
        blocks.push((b.tid, b.first, recs.len()));
        Ok(())
    })
    .unwrap();
    assert_eq!(blocks, [(7, 0, 4), (8, 0, 6), (7, 9, 6)]);
}

#[test]
fn large_runs_split_into_bounded_blocks() {
    let n = MAX_BLOCK_RECORDS * 2 + 5;
    let recs: Vec<Record> = (0..n as u64).map(|i| rec(i, 1, 0, Kind::Call)).collect();
    let mut w = Writer::new(Vec::new(), &info()).unwrap();
    w.records(3, 0, &recs).unwrap();
    assert_eq!(w.record_count(), n as u64);
    let mut r = Reader::new(Cursor::new(w.into_inner().unwrap())).unwrap();
    let sizes: Vec<u32> = r.record_blocks().iter().map(|b| b.count).collect();
    assert_eq!(
        sizes,
        [MAX_BLOCK_RECORDS as u32, MAX_BLOCK_RECORDS as u32, 5]
    );
    let mut all = Vec::new();
    let mut it = r.thread_records(3);
    while let Some((_, c)) = it.next_chunk().unwrap() {
        assert!(c.len() <= 4096);
        all.extend_from_slice(c);
    }
    assert_eq!(all, recs);
}

#[test]
fn a_file_cut_anywhere_reads_what_was_complete() {
    let (bytes, _, _) = sample();
    let full = Reader::new(Cursor::new(bytes.clone()))
        .unwrap()
        .record_count();
    let mut last = 0;
    for cut in 0..bytes.len() {
        match Reader::new(Cursor::new(bytes[..cut].to_vec())) {
            Err(Error::NotATrace) => assert!(cut < 16, "cut {cut}"),
            Err(e) => panic!("cut {cut}: {e}"),
            Ok(mut r) => {
                assert!(r.end().is_none(), "cut {cut}: no END yet");
                let n = r.record_count();
                assert!(n >= last && n <= full, "cut {cut}");
                last = n;
                // Whatever is indexed is readable.
                r.for_each_block(|_, _| Ok(())).unwrap();
            }
        }
    }
    assert_eq!(last, full);
}

#[test]
fn wrong_magic_and_version_are_refused() {
    let (mut bytes, _, _) = sample();
    assert!(matches!(
        Reader::new(Cursor::new(b"hello world, not a trace".to_vec())),
        Err(Error::NotATrace)
    ));
    bytes[8] = 9;
    assert!(matches!(
        Reader::new(Cursor::new(bytes)),
        Err(Error::Version(9))
    ));
}

proptest! {
    #[test]
    fn garbage_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..600), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8)) {
        let (mut bytes, _, _) = sample();
        for (at, v) in flips {
            let i = 16 + at % (bytes.len() - 16);
            bytes[i] = v;
        }
        bytes.extend_from_slice(&tail);
        if let Ok(mut r) = Reader::new(Cursor::new(bytes)) {
            let _ = r.for_each_block(|_, _| Ok(()));
            let tids: Vec<u32> = r.threads().iter().map(|t| t.tid).collect();
            for t in tids {
                let mut it = r.thread_records(t);
                while let Ok(Some(_)) = it.next_chunk() {}
            }
            let mut m = r.merged();
            while let Ok(Some(_)) = m.next() {}
        }
    }
}
