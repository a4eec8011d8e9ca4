use bigmachine::{service, Context, Machine, Result};

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Store;

#[service]
impl Store {
    async fn put(&self, _ctx: &Context, data: Vec<u8>) -> Result<u64> {
        Ok(data.len() as u64)
    }
}

// A typed client of a method taking bytes sends a `Vec<u8>` or a `Blob`, nothing else.
async fn send(machine: &Machine) -> Result<u64> {
    StoreClient::new(machine, "Store").put(&"not bytes".to_string()).await
}

fn main() {
    let _ = send;
}
