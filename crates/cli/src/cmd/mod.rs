//! The commands, one module each: its arguments and its `run`.

pub mod ls;
pub mod patch;
pub mod record;
pub mod report;
pub mod snapshot;
pub mod trace;
