#[livetrace::traced]
fn show(x: impl std::fmt::Display) -> String {
    x.to_string()
}

#[livetrace::traced]
fn evens() -> impl Iterator<Item = u32> {
    (0..10).filter(|x| x % 2 == 0)
}

fn main() {}
