#[livetrace::traced]
mod m {
    macro_rules! make {
        () => {
            pub fn made() {}
        };
    }
    make!();

    pub trait T {
        fn with_default(&self) {}
    }

    pub const fn k() -> u32 {
        1
    }
}

#[livetrace::traced]
trait Tr {
    fn f(&self) {}
}

fn main() {}
