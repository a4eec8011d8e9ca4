use bigmachine::{service, Context, Result};

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct S;

#[service]
impl S {
    fn echo(&self, _ctx: &Context, s: String) -> Result<String> {
        Ok(s)
    }
}

fn main() {}
