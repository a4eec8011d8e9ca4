use bigmachine::{service, Context, Result};

#[service]
trait Greeter {
    fn greet(&self, ctx: &Context, name: String) -> Result<String>;
}

fn main() {}
