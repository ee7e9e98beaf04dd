#[livetrace::traced]
extern "C" fn callback(x: u32) -> u32 {
    x
}

fn main() {}
