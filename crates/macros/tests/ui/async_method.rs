struct S;

#[livetrace::traced]
impl S {
    async fn run(&self) {}
    fn fine(&self) {}
}

#[livetrace::traced(skip)]
fn stray() {}

#[livetrace::traced(sometimes)]
fn unknown() {}

fn main() {}
