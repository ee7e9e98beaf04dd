//! Traced functions for the tests in `tests/`: a hand-written module of
//! signature forms ([`forms`]) and thousands of generated ones ([`gen`],
//! see `build.rs`). The integration tests call them with sites as NOPs and
//! patched into calls to a counting stub.

/// A large struct, passed and returned through memory.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Big {
    /// Payload.
    pub a: [u64; 8],
    /// A float, passed in memory with the rest.
    pub x: f64,
    /// A tuple field.
    pub t: (u32, u16),
}

/// Implemented by generated types under `#[traced]`, called through `dyn Op`.
pub trait Op {
    /// By shared reference, integer in and out.
    fn apply(&self, x: u64) -> u64;
    /// By mutable reference, float in and out.
    fn mutate(&mut self, x: f64) -> f64;
    /// Returns a borrow of `self`.
    fn label(&self) -> &str;
    /// Large struct in and out.
    fn big(&self, b: Big) -> Big;
    /// Consumes a boxed `self`.
    fn consume(self: Box<Self>) -> u64;
}

#[allow(missing_docs, clippy::all)]
pub mod gen {
    include!(concat!(env!("OUT_DIR"), "/generated.rs"));
}

pub mod forms;
