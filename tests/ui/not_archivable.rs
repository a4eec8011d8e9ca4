use bigmachine::{service, Context, Result};

struct NotArchivable;

#[service]
impl NotArchivable {
    async fn ping(&self, _ctx: &Context, n: u64) -> Result<u64> {
        Ok(n)
    }
}

fn main() {}
