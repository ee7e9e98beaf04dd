struct S(u32);

impl S {
    #[livetrace::traced]
    fn get(&self) -> u32 {
        self.0
    }

    #[livetrace::traced]
    fn make() -> Self {
        S(0)
    }
}

fn main() {}
