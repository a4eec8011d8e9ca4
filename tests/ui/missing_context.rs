use bigmachine::{service, Context, Result};

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct S;

#[service]
impl S {
    async fn echo(&self, s: String) -> Result<String> {
        Ok(s)
    }
}

fn main() {}
