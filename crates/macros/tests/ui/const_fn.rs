#[livetrace::traced]
const fn seven() -> u32 {
    7
}

fn main() {}
