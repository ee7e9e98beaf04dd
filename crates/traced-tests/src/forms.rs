//! Hand-written traced functions, one per form worth naming, each preceded
//! by the line its name is on, so the tests can check the site records.

#![allow(missing_docs)]

use crate::Big;
use livetrace::traced;

pub const ADD_LINE: u32 = line!() + 2;
#[traced]
pub fn add(a: u32, b: u32) -> u32 {
    a + b
}

#[traced]
#[allow(clippy::too_many_arguments)]
pub fn many(
    a: u8,
    b: u16,
    c: u32,
    d: u64,
    e: f32,
    f: f64,
    g: i8,
    h: i16,
    i: i32,
    j: i64,
    (k, l): (u8, u8),
) -> f64 {
    a as f64
        + b as f64
        + c as f64
        + d as f64
        + e as f64
        + f
        + g as f64
        + h as f64
        + i as f64
        + j as f64
        + k as f64
        + l as f64
}

#[traced]
pub fn big(mut b: Big, k: u64) -> Big {
    for x in &mut b.a {
        *x += k
    }
    b.x += k as f64;
    b
}

#[traced]
pub fn longest<'a>(a: &'a str, b: &'a str) -> &'a str {
    if a.len() >= b.len() {
        a
    } else {
        b
    }
}

#[traced]
pub fn first(v: &[u32]) -> &u32 {
    &v[0]
}

pub const GEN_ADD_LINE: u32 = line!() + 2;
#[traced]
pub fn gen_add<T: core::ops::Add<Output = T> + Copy>(a: T, b: T) -> T {
    a + b
}

#[traced]
pub fn arr<const N: usize>(a: [u8; N]) -> usize {
    a.len()
}

/// # Safety
/// `p` must be valid for reads.
#[traced]
pub unsafe fn deref(p: *const u32) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { *p }
}

#[traced]
pub fn never(msg: &str) -> ! {
    panic!("{msg}")
}

#[traced]
pub fn nothing() {}

#[derive(Default)]
pub struct Counter {
    pub n: u64,
}

pub const COUNTER_LINE: u32 = line!() + 3;
#[traced]
impl Counter {
    pub fn new() -> Self {
        Counter { n: 0 }
    }
    pub fn bump(&mut self, k: u64) -> u64 {
        self.n += k;
        self.n
    }
    #[traced]
    pub fn get(&self) -> u64 {
        self.n
    }
    pub fn take(mut self) -> u64 {
        self.n += 1;
        self.n
    }
    pub fn lookup<'a>(&'a self, m: &'a [u64]) -> &'a u64 {
        &m[self.n as usize % m.len()]
    }
    pub fn elided(&self, _k: &str) -> &u64 {
        &self.n
    }
    pub fn generic<T: Into<u64>>(&self, t: T) -> u64 {
        self.n + t.into()
    }
    pub fn pinned(self: core::pin::Pin<&mut Self>) -> u64 {
        self.n * 2
    }
    #[traced(skip)]
    pub const fn konst() -> u32 {
        3
    }
}

pub trait Shape {
    type Out;
    fn area(&self) -> Self::Out;
    fn scale(&mut self, k: f64);
    fn name(&self) -> &str {
        "shape"
    }
}

pub struct Sq(pub f64);

pub const SQ_AREA_LINE: u32 = line!() + 4;
#[traced]
impl Shape for Sq {
    type Out = f64;
    fn area(&self) -> Self::Out {
        self.0 * self.0
    }
    fn scale(&mut self, k: f64) {
        self.0 *= k
    }
}

pub struct Wrap<T>(pub T);

#[traced]
impl<T: Copy + Into<f64>> Wrap<T> {
    pub fn get(&self) -> f64 {
        self.0.into()
    }
}

#[traced]
impl<'a> Shape for &'a str {
    type Out = usize;
    fn area(&self) -> usize {
        self.len()
    }
    fn scale(&mut self, _k: f64) {}
    fn name(&self) -> &str {
        self
    }
}

/// A generic trait implemented generically: one site per instantiation.
pub trait Mix<R> {
    fn mix(&self, r: R) -> u64;
}

#[traced]
impl<T: Copy + Into<u64>, R> Mix<R> for Wrap<T>
where
    R: Into<u64>,
{
    fn mix(&self, r: R) -> u64 {
        self.0.into() * 1000 + r.into()
    }
}

#[traced]
pub mod inner {
    pub fn sub(a: i32, b: i32) -> i32 {
        a - b
    }
    pub struct P;
    impl P {
        pub fn one(&self) -> i32 {
            1
        }
    }
    pub mod deeper {
        pub fn two() -> i32 {
            2
        }
    }
}
