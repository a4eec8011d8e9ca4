use bigmachine::{service, Context, Result};

#[service]
trait Greeter: Clone {
    async fn greet(&self, ctx: &Context, name: String) -> Result<String>;
}

fn main() {}
