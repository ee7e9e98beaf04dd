//! Writes livetrace traces in the formats people already read: ftrace text,
//! Chrome Trace Event JSON (Perfetto, `chrome://tracing`), Perfetto's
//! protobuf trace format, folded stacks and flame graphs, `uftrace.data`
//! directories, and profile tables.
//!
//! This crate is pure formatting: it depends on no livetrace crate but the
//! recorded-trace file format it converts from ([`convert`]), so a trace
//! can be converted anywhere, long after the traced process is gone.
//!
//! # The model
//!
//! A [`Trace`] is one process: its pid, program and command line, one
//! [`ThreadTrace`] per thread, the [`Symbols`] that name every function and
//! caller address in the events (and say where functions are in their
//! source, when known: [`SourceLocation`]), and the executable
//! [`Mapping`]s of its loaded objects. A thread holds its [`Event`]s in
//! the order they happened:
//!
//! * [`Event::Call`] from the *function* tracer: one per call, with the
//!   caller's address (a return address inside the caller);
//! * [`Event::Entry`] and [`Event::Exit`] from the *function-graph* tracer:
//!   an Exit closes the Entry with the same function and depth.
//!
//! Invariants the writers rely on: timestamps are absolute
//! `CLOCK_MONOTONIC` nanoseconds, non-decreasing within a thread, and
//! `Trace::start_ns` is no later than the first of them; depths count
//! nesting from 0 within the thread's traced calls.
//!
//! Irregularities every writer copes with, because real traces have them:
//!
//! * **Missing exits**: a call still running when the trace was taken, or
//!   whose thread exited mid-call, has no Exit. Text leaves it open, JSON
//!   draws it up to the thread's last event and marks it unfinished, the
//!   profile and folded self times leave it out.
//! * **Orphan exits**: in ring overwrite mode the oldest events are lost, so
//!   a thread's first events can be Exits of calls whose Entries were
//!   overwritten. The folded stacks and `uftrace.data` rebuild, from them,
//!   the stack the thread was on when recording began, so the calls that
//!   came before keep their callers; the writers that draw events as they
//!   come (text, JSON, protobuf) cannot go back, so they count orphans and
//!   draw nothing for them. Open calls at an orphan's depth or deeper, and
//!   open calls above a matching exit, are taken to have ended there (their
//!   exits were lost).
//! * **Lost events and depth overflows**: per-thread counts by reason
//!   ([`LossReason`]), at the point of the stream where they happened when
//!   the source knows it, reported by every writer that has a place for
//!   them.
//!
//! # Writers
//!
//! Every writer is a [`Sink`]: it takes a stream of per-thread events (and
//! thread names, losses and the symbols to name them with) and keeps memory
//! bounded whatever the trace's length: per thread, the calls still open
//! (bounded by the nesting depth), and for the aggregating formats one
//! entry per distinct stack or function. [`feed`] drives one from an
//! in-memory [`Trace`]; each module also keeps a `write(&Trace, ...)`
//! function doing just that. Every output says, per thread, how many events
//! were kept and lost and why, where its format has a place for it.
//!
//! | module | format | sink |
//! |---|---|---|
//! | [`text`] | ftrace's `function` and `function_graph` text layouts | [`text::FunctionText`], [`text::GraphText`] |
//! | [`chrome`] | Chrome Trace Event Format JSON | [`chrome::ChromeJson`] |
//! | [`perfetto`] | Perfetto's protobuf trace (`.perfetto-trace`) | [`perfetto::PerfettoTrace`] |
//! | [`folded`] | folded stacks; flame graph SVG via `inferno` | [`folded::FoldedWriter`], [`folded::FlameGraph`] |
//! | [`profile`] | per-function rows and a `uftrace report`-like table | [`profile::Profile`], [`profile::ProfileTable`] |
//! | [`uftrace`] | a `uftrace.data` directory for the `uftrace` tool | [`uftrace::UftraceDir`] |
//!
//! Each module documents its format and what it follows.

#[cfg(test)]
mod calls;
pub mod chrome;
pub mod convert;
pub mod folded;
pub mod model;
pub mod perfetto;
pub mod profile;
pub mod sink;
pub mod text;
pub mod uftrace;

pub use model::*;
pub use sink::{feed, merge_by_time, Order, Sink, Tee};
