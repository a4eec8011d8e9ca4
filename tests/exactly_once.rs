//! Exactly-once calls: a method runs once per logical call, whatever happens to its replies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bigmachine::testsystem::{ReplyFaults, TestSystem};
use bigmachine::{
    service, ByteStream, Context, Error, Kind, Machine, Result, RetryPolicy, Services, State, B,
};
use tokio_util::sync::CancellationToken;

/// Counts its calls, per key, in this process (test machines run in it).
#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Counter;

fn counts() -> &'static Mutex<HashMap<String, u64>> {
    static COUNTS: OnceLock<Mutex<HashMap<String, u64>>> = OnceLock::new();
    COUNTS.get_or_init(Default::default)
}

fn count(key: &str) -> u64 {
    let counts = counts().lock().unwrap_or_else(|e| e.into_inner());
    counts.get(key).copied().unwrap_or(0)
}

fn bump(key: &str) -> u64 {
    let mut counts = counts().lock().unwrap_or_else(|e| e.into_inner());
    let n = counts.entry(key.to_string()).or_default();
    *n += 1;
    *n
}

#[service]
impl Counter {
    /// Adds one to `key`'s count; returns the new count.
    async fn add(&self, _ctx: &Context, key: String) -> Result<u64> {
        Ok(bump(&key))
    }

    /// Adds one to `key`'s count; replies with 128 KiB (sent from the vector's own buffer)
    /// that say the new count.
    async fn add_page(&self, _ctx: &Context, key: String) -> Result<Vec<u8>> {
        let n = bump(&key);
        let mut page = vec![(n % 251) as u8; 128 << 10];
        page[..8].copy_from_slice(&n.to_le_bytes());
        Ok(page)
    }

    /// Adds one to `key`'s count after 300 ms.
    async fn add_slowly(&self, _ctx: &Context, key: String) -> Result<u64> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(bump(&key))
    }

    /// Fails, counting the failure.
    async fn fail(&self, _ctx: &Context, key: String) -> Result<u64> {
        let n = bump(&key);
        Err(Error::new(Kind::Invalid, format!("failure number {n}")))
    }

    /// Takes a stream (to check that exactly-once calls refuse to send one).
    async fn sink(&self, _ctx: &Context, _arg: (), body: ByteStream) -> Result<u64> {
        Ok(body.read_to_end(1 << 20).await?.len() as u64)
    }
}

async fn counter_machine(system: TestSystem) -> Result<(B, Machine)> {
    let b = B::new(system)?;
    let mut machines = b.start(1, Services::new().with("Counter", Counter)).await?;
    let m = machines
        .pop()
        .ok_or_else(|| Error::other("no machine started"))?;
    let state = tokio::time::timeout(Duration::from_secs(10), m.wait(State::Running))
        .await
        .map_err(|_| Error::new(Kind::DeadlineExceeded, "machine did not boot in 10 s"))?;
    if state != State::Running {
        return Err(m.err().unwrap_or_else(|| Error::other("machine stopped")));
    }
    Ok((b, m))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_under_reply_drops() -> Result<()> {
    // A third of the replies dropped, a fifth cut in half: each one a retry of a call whose
    // method already ran.
    let faults = Arc::new(ReplyFaults::new(0.3, 0.2, 11));
    let (b, m) = counter_machine(TestSystem::builder().faults(faults.clone()).build()).await?;
    let calls = 200u64;
    // Quick retries: the faults are instant, not congestion to back off from.
    let mut quick = RetryPolicy::default();
    quick.initial = Duration::from_millis(1);
    quick.max = Duration::from_millis(10);

    let mut replies = Vec::new();
    for _ in 0..calls {
        let n: u64 = m
            .call("Counter.add", &"once".to_string())
            .retry_with(quick)
            .exactly_once()
            .timeout(Duration::from_secs(30))
            .await?;
        replies.push(n);
    }
    let injected = faults.injected();
    assert!(injected > 50, "only {injected} faults injected");
    assert_eq!(count("once"), calls, "a method ran twice for one call");
    // Every call got the outcome of its own run: the counts 1..=200, in order.
    assert_eq!(replies, (1..=calls).collect::<Vec<_>>());

    // The same calls retried without exactly-once run again for each lost reply.
    for _ in 0..calls {
        let _: u64 = m
            .call("Counter.add", &"plain".to_string())
            .retry_with(quick)
            .timeout(Duration::from_secs(30))
            .await?;
    }
    assert!(
        count("plain") > calls,
        "faults lost no reply of a plain call: the test proves nothing"
    );

    // A long byte vector replies in two buffers (its own and the archive's root): kept,
    // repeated and cut in half like any reply.
    let before = faults.injected();
    for i in 1..=40u64 {
        let page: Vec<u8> = m
            .call("Counter.add_page", &"pages".to_string())
            .retry_with(quick)
            .exactly_once()
            .timeout(Duration::from_secs(30))
            .await?;
        assert_eq!(page.len(), 128 << 10);
        assert_eq!(page[..8], i.to_le_bytes());
        assert!(page[8..].iter().all(|&b| b == (i % 251) as u8));
    }
    assert!(faults.injected() > before, "no fault hit the page calls");
    assert_eq!(count("pages"), 40);

    // A method error is an outcome too: kept, not run again.
    let before = faults.injected();
    let mut errors = Vec::new();
    for _ in 0..50 {
        let e = m
            .call::<_, u64>("Counter.fail", &"fails".to_string())
            .retry_with(quick)
            .exactly_once()
            .timeout(Duration::from_secs(30))
            .await
            .err()
            .ok_or_else(|| Error::new(Kind::Other, "a failing method succeeded"))?;
        assert_eq!(e.kind(), Kind::Remote, "{e}");
        errors.push(e.to_string());
    }
    assert!(faults.injected() > before, "no fault hit the failing calls");
    assert_eq!(count("fails"), 50);
    for (i, e) in errors.iter().enumerate() {
        assert!(e.contains(&format!("failure number {}", i + 1)), "{e}");
    }
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_call_runs_to_its_end_when_its_caller_goes_away() -> Result<()> {
    let (b, m) = counter_machine(TestSystem::new()).await?;
    for (key, once) in [("left-once", true), ("left-plain", false)] {
        let cancel = CancellationToken::new();
        let key = key.to_string();
        let call = m
            .call::<_, u64>("Counter.add_slowly", &key)
            .cancel_on(&cancel);
        let call = if once { call.exactly_once() } else { call };
        let canceled = tokio::spawn({
            let cancel = cancel.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                cancel.cancel();
            }
        });
        let e = call.await.err().map(|e| e.kind());
        assert_eq!(e, Some(Kind::Canceled));
        let _ = canceled.await;
    }
    // Well past the method's 300 ms.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        count("left-once"),
        1,
        "the exactly-once method stopped with its caller"
    );
    assert_eq!(count("left-plain"), 0, "a plain call's method outlived it");
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_calls_cannot_send_a_stream() -> Result<()> {
    let (b, m) = counter_machine(TestSystem::new()).await?;
    let e = m
        .call::<_, u64>("Counter.sink", &())
        .body(|| ByteStream::from_bytes(vec![1u8; 10]))
        .exactly_once()
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(e, Some(Kind::Precondition));
    let n: u64 = m
        .call("Counter.sink", &())
        .body(|| ByteStream::from_bytes(vec![1u8; 10]))
        .await?;
    assert_eq!(n, 10);
    b.shutdown().await;
    Ok(())
}
