//! Byte streams as arguments and replies, on the test system.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bigmachine::testsystem::{ReplyFaults, TestSystem};
use bigmachine::{service, ByteStream, Context, Error, Kind, Result, Services, State, B};
use bytes::Bytes;
use common::eventually;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

static PRODUCER_CANCELED: AtomicBool = AtomicBool::new(false);

/// How a `consume` reader's stream ended: its length, or that it broke.
static CONSUMED: std::sync::Mutex<Option<std::result::Result<u64, Kind>>> =
    std::sync::Mutex::new(None);

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Streams;

/// `n` bytes of a pattern anyone can check: byte i is `i % 251`.
fn pattern(offset: u64, len: usize) -> Bytes {
    (0..len as u64)
        .map(|i| ((offset + i) % 251) as u8)
        .collect()
}

#[service]
impl Streams {
    /// Replies with the argument stream itself: bytes flow through as they arrive.
    async fn echo(&self, _ctx: &Context, _arg: (), body: ByteStream) -> Result<ByteStream> {
        Ok(body)
    }

    /// The hex SHA-256 of the argument stream.
    async fn sha256(&self, _ctx: &Context, _arg: (), mut body: ByteStream) -> Result<String> {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        while let Some(chunk) = body.next_chunk().await {
            h.update(&chunk?);
        }
        Ok(format!("{:x}", h.finalize()))
    }

    /// How many bytes the argument stream has.
    async fn count(&self, _ctx: &Context, _arg: (), mut body: ByteStream) -> Result<u64> {
        let mut n = 0;
        while let Some(chunk) = body.next_chunk().await {
            n += chunk?.len() as u64;
        }
        Ok(n)
    }

    /// A reply stream of `n` pattern bytes in 1 MiB chunks, produced by a task that records
    /// when its reader goes away.
    async fn generate(&self, _ctx: &Context, n: u64) -> Result<ByteStream> {
        let (sink, stream) = ByteStream::channel(4);
        tokio::spawn(async move {
            let mut sent = 0;
            while sent < n {
                let len = (n - sent).min(1 << 20) as usize;
                if let Err(e) = sink.send(pattern(sent, len)).await {
                    assert_eq!(e.kind(), Kind::Canceled);
                    PRODUCER_CANCELED.store(true, Ordering::SeqCst);
                    return;
                }
                sent += len as u64;
            }
            sink.finish();
        });
        Ok(stream)
    }

    /// An endless reply stream of 64 KiB pattern chunks.
    async fn endless(&self, _ctx: &Context, _arg: ()) -> Result<ByteStream> {
        let (sink, stream) = ByteStream::channel(4);
        tokio::spawn(async move {
            let chunk = pattern(0, 64 << 10);
            while sink.send(chunk.clone()).await.is_ok() {}
        });
        Ok(stream)
    }

    /// Reads the argument stream to its end in a task of its own (which outlives the call) and
    /// records how it ended; the call itself never returns.
    async fn consume(&self, _ctx: &Context, _arg: (), mut body: ByteStream) -> Result<()> {
        tokio::spawn(async move {
            let mut n = 0u64;
            let outcome = loop {
                match body.next_chunk().await {
                    Some(Ok(chunk)) => n += chunk.len() as u64,
                    Some(Err(e)) => break Err(e.kind()),
                    None => break Ok(n),
                }
            };
            *CONSUMED.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
        });
        futures::future::pending::<()>().await;
        Ok(())
    }

    /// `n` pattern bytes, then the stream ends with an error.
    async fn fail_after(&self, _ctx: &Context, n: u64) -> Result<ByteStream> {
        let (sink, stream) = ByteStream::channel(2);
        tokio::spawn(async move {
            if sink.send(pattern(0, n as usize)).await.is_ok() {
                sink.fail(Error::fatal(
                    Kind::Precondition,
                    format!("broke after {n} bytes"),
                ))
                .await;
            }
        });
        Ok(stream)
    }
}

async fn cluster(system: TestSystem) -> Result<(B, bigmachine::Machine)> {
    let b = B::new(system)?;
    let machines = b.start(1, Services::new().with("S", Streams)).await?;
    let m = machines
        .into_iter()
        .next()
        .ok_or_else(|| Error::other("no machine"))?;
    assert_eq!(m.wait(State::Running).await, State::Running);
    Ok((b, m))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kib_is_echoed_byte_for_byte() -> Result<()> {
    let (b, m) = cluster(TestSystem::new()).await?;
    let mut rng = fastrand::Rng::with_seed(1);
    let data: Bytes = (0..1024).map(|_| rng.u8(..)).collect();
    let sent = data.clone();
    let reply: ByteStream = m
        .call("S.echo", &())
        .body(move || {
            // Three chunks, to cross chunk boundaries.
            let parts = [sent.slice(..100), sent.slice(100..600), sent.slice(600..)];
            ByteStream::from_stream(futures::stream::iter(parts.map(Ok)))
        })
        .await?;
    assert_eq!(reply.read_to_end(1 << 20).await?, data);
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_stream_ended_by_an_error_returns_it_to_the_reader() -> Result<()> {
    let (b, m) = cluster(TestSystem::new()).await?;
    let mut stream: ByteStream = m.call("S.fail_after", &1000u64).await?;
    let mut got = 0;
    let err = loop {
        match stream.next_chunk().await {
            Some(Ok(chunk)) => got += chunk.len(),
            Some(Err(e)) => break e,
            None => return Err(Error::other("stream ended without its error")),
        }
    };
    assert_eq!(got, 1000);
    assert_eq!(err.kind(), Kind::Remote, "{err}");
    let cause = err.cause().map(|c| (c.kind(), c.message().to_string()));
    assert_eq!(
        cause,
        Some((Kind::Precondition, "broke after 1000 bytes".to_string()))
    );
    assert!(
        stream.next_chunk().await.is_none(),
        "nothing after the error"
    );
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_argument_is_answered_with_its_sha256() -> Result<()> {
    use sha2::Digest;
    let (b, m) = cluster(TestSystem::new()).await?;
    let data = pattern(0, 5 << 20);
    let expected = format!("{:x}", sha2::Sha256::digest(&data));
    let sent = data.clone();
    let digest: String = m
        .call("S.sha256", &())
        .body(move || ByteStream::from_bytes(sent.clone()))
        .await?;
    assert_eq!(digest, expected);
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_of_32_mib_has_exact_length_and_content() -> Result<()> {
    let (b, m) = cluster(TestSystem::new()).await?;
    let n = 32u64 << 20;
    let mut stream: ByteStream = m.call("S.generate", &n).await?;
    let mut offset = 0u64;
    while let Some(chunk) = stream.next_chunk().await {
        let chunk = chunk?;
        assert_eq!(chunk, pattern(offset, chunk.len()), "at offset {offset}");
        offset += chunk.len() as u64;
    }
    assert_eq!(offset, n);
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_streams_end_at_once() -> Result<()> {
    let (b, m) = cluster(TestSystem::new()).await?;
    let mut empty: ByteStream = m.call("S.generate", &0u64).await?;
    let first = tokio::time::timeout(Duration::from_secs(2), empty.next_chunk())
        .await
        .map_err(|_| Error::other("empty reply stream did not end"))?;
    assert!(first.is_none());
    let n: u64 = m.call("S.count", &()).body(ByteStream::empty).await?;
    assert_eq!(n, 0);
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_reader_stops_the_producer() -> Result<()> {
    let (b, m) = cluster(TestSystem::new()).await?;
    let mut stream: ByteStream = m.call("S.generate", &(64u64 << 30)).await?;
    for _ in 0..3 {
        stream
            .next_chunk()
            .await
            .ok_or_else(|| Error::other("ended"))??;
    }
    assert!(!PRODUCER_CANCELED.load(Ordering::SeqCst));
    drop(stream);
    assert!(
        eventually(Duration::from_secs(5), || PRODUCER_CANCELED
            .load(Ordering::SeqCst))
        .await,
        "the producer never saw its reader go away"
    );
    // The machine serves on.
    let n: u64 = m
        .call("S.count", &())
        .body(|| ByteStream::from_bytes(vec![1u8; 10]))
        .await?;
    assert_eq!(n, 10);
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_stream_ends_with_its_calls_cancellation() -> Result<()> {
    let (b, m) = cluster(TestSystem::new()).await?;
    let cancel = CancellationToken::new();
    let mut stream: ByteStream = m.call("S.endless", &()).cancel_on(&cancel).await?;
    for _ in 0..3 {
        stream
            .next_chunk()
            .await
            .ok_or_else(|| Error::other("ended"))??;
    }
    cancel.cancel();
    // The next read says so (the stream would go on for ever otherwise).
    let next = stream
        .next_chunk()
        .await
        .map(|c| c.map(|_| ()).map_err(|e| e.kind()));
    assert_eq!(next, Some(Err(Kind::Canceled)));
    assert!(stream.next_chunk().await.is_none(), "the stream goes on");
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_calls_resend_their_stream_from_the_start() -> Result<()> {
    let faults = Arc::new(ReplyFaults::new(0.5, 0.0, 11));
    let (b, m) = cluster(TestSystem::builder().faults(faults.clone()).build()).await?;
    let made = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for _ in 0..10 {
        let made = made.clone();
        let n: u64 = m
            .retry_call("S.count", &())
            .body(move || {
                made.fetch_add(1, Ordering::SeqCst);
                ByteStream::from_bytes(pattern(0, 100_000))
            })
            .await?;
        assert_eq!(n, 100_000, "a retry sent a partial stream");
    }
    assert!(faults.injected() > 0);
    assert_eq!(
        made.load(Ordering::SeqCst),
        10 + faults.injected(),
        "one stream per try"
    );
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_mismatches_are_invalid() -> Result<()> {
    let (b, m) = cluster(TestSystem::new()).await?;
    let missing = m
        .call::<(), u64>("S.count", &())
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(missing, Some(Kind::Invalid));
    let unwanted = m
        .call::<u64, ByteStream>("S.generate", &1u64)
        .body(ByteStream::empty)
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(unwanted, Some(Kind::Invalid));
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canceled_call_does_not_pass_for_a_complete_stream() -> Result<()> {
    let (b, m) = cluster(TestSystem::new()).await?;
    // One chunk, then the source waits forever; the call gives up first.
    let result: Result<()> = m
        .call("S.consume", &())
        .body(|| {
            let first = futures::stream::iter([Ok(pattern(0, 1024))]);
            ByteStream::from_stream(first.chain(futures::stream::pending()))
        })
        .timeout(Duration::from_millis(300))
        .await;
    assert_eq!(result.err().map(|e| e.kind()), Some(Kind::DeadlineExceeded));
    let ended = eventually(Duration::from_secs(5), || {
        CONSUMED.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    })
    .await;
    assert!(ended, "the reader never saw the stream end");
    let outcome = *CONSUMED.lock().unwrap_or_else(|e| e.into_inner());
    assert_eq!(
        outcome,
        Some(Err(Kind::Net)),
        "a cut stream read as complete"
    );
    b.shutdown().await;
    Ok(())
}

/// The original's TestReaderFuncArgError: an argument stream whose source fails ends the call
/// with the source's error and kind, and a retrying call does not loop on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_argument_streams_source_error_reaches_the_caller_with_its_kind() -> Result<()> {
    let (b, m) = cluster(TestSystem::new()).await?;
    let made = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let result: Result<u64> = m
        .call("S.count", &())
        .body({
            let made = made.clone();
            move || {
                made.fetch_add(1, Ordering::SeqCst);
                let chunks = [
                    Ok(pattern(0, 4096)),
                    Err(Error::fatal(Kind::Precondition, "the source file vanished")),
                ];
                ByteStream::from_stream(futures::stream::iter(chunks))
            }
        })
        .retry()
        .timeout(Duration::from_secs(10))
        .await;
    let err = result
        .err()
        .ok_or_else(|| Error::other("a broken argument stream was counted"))?;
    assert_eq!(err.kind(), Kind::Precondition, "{err}");
    assert!(err.to_string().contains("vanished"), "{err}");
    assert_eq!(
        made.load(Ordering::SeqCst),
        1,
        "a fatal source error was retried"
    );
    b.shutdown().await;
    Ok(())
}
