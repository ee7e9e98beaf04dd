#[livetrace::traced]
#[inline(never)]
fn a() {}

#[livetrace::traced]
#[unsafe(no_mangle)]
fn b() {}

#[livetrace::traced]
#[track_caller]
fn c() {}

fn main() {}
