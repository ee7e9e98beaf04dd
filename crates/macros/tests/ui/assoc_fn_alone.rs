struct S;

impl S {
    // No `Self` anywhere: only the compiler can tell this is in an impl.
    #[livetrace::traced]
    fn helper(x: u32) -> u32 {
        x + 1
    }
}

fn main() {}
