//! The `#[traced]` attribute (work in progress).
