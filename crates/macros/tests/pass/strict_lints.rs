//! Expansions compile cleanly under strict user lints, and in block scope.
#![deny(unsafe_code, missing_docs, unused, rust_2018_idioms, nonstandard_style)]

/// Documented.
#[livetrace::traced]
pub fn documented(x: u32) -> u32 {
    x + 1
}

/// A type.
pub struct Thing(u32);

#[livetrace::traced]
impl Thing {
    /// Documented method.
    pub fn get(&self) -> u32 {
        self.0
    }
}

fn main() {
    #[livetrace::traced]
    fn local(x: u32) -> u32 {
        x * 2
    }
    struct Local;
    #[livetrace::traced]
    impl Local {
        fn one(&self) -> u32 {
            1
        }
    }
    assert_eq!(local(documented(1)) + Thing(3).get() + Local.one(), 8);
    let n = livetrace::macro_sites().count();
    assert_eq!(n, 4);
}
