use bigmachine::service;

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct S;

#[service]
impl Clone for S {
    fn clone(&self) -> Self {
        S
    }
}

fn main() {}
