//! (draft)
pub mod model;
mod calls;
pub mod uftrace;
pub use model::*;
