use bigmachine::{service, Context, Result};

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct S;

#[service]
impl S {
    async fn init(&self, _b: &bigmachine::B) -> Result<()> {
        Ok(())
    }
}

fn main() {}
