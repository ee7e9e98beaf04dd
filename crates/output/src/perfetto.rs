//! Perfetto's native protobuf trace format (`.perfetto-trace`), which the
//! Perfetto UI and `trace_processor` load far faster, and far larger, than
//! JSON. Written by hand (the encoding is small) against the published
//! `protos/perfetto/trace/perfetto_trace.proto`, as its "synthetic track
//! event" documentation describes, streamed: each event is one
//! `TracePacket` appended to the file as it is read.
//!
//! ```text
//! Trace { packet {                           // once, first
//!           clock_snapshot { clocks { clock_id: 3 (MONOTONIC) timestamp: start_ns }
//!                            primary_trace_clock: MONOTONIC }
//!           trusted_packet_sequence_id: 1  sequence_flags: INCREMENTAL_STATE_CLEARED
//!           trace_packet_defaults { timestamp_clock_id: 3 } }
//!         packet { track_descriptor { uuid: 1 process { pid cmdline process_name } } }
//!         packet { track_descriptor { uuid: 2 parent_uuid: 1 thread { pid tid thread_name } } }
//!         packet { timestamp: ns  trusted_packet_sequence_id: 1
//!                  sequence_flags: NEEDS_INCREMENTAL_STATE
//!                  interned_data { event_names { iid: 1 name: "parse" } }   // first use only
//!                  track_event { type: SLICE_BEGIN track_uuid: 2 name_iid: 1 } }
//!         ... }
//! ```
//!
//! * One packet sequence (id 1) carries everything, so each name is
//!   interned once for the whole trace (`InternedData.event_names`; callers
//!   as interned debug-annotation strings) and memory is one entry per
//!   distinct name, plus each thread's open calls.
//! * Timestamps are the events' own: absolute `CLOCK_MONOTONIC` ns, which
//!   the clock snapshot makes the trace's clock, so the trace lines up with
//!   perf, ftrace (`trace_clock` mono) and uftrace recordings of the run.
//! * A process track (uuid 1) and one thread track per thread (uuids from
//!   2, in first-seen order), described when first needed and again when a
//!   thread is renamed.
//! * Function-graph calls are `TYPE_SLICE_BEGIN`/`TYPE_SLICE_END` pairs on
//!   their thread's track; a call whose exit was lost ends where its caller
//!   returned, a call still running at the end ends at its thread's last
//!   event, both with an `unfinished: true` annotation. Orphan exits (their
//!   entry was overwritten) are not drawn, and counted.
//! * Function-tracer calls are `TYPE_INSTANT` events with a `caller`
//!   annotation.
//! * A function whose source location is known ([`Symbols::location`])
//!   has its slices and instants carry `source_location_iid`, interned
//!   once per distinct location (`InternedData.source_locations`: file,
//!   line, function name); the UI shows it with the slice's details.
//! * Losses: a `lost N events` instant on the thread's track where they
//!   happened (annotated with the count and the reason), and at the end a
//!   `livetrace: thread summary` instant per thread carrying the events
//!   kept and lost by reason, and the process described again with a
//!   `lost N events` label.

use std::collections::HashMap;
use std::io::{self, BufWriter, Write};

use crate::model::{Event, LossReason, Process, Summary, Symbols, Trace};
use crate::sink::{feed, land, BuildFast, Landing, Open, Order, Sink, Threads, MAX_OPEN};

// Field numbers, from perfetto_trace.proto.
const TRACE_PACKET: u32 = 1;

const PACKET_CLOCK_SNAPSHOT: u32 = 6;
const PACKET_TIMESTAMP: u32 = 8;
const PACKET_SEQUENCE_ID: u32 = 10;
const PACKET_TRACK_EVENT: u32 = 11;
const PACKET_INTERNED_DATA: u32 = 12;
const PACKET_SEQUENCE_FLAGS: u32 = 13;
const PACKET_TIMESTAMP_CLOCK_ID: u32 = 58;
const PACKET_DEFAULTS: u32 = 59;
const PACKET_TRACK_DESCRIPTOR: u32 = 60;

const SEQ_INCREMENTAL_STATE_CLEARED: u64 = 1;
const SEQ_NEEDS_INCREMENTAL_STATE: u64 = 2;

const CLOCK_SNAPSHOT_CLOCKS: u32 = 1;
const CLOCK_SNAPSHOT_PRIMARY: u32 = 2;
const CLOCK_ID: u32 = 1;
const CLOCK_TIMESTAMP: u32 = 2;
const BUILTIN_CLOCK_MONOTONIC: u64 = 3;

const DEFAULTS_TIMESTAMP_CLOCK_ID: u32 = 58;

const TRACK_UUID: u32 = 1;
const TRACK_PROCESS: u32 = 3;
const TRACK_THREAD: u32 = 4;
const TRACK_PARENT_UUID: u32 = 5;
const PROCESS_PID: u32 = 1;
const PROCESS_CMDLINE: u32 = 2;
const PROCESS_NAME: u32 = 6;
const PROCESS_LABELS: u32 = 8;
const THREAD_PID: u32 = 1;
const THREAD_TID: u32 = 2;
const THREAD_NAME: u32 = 5;

const EVENT_DEBUG_ANNOTATIONS: u32 = 4;
const EVENT_TYPE: u32 = 9;
const EVENT_NAME_IID: u32 = 10;
const EVENT_TRACK_UUID: u32 = 11;
const EVENT_NAME: u32 = 23;
const EVENT_SOURCE_LOCATION_IID: u32 = 34;
const TYPE_SLICE_BEGIN: u64 = 1;
const TYPE_SLICE_END: u64 = 2;
const TYPE_INSTANT: u64 = 3;

const ANNOTATION_NAME_IID: u32 = 1;
const ANNOTATION_BOOL: u32 = 2;
const ANNOTATION_UINT: u32 = 3;
const ANNOTATION_STRING: u32 = 6;
const ANNOTATION_NAME: u32 = 10;
const ANNOTATION_STRING_IID: u32 = 17;

const INTERNED_EVENT_NAMES: u32 = 2;
const INTERNED_ANNOTATION_NAMES: u32 = 3;
const INTERNED_SOURCE_LOCATIONS: u32 = 4;
const INTERNED_ANNOTATION_STRINGS: u32 = 29;
const INTERNED_IID: u32 = 1;
const INTERNED_NAME: u32 = 2;
const LOCATION_FILE: u32 = 2;
const LOCATION_FUNCTION: u32 = 3;
const LOCATION_LINE: u32 = 4;

const SEQUENCE: u64 = 1;
const PROCESS_TRACK: u64 = 1;
/// The interned debug-annotation name `caller`.
const CALLER_IID: u64 = 1;

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_uint(buf: &mut Vec<u8>, field: u32, v: u64) {
    put_varint(buf, u64::from(field) << 3);
    put_varint(buf, v);
}

fn put_bytes(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(buf, (u64::from(field) << 3) | 2);
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// An annotation `name: value` with its name written out (rare ones).
fn annotation(buf: &mut Vec<u8>, name: &str, value: AnnotationValue) {
    let mut a = Vec::new();
    put_bytes(&mut a, ANNOTATION_NAME, name.as_bytes());
    match value {
        AnnotationValue::Bool(b) => put_uint(&mut a, ANNOTATION_BOOL, u64::from(b)),
        AnnotationValue::Uint(n) => put_uint(&mut a, ANNOTATION_UINT, n),
        AnnotationValue::Str(s) => put_bytes(&mut a, ANNOTATION_STRING, s.as_bytes()),
    }
    put_bytes(buf, EVENT_DEBUG_ANNOTATIONS, &a);
}

enum AnnotationValue<'a> {
    Bool(bool),
    Uint(u64),
    Str(&'a str),
}

#[derive(Default)]
struct ThreadTrack {
    uuid: u64,
    /// The name its track was last described with; `None` before then.
    described: Option<String>,
    /// `described` is the thread's name (no rename since).
    current: bool,
    stack: Vec<Open>,
    orphans: u64,
}

/// Interned strings of one kind: name -> iid, and the cache of addresses
/// resolved to an iid under the current symbols. For event names, also
/// the functions' source locations: one iid per distinct location, found
/// with the name (one lookup per event either way).
#[derive(Default)]
struct Interned {
    by_name: HashMap<String, u64>,
    /// Address -> (name iid, source location iid or 0).
    by_addr: HashMap<u64, (u64, u64), BuildFast>,
    /// (file, line, function name) -> source location iid.
    by_location: HashMap<(String, u32, String), u64>,
    version: Option<u64>,
}

impl Interned {
    /// The iid of `addr`'s name and, with `located`, of the function's
    /// source location (0: none known); new ones are also added to
    /// `pending` (interned data to write with this packet), the name under
    /// `field`.
    fn iid(
        &mut self,
        addr: u64,
        names: &Symbols,
        field: u32,
        located: bool,
        pending: &mut Vec<u8>,
    ) -> (u64, u64) {
        if self.version != Some(names.version()) {
            self.by_addr.clear();
            self.version = Some(names.version());
        }
        if let Some(&iids) = self.by_addr.get(&addr) {
            return iids;
        }
        let name = names.display(addr);
        let iid = match self.by_name.get(name.as_ref()) {
            Some(&iid) => iid,
            None => {
                let iid = self.by_name.len() as u64 + 1;
                self.by_name.insert(name.to_string(), iid);
                let mut entry = Vec::with_capacity(name.len() + 8);
                put_uint(&mut entry, INTERNED_IID, iid);
                put_bytes(&mut entry, INTERNED_NAME, name.as_bytes());
                put_bytes(pending, field, &entry);
                iid
            }
        };
        let loc_iid = match names.location(addr).filter(|_| located) {
            None => 0,
            Some(loc) => {
                let key = (loc.file.clone(), loc.line, name.to_string());
                let next = self.by_location.len() as u64 + 1;
                *self.by_location.entry(key).or_insert_with(|| {
                    let mut entry = Vec::with_capacity(loc.file.len() + name.len() + 16);
                    put_uint(&mut entry, INTERNED_IID, next);
                    put_bytes(&mut entry, LOCATION_FILE, loc.file.as_bytes());
                    put_bytes(&mut entry, LOCATION_FUNCTION, name.as_bytes());
                    put_uint(&mut entry, LOCATION_LINE, u64::from(loc.line));
                    put_bytes(pending, INTERNED_SOURCE_LOCATIONS, &entry);
                    next
                })
            }
        };
        self.by_addr.insert(addr, (iid, loc_iid));
        (iid, loc_iid)
    }
}

/// The `.perfetto-trace` writer, streamed.
pub struct PerfettoTrace<W: Write> {
    out: BufWriter<W>,
    process: Process,
    threads: Threads<ThreadTrack>,
    event_names: Interned,
    callers: Interned,
    /// Scratch buffers: the track event, new interned data, the packet.
    event: Vec<u8>,
    interned: Vec<u8>,
    packet: Vec<u8>,
}

impl<W: Write> PerfettoTrace<W> {
    pub fn new(out: W) -> Self {
        PerfettoTrace {
            out: BufWriter::with_capacity(1 << 16, out),
            process: Process::default(),
            threads: Threads::default(),
            event_names: Interned::default(),
            callers: Interned::default(),
            event: Vec::with_capacity(64),
            interned: Vec::new(),
            packet: Vec::with_capacity(128),
        }
    }

    /// The writer, once finished.
    pub fn into_inner(self) -> io::Result<W> {
        self.out.into_inner().map_err(|e| e.into_error())
    }

    /// Writes `self.packet` as one `Trace.packet`.
    fn emit(&mut self) -> io::Result<()> {
        let mut head = [0u8; 11];
        head[0] = ((TRACE_PACKET << 3) | 2) as u8;
        let mut n = 1;
        let mut len = self.packet.len() as u64;
        while len >= 0x80 {
            head[n] = (len as u8) | 0x80;
            len >>= 7;
            n += 1;
        }
        head[n] = len as u8;
        self.out.write_all(&head[..=n])?;
        self.out.write_all(&self.packet)
    }

    /// A packet on the sequence with `self.event` as its track event (and
    /// `self.interned`, if any).
    fn emit_event(&mut self, ts: u64) -> io::Result<()> {
        let p = &mut self.packet;
        p.clear();
        put_uint(p, PACKET_TIMESTAMP, ts);
        put_uint(p, PACKET_SEQUENCE_ID, SEQUENCE);
        put_uint(p, PACKET_SEQUENCE_FLAGS, SEQ_NEEDS_INCREMENTAL_STATE);
        if !self.interned.is_empty() {
            put_bytes(p, PACKET_INTERNED_DATA, &self.interned);
            self.interned.clear();
        }
        put_bytes(p, PACKET_TRACK_EVENT, &self.event);
        self.emit()
    }

    fn emit_descriptor(&mut self, descriptor: &[u8]) -> io::Result<()> {
        let p = &mut self.packet;
        p.clear();
        put_uint(p, PACKET_SEQUENCE_ID, SEQUENCE);
        put_uint(p, PACKET_SEQUENCE_FLAGS, SEQ_NEEDS_INCREMENTAL_STATE);
        put_bytes(p, PACKET_TRACK_DESCRIPTOR, descriptor);
        self.emit()
    }

    fn process_descriptor(&mut self, labels: &[String]) -> io::Result<()> {
        let p = &self.process;
        let mut proc_ = Vec::new();
        put_uint(&mut proc_, PROCESS_PID, u64::from(p.pid));
        if !p.program.is_empty() {
            put_bytes(&mut proc_, PROCESS_CMDLINE, p.program.as_bytes());
        }
        for arg in p.cmdline.iter().skip(1) {
            put_bytes(&mut proc_, PROCESS_CMDLINE, arg.as_bytes());
        }
        put_bytes(&mut proc_, PROCESS_NAME, p.program_name().as_bytes());
        for l in labels {
            put_bytes(&mut proc_, PROCESS_LABELS, l.as_bytes());
        }
        let mut d = Vec::new();
        put_uint(&mut d, TRACK_UUID, PROCESS_TRACK);
        put_bytes(&mut d, TRACK_PROCESS, &proc_);
        self.emit_descriptor(&d)
    }

    /// The thread's track uuid, describing the track first if its name is
    /// new. Tid 0 (losses no thread can be blamed for) is the process's.
    fn track(&mut self, tid: u32) -> io::Result<u64> {
        if tid == 0 {
            return Ok(PROCESS_TRACK);
        }
        let idx = self.threads.index(tid);
        let t = self.threads.get(tid);
        if t.state.uuid == 0 {
            t.state.uuid = PROCESS_TRACK + 1 + idx as u64;
        }
        let uuid = t.state.uuid;
        if t.state.current {
            return Ok(uuid);
        }
        t.state.current = true;
        if t.state.described.as_deref() == Some(t.summary.name.as_str()) {
            return Ok(uuid);
        }
        let name = t.summary.name.clone();
        t.state.described = Some(name.clone());
        let mut thread = Vec::new();
        put_uint(&mut thread, THREAD_PID, u64::from(self.process.pid));
        put_uint(&mut thread, THREAD_TID, u64::from(tid));
        if !name.is_empty() {
            put_bytes(&mut thread, THREAD_NAME, name.as_bytes());
        }
        let mut d = Vec::new();
        put_uint(&mut d, TRACK_UUID, uuid);
        put_uint(&mut d, TRACK_PARENT_UUID, PROCESS_TRACK);
        put_bytes(&mut d, TRACK_THREAD, &thread);
        self.emit_descriptor(&d)?;
        Ok(uuid)
    }

    /// Ends a slice on `track` at `ts`.
    fn end(&mut self, track: u64, ts: u64, unfinished: bool) -> io::Result<()> {
        let e = &mut self.event;
        e.clear();
        put_uint(e, EVENT_TYPE, TYPE_SLICE_END);
        put_uint(e, EVENT_TRACK_UUID, track);
        if unfinished {
            annotation(e, "unfinished", AnnotationValue::Bool(true));
        }
        self.emit_event(ts)
    }

    /// An instant with a written-out name and annotations.
    fn note(
        &mut self,
        track: u64,
        ts: u64,
        name: &str,
        notes: &[(&str, AnnotationValue)],
    ) -> io::Result<()> {
        let e = &mut self.event;
        e.clear();
        put_uint(e, EVENT_TYPE, TYPE_INSTANT);
        put_uint(e, EVENT_TRACK_UUID, track);
        put_bytes(e, EVENT_NAME, name.as_bytes());
        for (k, v) in notes {
            let v = match v {
                AnnotationValue::Bool(b) => AnnotationValue::Bool(*b),
                AnnotationValue::Uint(n) => AnnotationValue::Uint(*n),
                AnnotationValue::Str(s) => AnnotationValue::Str(s),
            };
            annotation(e, k, v);
        }
        self.emit_event(ts)
    }
}

impl<W: Write> Sink for PerfettoTrace<W> {
    fn begin(&mut self, process: &Process) -> io::Result<()> {
        self.process = process.clone();
        let mut clock = Vec::new();
        put_uint(&mut clock, CLOCK_ID, BUILTIN_CLOCK_MONOTONIC);
        put_uint(&mut clock, CLOCK_TIMESTAMP, process.start_ns);
        let mut snapshot = Vec::new();
        put_bytes(&mut snapshot, CLOCK_SNAPSHOT_CLOCKS, &clock);
        put_uint(
            &mut snapshot,
            CLOCK_SNAPSHOT_PRIMARY,
            BUILTIN_CLOCK_MONOTONIC,
        );
        let mut defaults = Vec::new();
        put_uint(
            &mut defaults,
            DEFAULTS_TIMESTAMP_CLOCK_ID,
            BUILTIN_CLOCK_MONOTONIC,
        );
        // The sequence's interned state starts here, with the one
        // annotation name every Call event uses.
        let mut caller = Vec::new();
        put_uint(&mut caller, INTERNED_IID, CALLER_IID);
        put_bytes(&mut caller, INTERNED_NAME, b"caller");
        let mut interned = Vec::new();
        put_bytes(&mut interned, INTERNED_ANNOTATION_NAMES, &caller);

        let p = &mut self.packet;
        p.clear();
        put_uint(p, PACKET_TIMESTAMP, process.start_ns);
        put_uint(p, PACKET_TIMESTAMP_CLOCK_ID, BUILTIN_CLOCK_MONOTONIC);
        put_bytes(p, PACKET_CLOCK_SNAPSHOT, &snapshot);
        put_uint(p, PACKET_SEQUENCE_ID, SEQUENCE);
        put_uint(
            p,
            PACKET_SEQUENCE_FLAGS,
            SEQ_INCREMENTAL_STATE_CLEARED | SEQ_NEEDS_INCREMENTAL_STATE,
        );
        put_bytes(p, PACKET_DEFAULTS, &defaults);
        put_bytes(p, PACKET_INTERNED_DATA, &interned);
        self.emit()?;
        self.process_descriptor(&[])
    }

    fn thread(&mut self, tid: u32, name: &str) -> io::Result<()> {
        self.threads.name(tid, name).state.current = false;
        Ok(())
    }

    fn event(&mut self, tid: u32, event: Event, names: &Symbols) -> io::Result<()> {
        self.threads.event(tid, event.ts());
        let track = self.track(tid)?;
        match event {
            Event::Entry { ts, func, depth } => {
                let state = &mut self.threads.get(tid).state;
                if state.stack.len() >= MAX_OPEN {
                    return Ok(());
                }
                state.stack.push(Open {
                    func,
                    depth,
                    entry: ts,
                });
                let (iid, loc_iid) = self.event_names.iid(
                    func,
                    names,
                    INTERNED_EVENT_NAMES,
                    true,
                    &mut self.interned,
                );
                let e = &mut self.event;
                e.clear();
                put_uint(e, EVENT_TYPE, TYPE_SLICE_BEGIN);
                put_uint(e, EVENT_TRACK_UUID, track);
                put_uint(e, EVENT_NAME_IID, iid);
                if loc_iid != 0 {
                    put_uint(e, EVENT_SOURCE_LOCATION_IID, loc_iid);
                }
                self.emit_event(ts)
            }
            Event::Exit { ts, func, depth } => {
                let state = &mut self.threads.get(tid).state;
                let (keep, closes) = match land(&state.stack, func, depth, |o| (o.func, o.depth)) {
                    Landing::Closes(i) => (i, true),
                    Landing::Orphan(i) => {
                        state.orphans += 1;
                        (i, false)
                    }
                };
                let abandoned = state.stack.len() - keep - usize::from(closes);
                state.stack.truncate(keep);
                for _ in 0..abandoned {
                    self.end(track, ts, true)?;
                }
                if closes {
                    self.end(track, ts, false)?;
                }
                Ok(())
            }
            Event::Call { ts, func, caller } => {
                let (iid, loc_iid) = self.event_names.iid(
                    func,
                    names,
                    INTERNED_EVENT_NAMES,
                    true,
                    &mut self.interned,
                );
                let (caller_iid, _) = self.callers.iid(
                    caller,
                    names,
                    INTERNED_ANNOTATION_STRINGS,
                    false,
                    &mut self.interned,
                );
                let mut a = Vec::with_capacity(8);
                put_uint(&mut a, ANNOTATION_NAME_IID, CALLER_IID);
                put_uint(&mut a, ANNOTATION_STRING_IID, caller_iid);
                let e = &mut self.event;
                e.clear();
                put_uint(e, EVENT_TYPE, TYPE_INSTANT);
                put_uint(e, EVENT_TRACK_UUID, track);
                put_uint(e, EVENT_NAME_IID, iid);
                if loc_iid != 0 {
                    put_uint(e, EVENT_SOURCE_LOCATION_IID, loc_iid);
                }
                put_bytes(e, EVENT_DEBUG_ANNOTATIONS, &a);
                self.emit_event(ts)
            }
        }
    }

    fn lost(&mut self, tid: u32, count: u64, reason: LossReason) -> io::Result<()> {
        let t = self.threads.lost(tid, count, reason);
        let ts = t.summary.last_ts.unwrap_or(self.process.start_ns);
        let track = self.track(tid)?;
        let name = match reason {
            LossReason::DepthLimit => format!("{count} calls over the depth limit"),
            _ => format!("lost {count} events"),
        };
        self.note(
            track,
            ts,
            &name,
            &[
                ("count", AnnotationValue::Uint(count)),
                ("reason", AnnotationValue::Str(reason.describe())),
            ],
        )
    }

    fn finish(&mut self, _names: &Symbols) -> io::Result<Summary> {
        let tids: Vec<u32> = self.threads.iter().map(|t| t.summary.tid).collect();
        for tid in tids {
            let track = self.track(tid)?;
            let t = self.threads.get(tid);
            let last = t.summary.last_ts.unwrap_or(self.process.start_ns);
            let open = std::mem::take(&mut t.state.stack);
            let orphans = t.state.orphans;
            let s = t.summary.clone();
            for _ in &open {
                self.end(track, last, true)?;
            }
            let mut notes = vec![
                ("events", AnnotationValue::Uint(s.events)),
                ("lost", AnnotationValue::Uint(s.losses.events())),
                ("orphan_exits", AnnotationValue::Uint(orphans)),
            ];
            notes.extend(
                s.losses
                    .iter()
                    .map(|(r, n)| (r.key(), AnnotationValue::Uint(n))),
            );
            self.note(track, last, "livetrace: thread summary", &notes)?;
        }
        let summary = self.threads.summary();
        if summary.lost() > 0 {
            self.process_descriptor(&[format!("lost {} events", summary.lost())])?;
        }
        self.out.flush()?;
        Ok(summary)
    }
}

/// Writes the trace as a `.perfetto-trace` protobuf.
pub fn write<W: Write>(trace: &Trace, out: W) -> io::Result<()> {
    feed(trace, Order::ByThread, &mut PerfettoTrace::new(out)).map(|_| ())
}

#[cfg(test)]
mod tests;
