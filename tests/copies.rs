//! The engine's copy account (see `bigmachine::buffers::bytes_copied`): one copy per received archive
//! byte, none per stream byte. One test function, so nothing else in this process copies
//! meanwhile.

use bigmachine::buffers::bytes_copied;
use bigmachine::testsystem::TestSystem;
use std::sync::LazyLock;

use bigmachine::{service, Archived, Blob, ByteStream, Context, Result, Services, State, B};

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Blobs;

#[service]
impl Blobs {
    /// Sums the bytes of the argument, read in place.
    async fn sum(&self, _ctx: &Context, data: Archived<Vec<u8>>) -> Result<u64> {
        Ok(data.iter().map(|&b| u64::from(b)).sum())
    }

    /// `n` bytes of value 3.
    async fn blob(&self, _ctx: &Context, n: u64) -> Result<Vec<u8>> {
        Ok(vec![3u8; n as usize])
    }

    /// `n` bytes of value 6, from a buffer shared by every call.
    async fn shared(&self, _ctx: &Context, n: u64) -> Result<Blob> {
        static PAGE: LazyLock<bytes::Bytes> = LazyLock::new(|| vec![6u8; 16 << 20].into());
        Ok(Blob::from(PAGE.slice(..(n as usize).min(PAGE.len()))))
    }

    /// The argument stream, returned as the reply stream.
    async fn echo(&self, _ctx: &Context, _arg: (), body: ByteStream) -> Result<ByteStream> {
        Ok(body)
    }
}

/// Slack for the keepalives and headers that cross meanwhile.
const SLACK: u64 = 64 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn received_bytes_are_copied_once_for_archives_and_never_for_streams() -> Result<()> {
    let b = B::new(TestSystem::new())?;
    let machines = b.start(1, Services::new().with("Blobs", Blobs)).await?;
    let m = &machines[0];
    assert_eq!(m.wait(State::Running).await, State::Running);
    let n: u64 = 8 << 20;

    // An argument read in place: the machine copies it once, into its aligned buffer.
    let data = vec![1u8; n as usize];
    let before = bytes_copied();
    let sum: u64 = m.call("Blobs.sum", &data).await?;
    let copied = bytes_copied() - before;
    assert_eq!(sum, n);
    assert!(
        (n..n + SLACK).contains(&copied),
        "argument: {copied} bytes copied for {n}"
    );

    // A reply kept as an archive: the caller copies it once.
    let before = bytes_copied();
    let reply: Archived<Vec<u8>> = m.call("Blobs.blob", &n).await?;
    let copied = bytes_copied() - before;
    assert_eq!(reply.len() as u64, n);
    assert!(reply.iter().all(|&b| b == 3));
    assert!(
        (n..n + SLACK).contains(&copied),
        "reply: {copied} bytes copied for {n}"
    );

    // A blob reply reads as the vector it holds (its buffer went out uncopied; what the
    // caller copies is the same one copy into its aligned buffer).
    let before = bytes_copied();
    let reply: Archived<Vec<u8>> = m.call("Blobs.shared", &n).await?;
    let copied = bytes_copied() - before;
    assert_eq!(reply.len() as u64, n);
    assert!(reply.iter().all(|&b| b == 6));
    assert!(
        (n..n + SLACK).contains(&copied),
        "blob: {copied} bytes copied for {n}"
    );
    let small: Vec<u8> = m.call("Blobs.shared", &3u64).await?;
    assert_eq!(small, [6, 6, 6]);
    // Asked for as a blob: the received archive's bytes, no second copy.
    let before = bytes_copied();
    let blob: Blob = m.call("Blobs.shared", &n).await?;
    let copied = bytes_copied() - before;
    assert_eq!(blob.0.len() as u64, n);
    assert!(blob.0.iter().all(|&b| b == 6));
    assert!(
        (n..n + SLACK).contains(&copied),
        "blob read as a blob: {copied} bytes copied for {n}"
    );

    // A stream there and back: no copies.
    let before = bytes_copied();
    let chunk = bytes::Bytes::from(vec![5u8; 1 << 20]);
    let echoed: ByteStream = m
        .call("Blobs.echo", &())
        .body(move || {
            let chunks = (0..8).map(|_| Ok(chunk.clone()));
            ByteStream::from_stream(futures::stream::iter(chunks.collect::<Vec<_>>()))
        })
        .await?;
    let back = echoed.read_to_end(16 << 20).await?;
    let copied = bytes_copied() - before;
    assert_eq!(back.len() as u64, n);
    assert!(
        copied < SLACK,
        "streams: {copied} bytes copied for {n} each way"
    );

    b.shutdown().await;
    Ok(())
}
