//! livetrace's recorded-trace file, and the vocabulary its producers and
//! readers share.
//!
//! A trace is recorded by copying: the 32-byte [`Record`]s the tracers write
//! into per-thread ring buffers are, byte for byte, the records of the file.
//! Nothing is decoded between the traced program and the disk; names,
//! mappings, thread names and the clock's calibration are written once (or
//! when they change), next to the records, and applied when the file is
//! read ([`Reader`]) and converted to the formats people read (the
//! `livetrace-output` writers, `livetrace convert`).
//!
//! # The file (version 1)
//!
//! All integers are little-endian. A file is a 16-byte header followed by
//! blocks:
//!
//! ```text
//! header   magic "LTTRACE\0" (8 bytes), version u32 (= 1), header size u32 (= 16)
//! block    kind u32, flags u32 (0), len u64, then `len` payload bytes,
//!          then zero padding up to a multiple of 16
//! ```
//!
//! Every block starts at a multiple of 16. A reader skips blocks whose kind
//! it does not know (so later versions can add kinds), and a file may end
//! anywhere: a block cut short (the recorder was killed, the disk filled)
//! ends the file, and everything before it stays readable. Strings are a
//! `u32` byte length and that many UTF-8 bytes, unpadded.
//!
//! | kind | block | payload |
//! |---|---|---|
//! | 1 | INFO | pid u32, tracer u8 (1 function, 2 graph, 3 profile), mode u8 (1 stream, 2 flight recorder), 2 zero bytes, program string, argument count u32 and that many strings |
//! | 2 | CLOCK | source u8 (1 TSC, 2 CLOCK_MONOTONIC), 7 zero bytes, ticks per second u64, base ticks u64, base ns u64, ns per tick u64 (32.32 fixed point) |
//! | 3 | THREAD | tid u32, flags u32 (bit 0: exited), name string: a thread appeared, was renamed or exited |
//! | 4 | RECORDS | tid u32, 4 zero bytes, first u64 (the index of the first record in the thread's stream: a jump from the previous block's end is a loss), then 32-byte records |
//! | 5 | LOSS | tid u32 (0: not attributable to a thread), reason u32 ([`LossReason`]), count u64: records lost since the previous LOSS of that thread and reason |
//! | 6 | SYMBOLS | count u32, then per symbol address u64, size u64 (0: unknown), name string |
//! | 7 | MAPS | count u32, then per mapping start u64, end u64, file offset u64, path string |
//! | 8 | PROFILE | count u32, then per row calls u64, total ns u64, self ns u64, min ns u64, max ns u64, name string (the profile tracer's table; a later block replaces an earlier one) |
//! | 9 | END | reason u32 ([`EndReason`]), status i32 (exit status or signal, where the reason has one), message string: the recording ended cleanly |
//! | 10 | SOURCES | count u32, then per function address u64, line u32, file string: where functions are in their source ([`Location`]) |
//!
//! A RECORDS block holds at most [`MAX_BLOCK_RECORDS`] records, so a reader
//! needs little memory whatever the file's size.
//!
//! Records carry raw clock ticks; the CLOCK block converts them to
//! CLOCK_MONOTONIC nanoseconds ([`ClockCal::to_ns`]). Symbols accumulate
//! over SYMBOLS blocks (a program can load libraries while it is traced);
//! a sized symbol names every address inside it, a size-less one only its
//! own address, and at one address a later symbol replaces an earlier one.
//! Source locations accumulate likewise over SOURCES blocks (a later one
//! replaces an earlier one at the same address); they name function starts
//! only, and the recorder finds them, from the objects' debug information
//! or from what the traced process reports, once per function, outside the
//! traced process. Readers that predate SOURCES skip it.
//!
//! # Records
//!
//! `ts` (ticks), `a` (the function's address), `b` (the caller's return
//! address for [`Kind::Call`], the nesting depth for [`Kind::Entry`],
//! [`Kind::Exit`]), `c` (the [`Kind`]). A thread's records are in the order
//! it wrote them, so timestamps never decrease within a thread.
//!
//! # Vocabulary
//!
//! [`Tracer`] and the output [`Format`]s (their names, which file names
//! imply them, which tracers they suit) are defined here once for the
//! command line, the C API and the control protocol.

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(not(target_endian = "little"))]
compile_error!("the trace format stores records in the machine's layout, defined as little-endian");

mod function;
mod read;
mod record;
mod vocab;
mod write;

pub use function::Function;
pub use read::{BlockRef, Error, Merged, Reader, ThreadRecords};
pub use record::{Kind, Record};
pub use vocab::{display_symbol, Format, Mode, Tracer};
pub use write::Writer;

/// The file's first 8 bytes.
pub const MAGIC: [u8; 8] = *b"LTTRACE\0";
/// The version this crate writes and reads.
pub const VERSION: u32 = 1;
/// Bytes in the file header.
pub const HEADER_BYTES: u64 = 16;
/// Bytes in a block header.
pub const BLOCK_HEADER_BYTES: u64 = 16;
/// Records in one RECORDS block, at most (1 MiB of records).
pub const MAX_BLOCK_RECORDS: usize = 32 * 1024;
/// The conventional file name extension.
pub const EXTENSION: &str = "lttrace";

/// Block kinds.
pub(crate) mod kind {
    pub const INFO: u32 = 1;
    pub const CLOCK: u32 = 2;
    pub const THREAD: u32 = 3;
    pub const RECORDS: u32 = 4;
    pub const LOSS: u32 = 5;
    pub const SYMBOLS: u32 = 6;
    pub const MAPS: u32 = 7;
    pub const PROFILE: u32 = 8;
    pub const END: u32 = 9;
    pub const SOURCES: u32 = 10;
}

/// What the recorded process was, from the INFO block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Info {
    /// Its pid.
    pub pid: u32,
    /// The tracer that recorded.
    pub tracer: Option<Tracer>,
    /// How its buffers were used.
    pub mode: Option<Mode>,
    /// Its executable.
    pub program: String,
    /// Its command line.
    pub cmdline: Vec<String>,
}

/// How to turn record ticks into CLOCK_MONOTONIC nanoseconds: the
/// recording process's calibration (`livetrace_ring::Clock`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockCal {
    /// Ticks are TSC ticks (else they are nanoseconds already).
    pub tsc: bool,
    /// Ticks per second.
    pub hz: u64,
    /// `base_ticks` ticks were `base_ns` CLOCK_MONOTONIC ns.
    pub base_ticks: u64,
    /// See `base_ticks`.
    pub base_ns: u64,
    /// Nanoseconds per tick, 32.32 fixed point.
    pub mult: u64,
}

impl Default for ClockCal {
    /// Ticks are nanoseconds.
    fn default() -> Self {
        ClockCal {
            tsc: false,
            hz: 1_000_000_000,
            base_ticks: 0,
            base_ns: 0,
            mult: 1 << 32,
        }
    }
}

impl ClockCal {
    /// CLOCK_MONOTONIC nanoseconds of `ticks` (the same conversion as
    /// `livetrace_ring::Clock::to_ns`).
    pub fn to_ns(&self, ticks: u64) -> u64 {
        if !self.tsc {
            return ticks;
        }
        let delta = i128::from(ticks) - i128::from(self.base_ticks);
        let ns = i128::from(self.base_ns) + ((delta * i128::from(self.mult)) >> 32);
        ns.clamp(0, i128::from(u64::MAX)) as u64
    }
}

/// One named address range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    /// First address.
    pub addr: u64,
    /// Size in bytes; 0 when unknown (the symbol then names `addr` only).
    pub size: u64,
    /// Name, demangled.
    pub name: String,
}

/// Where a function is in its source: the `file:line` of its first
/// instruction (debug information's line table, or what `#[traced]`
/// recorded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The function's address (a symbol's `addr`).
    pub addr: u64,
    /// Line, from 1.
    pub line: u32,
    /// Source file, as the debug information names it (usually absolute).
    pub file: String,
}

/// One executable mapping of a loaded object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Start address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    /// The object's path.
    pub path: String,
}

impl Mapping {
    /// The executable mappings in the text of a `/proc/PID/maps` file
    /// (lines whose permissions include `x`; anonymous ones get an empty
    /// path, a removed file its path without ` (deleted)`).
    pub fn executable(maps: &str) -> Vec<Mapping> {
        maps.lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let (range, perms, off) = (f.next()?, f.next()?, f.next()?);
                if !perms.contains('x') {
                    return None;
                }
                let path = f.nth(2).unwrap_or("").to_string();
                let (a, b) = range.split_once('-')?;
                Some(Mapping {
                    start: u64::from_str_radix(a, 16).ok()?,
                    end: u64::from_str_radix(b, 16).ok()?,
                    offset: u64::from_str_radix(off, 16).ok()?,
                    path,
                })
            })
            .collect()
    }
}

/// One row of the profile tracer's table: what the in-process profiler
/// computes, the control socket carries, a recording stores and the
/// profile writers print (one type for all of them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ProfileRow {
    /// Function name.
    pub name: String,
    /// Calls.
    pub calls: u64,
    /// Total time, ns.
    pub total_ns: u64,
    /// Self time, ns.
    pub self_ns: u64,
    /// Shortest call, ns.
    pub min_ns: u64,
    /// Longest call, ns.
    pub max_ns: u64,
}

/// Why records were lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LossReason {
    /// Stream mode: the thread's buffer was full because the consumer had
    /// not yet moved its records to disk (the newest were refused).
    BufferFull,
    /// Flight-recorder mode: older records were overwritten by newer ones
    /// before they were read.
    Overwritten,
    /// The thread had no buffer: the session's memory budget was used up by
    /// other threads, or the thread wrote while exiting.
    NoBuffer,
    /// The consumer could not store them (a write error, such as a full
    /// disk); recording stopped there.
    NotWritten,
    /// A reason this version does not know.
    Other(u32),
}

impl LossReason {
    /// Its code in LOSS blocks.
    pub fn code(self) -> u32 {
        match self {
            LossReason::BufferFull => 1,
            LossReason::Overwritten => 2,
            LossReason::NoBuffer => 3,
            LossReason::NotWritten => 4,
            LossReason::Other(c) => c,
        }
    }

    /// The reason with code `c`.
    pub fn from_code(c: u32) -> LossReason {
        match c {
            1 => LossReason::BufferFull,
            2 => LossReason::Overwritten,
            3 => LossReason::NoBuffer,
            4 => LossReason::NotWritten,
            c => LossReason::Other(c),
        }
    }

    /// What a person reads.
    pub fn describe(self) -> &'static str {
        match self {
            LossReason::BufferFull => "buffer full (the consumer fell behind)",
            LossReason::Overwritten => "overwritten (flight recorder)",
            LossReason::NoBuffer => "no buffer (memory budget used up)",
            LossReason::NotWritten => "not written (output error)",
            LossReason::Other(_) => "unknown reason",
        }
    }
}

/// Records lost by one thread (or none: tid 0), per reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Losses(pub Vec<(LossReason, u64)>);

impl Losses {
    /// Adds `n` lost for `reason`.
    pub fn add(&mut self, reason: LossReason, n: u64) {
        if n == 0 {
            return;
        }
        match self.0.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, c)) => *c += n,
            None => {
                self.0.push((reason, n));
                self.0.sort();
            }
        }
    }

    /// All reasons together.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|(_, n)| n).sum()
    }

    /// Lost for `reason`.
    pub fn get(&self, reason: LossReason) -> u64 {
        self.0
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

/// One thread of a recorded trace, as the whole file describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThreadInfo {
    /// Kernel thread id.
    pub tid: u32,
    /// Its last known name.
    pub name: String,
    /// Records of it in the file.
    pub records: u64,
    /// Records it lost, per reason.
    pub lost: Losses,
    /// The recording saw it exit.
    pub exited: bool,
}

/// Why a recording ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// Tracing was stopped (Ctrl-C, a duration, a stop request).
    Stopped,
    /// The program exited; `status` is its exit status.
    Exited,
    /// The program was killed; `status` is the signal.
    Killed,
    /// The program ended, how is not known (not our child).
    Ended,
    /// A flight-recorder snapshot.
    Snapshot,
    /// The recorder stopped on an error (the message says which).
    Error,
    /// A reason this version does not know.
    Other(u32),
}

impl EndReason {
    /// Its code in END blocks.
    pub fn code(self) -> u32 {
        match self {
            EndReason::Stopped => 1,
            EndReason::Exited => 2,
            EndReason::Killed => 3,
            EndReason::Ended => 4,
            EndReason::Snapshot => 5,
            EndReason::Error => 6,
            EndReason::Other(c) => c,
        }
    }

    /// The reason with code `c`.
    pub fn from_code(c: u32) -> EndReason {
        match c {
            1 => EndReason::Stopped,
            2 => EndReason::Exited,
            3 => EndReason::Killed,
            4 => EndReason::Ended,
            5 => EndReason::Snapshot,
            6 => EndReason::Error,
            c => EndReason::Other(c),
        }
    }
}

/// The END block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct End {
    /// Why.
    pub reason: EndReason,
    /// Exit status or signal number, where `reason` has one.
    pub status: i32,
    /// What a person reads.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::Mapping;

    #[test]
    fn executable_maps_lines_parse() {
        let maps = "7f00a000-7f00b000 r-xp 00002000 08:01 1234   /usr/lib/libz.so.1\n\
                    7f00b000-7f00c000 rw-p 00000000 00:00 0 [heap]\n\
                    7f00c000-7f00d000 r-xp 00000000 08:01 9 /tmp/x (deleted)\n";
        let m = Mapping::executable(maps);
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0].start, m[0].end, m[0].offset),
            (0x7f00a000, 0x7f00b000, 0x2000)
        );
        assert_eq!(m[0].path, "/usr/lib/libz.so.1");
        assert_eq!(m[1].path, "/tmp/x");
    }
}
