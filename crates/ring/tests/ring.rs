//! The ring buffers, from the outside: ordering, concurrent readers and
//! writers, both modes' loss accounting, exited threads, separate sessions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use livetrace_ring::{gettid, Config, Mode, Record, Rings, ThreadBuffer};

fn rings(records_per_thread: usize, mode: Mode) -> Arc<Rings> {
    Rings::new(Config {
        records_per_thread,
        mode,
        ..Config::default()
    })
}

/// A record whose words check each other, so a torn copy shows.
fn rec(stream: u64, seq: u64) -> Record {
    let ts = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ stream;
    let a = stream;
    let b = seq;
    Record {
        ts,
        a,
        b,
        c: ts ^ a ^ b ^ 0x5555_aaaa_5555_aaaa,
    }
}

fn check(r: &Record) {
    assert_eq!(*r, rec(r.a, r.b), "torn or corrupt record {r:x?}");
}

fn seqs(records: &[Record]) -> Vec<u64> {
    records.iter().map(|r| r.b).collect()
}

fn mine(snap: &[ThreadBuffer]) -> &ThreadBuffer {
    let tid = gettid();
    let found: Vec<_> = snap.iter().filter(|t| t.tid == tid).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one buffer for this thread in {snap:?}"
    );
    found[0]
}

#[test]
fn single_thread_keeps_order() {
    let r = rings(1024, Mode::Overwrite);
    for i in 0..1000 {
        assert!(r.write(rec(1, i)));
    }
    let snap = r.snapshot();
    assert_eq!(snap.len(), 1);
    let me = mine(&snap);
    assert_eq!(seqs(&me.records), (0..1000).collect::<Vec<_>>());
    assert_eq!(me.lost, 0);
    assert!(!me.exited);
    me.records.iter().for_each(check);

    // A snapshot does not consume; a drain does, exactly once.
    let mut calls = 0;
    let n = r.drain(|tid, _, records, lost| {
        calls += 1;
        assert_eq!(tid, gettid());
        assert_eq!(seqs(records), (0..1000).collect::<Vec<_>>());
        assert_eq!(lost, 0);
    });
    assert_eq!((n, calls), (1000, 1));
    assert_eq!(r.drain(|_, _, _, _| panic!("nothing new")), 0);

    // Writing resumes where the drain left off, across the wrap.
    for i in 1000..2500 {
        r.with_writer(|w| assert!(w.push(rec(1, i))));
    }
    let mut got = Vec::new();
    let mut lost_total = 0;
    r.drain(|_, _, records, lost| {
        got.extend(seqs(records));
        lost_total += lost;
    });
    assert_eq!(lost_total, 476);
    assert_eq!(got, (1476..2500).collect::<Vec<_>>());
}

#[test]
fn overwrite_loses_the_oldest_and_counts_exactly() {
    let r = rings(8, Mode::Overwrite);
    for i in 0..20 {
        assert!(r.write(rec(2, i)), "overwrite mode never refuses");
    }
    let snap = r.snapshot();
    let me = mine(&snap);
    assert_eq!(seqs(&me.records), (12..20).collect::<Vec<_>>());
    assert_eq!(me.lost, 12);
    // Lost counts are cumulative in snapshots, per drain in drains.
    let mut seen = Vec::new();
    r.drain(|_, _, records, lost| seen.push((seqs(records), lost)));
    assert_eq!(seen, vec![((12..20).collect(), 12)]);
    for i in 20..30 {
        r.write(rec(2, i));
    }
    seen.clear();
    r.drain(|_, _, records, lost| seen.push((seqs(records), lost)));
    assert_eq!(seen, vec![((22..30).collect(), 2)]);
    assert_eq!(mine(&r.snapshot()).lost, 14);
    assert_eq!(r.unattributed_lost(), 0);
}

#[test]
fn drop_newest_keeps_the_oldest_and_counts_exactly() {
    let r = rings(8, Mode::DropNewest);
    let accepted: Vec<bool> = (0..20).map(|i| r.write(rec(3, i))).collect();
    assert_eq!(accepted, [vec![true; 8], vec![false; 12]].concat());
    let me = r.snapshot().into_iter().next().unwrap();
    assert_eq!(seqs(&me.records), (0..8).collect::<Vec<_>>());
    assert_eq!(me.lost, 12);

    let mut seen = Vec::new();
    r.drain(|_, _, records, lost| seen.push((seqs(records), lost)));
    assert_eq!(seen, vec![((0..8).collect(), 12)]);
    // Drained, there is room again.
    let accepted: Vec<bool> = (20..30).map(|i| r.write(rec(3, i))).collect();
    assert_eq!(accepted, [vec![true; 8], vec![false; 2]].concat());
    seen.clear();
    r.drain(|_, _, records, lost| seen.push((seqs(records), lost)));
    assert_eq!(seen, vec![((20..28).collect(), 2)]);
    assert_eq!(mine(&r.snapshot()).lost, 14);
}

/// Per-stream bookkeeping of what the reader received.
#[derive(Default, Debug)]
struct Stream {
    next: u64,
    received: u64,
    lost: u64,
    gaps: u64,
    pending_lost: u64,
}

/// Writers hammer small buffers while a reader drains (and snapshots)
/// concurrently: no torn record ever, sequences strictly increasing, and
/// every record received or counted lost. In Overwrite mode each gap is
/// exactly the loss reported with the records after it.
fn concurrent(mode: Mode) {
    const WRITERS: u64 = 4;
    const PER_WRITER: u64 = 100_000;
    let r = rings(256, mode);
    let start = Arc::new(Barrier::new(WRITERS as usize + 1));
    let handles: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (r, start) = (r.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                let mut accepted = 0u64;
                for seq in 0..PER_WRITER {
                    // Two ways in, so both are exercised under contention.
                    let ok = if seq.is_multiple_of(2) {
                        r.write(rec(w, seq))
                    } else {
                        r.with_writer(|wr| wr.push(rec(w, seq)))
                    };
                    accepted += u64::from(ok);
                    // Alternate flat-out phases (the reader is lapped,
                    // copies race with overwrites) with slow ones (the
                    // reader keeps up, the buffer wraps under it).
                    if (seq / 2048) % 2 == 1 {
                        for _ in 0..300 {
                            std::hint::spin_loop();
                        }
                    }
                    if seq.is_multiple_of(4096) {
                        thread::yield_now();
                    }
                }
                (gettid(), accepted)
            })
        })
        .collect();

    let mut streams: HashMap<i32, Stream> = HashMap::new();
    let mut buffers_of: HashMap<u64, i32> = HashMap::new();
    let mut drains = 0u64;
    let mut read_once = |streams: &mut HashMap<i32, Stream>| {
        drains += 1;
        if drains.is_multiple_of(16) {
            // Snapshots interleaved with drains: never torn either.
            for t in r.snapshot() {
                t.records.iter().for_each(check);
                assert!(
                    t.records.windows(2).all(|p| p[1].b > p[0].b),
                    "thread {}",
                    t.tid
                );
            }
        }
        r.drain(|tid, _, records, lost| {
            let s = streams.entry(tid).or_default();
            s.lost += lost;
            s.pending_lost += lost;
            for (i, r) in records.iter().enumerate() {
                check(r);
                assert!(r.b >= s.next, "thread {tid}: seq {} after {}", r.b, s.next);
                let gap = r.b - s.next;
                s.gaps += gap;
                if mode == Mode::Overwrite {
                    // Losses are the oldest records: all of them come right
                    // before the first record delivered after they were
                    // reported (a drain may report a loss with no record,
                    // when the writer lapped it while it copied).
                    let expected = if i == 0 { s.pending_lost } else { 0 };
                    assert_eq!(
                        gap, expected,
                        "thread {tid}: gap before seq {} is not the reported loss",
                        r.b
                    );
                    s.pending_lost = 0;
                }
                s.next = r.b + 1;
                assert_eq!(
                    *buffers_of.entry(r.a).or_insert(tid),
                    tid,
                    "writer {} seen under two tids",
                    r.a
                );
            }
            s.received += records.len() as u64;
        });
    };
    start.wait();
    let mut results = Vec::new();
    let mut pending = handles;
    while !pending.is_empty() {
        read_once(&mut streams);
        let (finished, running): (Vec<_>, Vec<_>) =
            pending.into_iter().partition(|h| h.is_finished());
        results.extend(finished.into_iter().map(|h| h.join().unwrap()));
        pending = running;
    }
    read_once(&mut streams);

    assert_eq!(results.len(), WRITERS as usize);
    for (tid, accepted) in results {
        let s = &streams[&tid];
        assert_eq!(s.received + s.lost, PER_WRITER, "thread {tid}: {s:?}");
        // Gaps, plus whatever was lost after the last record delivered,
        // are exactly the losses reported.
        assert_eq!(
            s.gaps + (PER_WRITER - s.next),
            s.lost,
            "thread {tid}: {s:?}"
        );
        if mode == Mode::DropNewest {
            assert_eq!(
                s.received, accepted,
                "thread {tid}: every accepted record arrives"
            );
        }
    }
    assert_eq!(
        streams.len(),
        WRITERS as usize,
        "each writer had its own buffer"
    );
    // Exited and drained empty: the buffers are freed.
    assert_eq!(r.thread_count(), 0);
    eprintln!("{mode:?}: {drains} drains, {streams:?}");
}

#[test]
fn concurrent_writers_and_reader_overwrite() {
    concurrent(Mode::Overwrite);
}

#[test]
fn concurrent_writers_and_reader_drop_newest() {
    concurrent(Mode::DropNewest);
}

#[test]
fn exited_thread_stays_readable_with_its_name() {
    let r = rings(16, Mode::Overwrite);
    let r2 = r.clone();
    let tid = thread::Builder::new()
        .name("lt-ring-exit".into())
        .spawn(move || {
            for i in 0..5 {
                r2.write(rec(9, i));
            }
            gettid()
        })
        .unwrap()
        .join()
        .unwrap();
    let snap = r.snapshot();
    assert_eq!(snap.len(), 1);
    let t = &snap[0];
    assert_eq!(
        (t.tid, t.name.as_str(), t.exited, t.lost),
        (tid, "lt-ring-exit", true, 0)
    );
    assert_eq!(seqs(&t.records), (0..5).collect::<Vec<_>>());
    // Still there after a snapshot; a drain hands them over and frees it.
    let mut seen = Vec::new();
    r.drain(|tid, name, records, _| seen.push((tid, name.to_string(), records.len())));
    assert_eq!(seen, vec![(tid, "lt-ring-exit".to_string(), 5)]);
    assert_eq!(r.thread_count(), 0);
    assert!(r.snapshot().is_empty());
}

#[test]
fn live_thread_is_renamed_and_not_freed_when_drained() {
    let r = rings(16, Mode::Overwrite);
    let (go, stop) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
    let (r2, go2, stop2) = (r.clone(), go.clone(), stop.clone());
    let h = thread::Builder::new()
        .name("lt-before".into())
        .spawn(move || {
            r2.write(rec(4, 0));
            let name = std::ffi::CString::new("lt-after").unwrap();
            // SAFETY: a NUL-terminated name of under 16 bytes for this thread.
            unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0) };
            go2.wait();
            stop2.wait();
            r2.write(rec(4, 1));
        })
        .unwrap();
    go.wait();
    let snap = r.snapshot();
    assert_eq!((snap[0].name.as_str(), snap[0].exited), ("lt-after", false));
    assert_eq!(r.drain(|_, _, _, _| {}), 1);
    assert_eq!(r.thread_count(), 1, "a live thread's buffer is never freed");
    stop.wait();
    h.join().unwrap();
    let mut seen = Vec::new();
    r.drain(|_, name, records, _| seen.push((name.to_string(), seqs(records))));
    assert_eq!(seen, vec![("lt-after".to_string(), vec![1])]);
}

#[test]
fn several_rings_do_not_mix() {
    // Five sessions used round-robin by one thread: more than the
    // thread's cache holds, so some writes find their buffer through the
    // thread's own list; plus a thread that writes to only one of them.
    let modes = [Mode::Overwrite, Mode::DropNewest];
    let all: Vec<Arc<Rings>> = (0..5).map(|k| rings(64, modes[k % 2])).collect();
    for i in 0..40 {
        for (k, r) in all.iter().enumerate() {
            assert!(r.write(rec(10 + k as u64, i)));
        }
    }
    let a2 = all[0].clone();
    let other = thread::spawn(move || {
        a2.write(rec(30, 0));
        gettid()
    })
    .join()
    .unwrap();
    for (k, r) in all.iter().enumerate() {
        let snap = r.snapshot();
        assert_eq!(
            snap.len(),
            if k == 0 { 2 } else { 1 },
            "session {k}: {snap:?}"
        );
        let me = mine(&snap);
        assert!(
            me.records.iter().all(|r| r.a == 10 + k as u64),
            "session {k} got another's records"
        );
        assert_eq!(seqs(&me.records), (0..40).collect::<Vec<_>>());
    }
    let o = all[0]
        .snapshot()
        .into_iter()
        .find(|t| t.tid == other)
        .unwrap();
    assert_eq!(o.records, vec![rec(30, 0)]);
}

#[test]
fn a_new_rings_never_reuses_a_dropped_ones_buffer() {
    // The thread's cache still names the dropped Rings' buffer; the new
    // one (possibly at the same address) must get a fresh buffer.
    for round in 0..50 {
        let r = rings(8, Mode::DropNewest);
        for i in 0..3 {
            r.write(rec(round, i));
        }
        let snap = r.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(seqs(&snap[0].records), vec![0, 1, 2], "round {round}");
        assert!(snap[0].records.iter().all(|r| r.a == round));
    }
}

#[test]
fn snapshot_accounting_adds_up() {
    let r = rings(32, Mode::Overwrite);
    let mut drained = 0u64;
    let mut lost_in_drains = 0u64;
    for i in 0..1000u64 {
        r.write(rec(5, i));
        if i.is_multiple_of(97) {
            r.drain(|_, _, records, lost| {
                drained += records.len() as u64;
                lost_in_drains += lost;
            });
        }
    }
    let me = r.snapshot().remove(0);
    assert_eq!(drained + me.lost + me.records.len() as u64, 1000);
    assert!(me.lost >= lost_in_drains);
}

#[test]
fn register_current_thread_creates_the_buffer_ahead() {
    let r = rings(8, Mode::Overwrite);
    assert_eq!(r.thread_count(), 0);
    assert!(r.register_current_thread());
    assert_eq!(r.thread_count(), 1);
    let snap = r.snapshot();
    assert_eq!((snap[0].tid, snap[0].records.len()), (gettid(), 0));
    r.write(rec(6, 0));
    assert_eq!(r.thread_count(), 1);
}

#[test]
#[should_panic(expected = "power of two")]
fn capacity_must_be_a_power_of_two() {
    rings(1000, Mode::Overwrite);
}

thread_local! {
    static LATE: LateWriter = const { LateWriter(std::cell::RefCell::new(None)) };
}
struct LateWriter(std::cell::RefCell<Option<Arc<Rings>>>);
impl Drop for LateWriter {
    fn drop(&mut self) {
        if let Some(r) = self.0.borrow_mut().take() {
            r.write(rec(7, 1));
        }
    }
}

#[test]
fn writes_from_thread_local_destructors_are_kept_or_counted() {
    // Whichever order the destructors run in, the late record either lands
    // in the thread's buffer or is counted; it never vanishes or crashes.
    let r = rings(8, Mode::Overwrite);
    let r2 = r.clone();
    thread::spawn(move || {
        LATE.with(|l| *l.0.borrow_mut() = Some(r2.clone()));
        r2.write(rec(7, 0));
    })
    .join()
    .unwrap();
    let snap = r.snapshot();
    let kept: usize = snap.iter().map(|t| t.records.len()).sum();
    assert_eq!(kept as u64 + r.unattributed_lost(), 2, "{snap:?}");
    assert!(snap.iter().all(|t| t.exited));
}

#[test]
fn a_thread_that_skips_its_exit_hooks_is_seen_exited() {
    // A raw exit syscall runs no thread-local destructor: the reader must
    // notice from the tid alone, and keep the records readable.
    extern "C" fn body(arg: *mut libc::c_void) -> *mut libc::c_void {
        // SAFETY: `arg` is the Rings the test keeps alive until this thread is gone.
        let r = unsafe { &*(arg as *const Rings) };
        r.write(rec(8, 0));
        r.write(rec(8, 1));
        // SAFETY: ends only this thread; it holds no locks, and the test
        // does not join it (glibc never learns it ended; a few KiB leak).
        unsafe { libc::syscall(libc::SYS_exit, 0) };
        unreachable!()
    }
    let r = rings(8, Mode::Overwrite);
    let mut th: libc::pthread_t = 0;
    // SAFETY: `body` has the signature pthread expects and `r` outlives the thread.
    let rc = unsafe {
        libc::pthread_create(
            &mut th,
            std::ptr::null(),
            body,
            Arc::as_ptr(&r) as *mut libc::c_void,
        )
    };
    assert_eq!(rc, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let snap = r.snapshot();
        if snap.len() == 1 && snap[0].exited {
            assert_eq!(seqs(&snap[0].records), vec![0, 1]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "thread never seen exited: {snap:?}"
        );
        thread::sleep(Duration::from_millis(1));
    }
    // Without the exit hook nothing proves the thread cannot come back to
    // its buffer, so draining it does not free it.
    assert_eq!(r.drain(|_, _, _, _| {}), 2);
    assert_eq!(r.thread_count(), 1);
}

#[test]
fn many_threads_each_get_one_buffer() {
    let r = rings(16, Mode::Overwrite);
    let writes = Arc::new(AtomicU64::new(0));
    let hs: Vec<_> = (0..16)
        .map(|t| {
            let (r, writes) = (r.clone(), writes.clone());
            thread::spawn(move || {
                for i in 0..10 {
                    r.write(rec(100 + t, i));
                    writes.fetch_add(1, Relaxed);
                }
                gettid()
            })
        })
        .collect();
    let tids: Vec<i32> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    let snap = r.snapshot();
    assert_eq!(snap.len(), 16);
    for t in &snap {
        assert!(tids.contains(&t.tid));
        assert_eq!(t.records.len(), 10);
        assert!(t.records.iter().all(|x| x.a == t.records[0].a));
        assert!(t.exited);
    }
    assert_eq!(writes.load(Relaxed), 160);
}

#[test]
fn a_full_budget_counts_the_records_of_threads_without_a_buffer() {
    // Room for two buffers: the third thread has none, until an exited
    // thread's buffer is drained and released.
    let r = Rings::new(Config {
        records_per_thread: 64,
        mode: Mode::DropNewest,
        memory_budget: 2 * 4096,
        ..Config::default()
    });
    assert_eq!(r.capacity_threads(), 2);
    let hold = Arc::new(Barrier::new(3));
    let spawn = |n: u64| {
        let (r, hold) = (r.clone(), hold.clone());
        thread::spawn(move || {
            for i in 0..n {
                r.write(rec(n, i));
            }
            hold.wait();
        })
    };
    let a = spawn(3);
    let b = spawn(4);
    while r.thread_count() < 2 {
        thread::yield_now();
    }
    let r2 = r.clone();
    thread::spawn(move || {
        for i in 0..5 {
            assert!(!r2.write(rec(5, i)), "no buffer is free");
        }
    })
    .join()
    .unwrap();
    assert_eq!(r.unattributed_lost(), 5);
    hold.wait();
    a.join().unwrap();
    b.join().unwrap();
    // Drained and exited: released, so a new thread gets a buffer, and the
    // records it writes are its own (a new generation).
    let mut got = 0;
    r.drain(|_, _, records, _| got += records.len());
    assert_eq!(got, 7);
    let r2 = r.clone();
    let tid = thread::spawn(move || {
        assert!(r2.write(rec(6, 0)));
        gettid()
    })
    .join()
    .unwrap();
    let snap = r.snapshot();
    assert_eq!(snap.len(), 1);
    assert_eq!((snap[0].tid, seqs(&snap[0].records)), (tid, vec![0]));
    assert_eq!(snap[0].lost, 0);
}

#[test]
fn freezing_holds_every_buffer_still_until_unfrozen() {
    let r = rings(16, Mode::Overwrite);
    for i in 0..20 {
        r.write(rec(11, i));
    }
    r.freeze();
    assert!(r.is_frozen());
    for i in 20..30 {
        assert!(!r.write(rec(11, i)), "frozen: refused");
    }
    // A thread that takes a buffer while frozen is frozen too.
    let r2 = r.clone();
    thread::spawn(move || assert!(!r2.write(rec(12, 0))))
        .join()
        .unwrap();
    let me = mine(&r.snapshot()).clone();
    assert_eq!(seqs(&me.records), (4..20).collect::<Vec<_>>());
    r.unfreeze();
    assert!(r.write(rec(11, 30)));
    let me = mine(&r.snapshot()).clone();
    assert_eq!(*seqs(&me.records).last().unwrap(), 30);
    assert_eq!(me.records.len(), 16);
}

#[test]
fn a_consumer_maps_the_buffers_and_streams_them() {
    use livetrace_ring::shm::Consumer;
    let r = rings(64, Mode::DropNewest);
    let (data, tails, layout) = r.shared().expect("memory files");
    let c = Consumer::new(
        data.try_clone_to_owned().unwrap(),
        tails.try_clone_to_owned().unwrap(),
        layout,
    )
    .unwrap();
    // A wrong layout is refused.
    let mut wrong = layout;
    wrong.records *= 2;
    assert!(Consumer::new(
        data.try_clone_to_owned().unwrap(),
        tails.try_clone_to_owned().unwrap(),
        wrong
    )
    .is_err());
    let (stop, done) = (Arc::new(AtomicU64::new(0)), Arc::new(Barrier::new(2)));
    let (r2, stop2, done2) = (r.clone(), stop.clone(), done.clone());
    const N: u64 = 200_000;
    let w = thread::spawn(move || {
        let mut kept = 0;
        for i in 0..N {
            kept += u64::from(r2.write(rec(20, i)));
            if i % 64 == 0 {
                thread::yield_now();
            }
        }
        stop2.store(1, Relaxed);
        done2.wait();
        kept
    });
    // The consumer: copies [tail, head) of every buffer, stores the tail.
    let mut got: Vec<Record> = Vec::new();
    let mut cursor: HashMap<u32, (u64, u64)> = HashMap::new();
    let mut buf = Vec::new();
    let mut pass = |cursor: &mut HashMap<u32, (u64, u64)>, got: &mut Vec<Record>| {
        for i in 0..layout.slots {
            let Some(v) = c.slot(i) else { continue };
            let cur = cursor.entry(i).or_insert((v.generation, 0));
            if cur.0 != v.generation {
                *cur = (v.generation, 0);
            }
            let first = c.copy_intact(i, cur.1, v.head, &mut buf);
            assert_eq!(first, cur.1, "stream mode never overwrites unread records");
            got.extend_from_slice(&buf);
            cur.1 = v.head;
            c.set_tail(i, v.head);
            c.forget(i, first, v.head);
        }
    };
    while stop.load(Relaxed) == 0 {
        pass(&mut cursor, &mut got);
    }
    pass(&mut cursor, &mut got);
    done.wait();
    let kept = w.join().unwrap();
    got.iter().for_each(check);
    assert_eq!(got.len() as u64, kept);
    assert!(seqs(&got).windows(2).all(|p| p[1] > p[0]));
    let dropped = c.slot(0).map_or(0, |v| v.dropped);
    assert_eq!(kept + dropped, N, "every record kept or counted");
    // Exited and consumed: the consumer releases the buffer.
    let v = c.slot(0).unwrap();
    assert!(v.exited);
    c.release(0, v.generation);
    assert_eq!(r.thread_count(), 0);
}
