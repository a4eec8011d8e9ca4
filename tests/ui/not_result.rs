use bigmachine::{service, Context, Result};

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct S;

#[service]
impl S {
    async fn echo(&self, _ctx: &Context, s: String) -> String {
        s
    }
}

fn main() {}
