use bigmachine::{service, Context, Result};

#[service]
trait Greeter {
    async fn greet(&self, _ctx: &Context, name: String) -> Result<String> {
        Ok(name)
    }
}

fn main() {}
