//! livetrace: dynamic function tracing and live patching (work in progress).
pub use livetrace_poke as poke;
