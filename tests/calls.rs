//! Calls: round trips, errors across the wire, deadlines, cancellation, bad input, load.

mod common;

use std::time::Duration;

use bigmachine::testsystem::TestSystem;
use bigmachine::{
    service, Archived, Blob, ByteStream, Context, Kind, Result, Services, Severity, State, B,
};
use common::{
    echo_cluster, handler_dropped, handler_started, init_tracing, reply_fate, EchoClient,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_round_trip() -> Result<()> {
    init_tracing();
    let (b, machines) = echo_cluster(TestSystem::new(), 1).await?;
    let reply: String = machines[0].call("Echo.echo", &"world".to_string()).await?;
    assert_eq!(reply, "hello, world");
    let typed = EchoClient::new(&machines[0], "Echo")
        .echo(&"typed".into())
        .await?;
    assert_eq!(typed, "hello, typed");
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_error_comes_back_nested_under_remote() -> Result<()> {
    let (b, machines) = echo_cluster(TestSystem::new(), 1).await?;
    let err = EchoClient::new(&machines[0], "Echo")
        .fail(&"no such widget".into())
        .await
        .err()
        .ok_or_else(|| bigmachine::Error::other("fail succeeded"))?;
    assert_eq!(err.kind(), Kind::Remote);
    let cause = err
        .cause()
        .map(|c| (c.kind(), c.message().to_string(), c.severity()));
    assert_eq!(
        cause,
        Some((
            Kind::Precondition,
            "no such widget".to_string(),
            Severity::Fatal
        ))
    );
    assert!(
        err.is_fatal(),
        "Remote inherits the method error's severity"
    );
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unit_reply() -> Result<()> {
    let (b, machines) = echo_cluster(TestSystem::new(), 1).await?;
    let (): () = machines[0].call("Echo.unit", &()).await?;
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_on_a_hanging_method_cancels_the_handler() -> Result<()> {
    let (b, machines) = echo_cluster(TestSystem::new(), 1).await?;
    let started = Instant::now();
    let result: Result<()> = machines[0]
        .call("Echo.hang", &1001u64)
        .timeout(Duration::from_secs(2))
        .await;
    let elapsed = started.elapsed();
    assert_eq!(result.err().map(|e| e.kind()), Some(Kind::DeadlineExceeded));
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(4),
        "returned after {elapsed:?}"
    );
    assert!(
        handler_dropped(1001, Duration::from_secs(2)).await,
        "the server-side handler was not dropped"
    );
    // The machine still serves.
    let (): () = machines[0].call("Echo.unit", &()).await?;
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canceled_caller_gets_canceled_and_handler_is_dropped() -> Result<()> {
    let (b, machines) = echo_cluster(TestSystem::new(), 1).await?;
    let token = CancellationToken::new();
    let canceler = token.clone();
    let started = tokio::spawn(async move {
        // Once the call runs on the machine (or after 5 s, failing the test below).
        let started = handler_started(1002, Duration::from_secs(5)).await;
        canceler.cancel();
        started
    });
    let result: Result<()> = machines[0]
        .call("Echo.hang", &1002u64)
        .cancel_on(&token)
        .await;
    assert_eq!(result.err().map(|e| e.kind()), Some(Kind::Canceled));
    assert!(
        started.await.unwrap_or(false),
        "the call never reached its handler"
    );
    assert!(handler_dropped(1002, Duration::from_secs(2)).await);
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_call_future_drops_the_handler() -> Result<()> {
    let (b, machines) = echo_cluster(TestSystem::new(), 1).await?;
    let call = machines[0].call::<u64, ()>("Echo.hang", &1003u64);
    // Drop the call once it runs on the machine.
    tokio::select! {
        result = call => panic!("hang returned {result:?}"),
        started = handler_started(1003, Duration::from_secs(5)) => assert!(started),
    }
    assert!(handler_dropped(1003, Duration::from_secs(2)).await);
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_learns_whether_its_reply_was_delivered() -> Result<()> {
    let (b, machines) = echo_cluster(TestSystem::new(), 1).await?;
    let echo = EchoClient::new(&machines[0], "Echo");
    echo.deliver(&(4001, false)).await?;
    assert_eq!(reply_fate(4001, Duration::from_secs(5)).await, Some(true));
    // A caller that goes away before the reply: the method learns it was not delivered.
    let call = echo.deliver(&(4002, true));
    tokio::select! {
        result = call => panic!("deliver returned {result:?}"),
        started = handler_started(4002, Duration::from_secs(5)) => assert!(started),
    }
    assert_eq!(reply_fate(4002, Duration::from_secs(5)).await, Some(false));
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_argument_type_is_a_fatal_invalid_error() -> Result<()> {
    let (b, machines) = echo_cluster(TestSystem::new(), 1).await?;
    // echo takes a String; send a u64.
    let err = machines[0]
        .call::<u64, String>("Echo.echo", &7)
        .await
        .err()
        .ok_or_else(|| bigmachine::Error::other("call succeeded"))?;
    assert_eq!(
        (err.kind(), err.severity()),
        (Kind::Invalid, Severity::Fatal),
        "{err}"
    );
    // Right argument, wrong expected reply.
    let err = machines[0]
        .call::<String, u64>("Echo.echo", &"x".to_string())
        .await
        .err()
        .map(|e| (e.kind(), e.severity()));
    assert_eq!(err, Some((Kind::Invalid, Severity::Fatal)));
    let reply: String = machines[0]
        .call("Echo.echo", &"still up".to_string())
        .await?;
    assert_eq!(reply, "hello, still up");
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_service_or_method_is_not_supported() -> Result<()> {
    let (b, machines) = echo_cluster(TestSystem::new(), 1).await?;
    for method in ["Nope.echo", "Echo.nope"] {
        let err = machines[0]
            .call::<(), ()>(method, &())
            .await
            .err()
            .map(|e| e.kind());
        assert_eq!(err, Some(Kind::NotSupported), "{method}");
    }
    let err = machines[0]
        .call::<(), ()>("nodot", &())
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(Kind::Invalid));
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_in_a_method_is_a_fatal_remote_error_and_the_machine_lives_on() -> Result<()> {
    let (b, machines) = echo_cluster(TestSystem::new(), 1).await?;
    let err = machines[0]
        .call::<String, ()>("Echo.panic", &"kaboom".to_string())
        .await
        .err()
        .ok_or_else(|| bigmachine::Error::other("panic returned Ok"))?;
    assert_eq!(err.kind(), Kind::Remote);
    assert!(err.is_fatal());
    assert!(err.to_string().contains("kaboom"), "{err}");
    let reply: String = machines[0].call("Echo.echo", &"after".to_string()).await?;
    assert_eq!(reply, "hello, after");
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_calls_all_complete() -> Result<()> {
    let (b, machines) = echo_cluster(TestSystem::new(), 2).await?;
    let texts: Vec<String> = (0..10_000).map(|i| i.to_string()).collect();
    let calls = texts.iter().enumerate().map(|(i, text)| {
        let m = &machines[i % machines.len()];
        async move {
            let reply: String = m.call("Echo.echo", text).await?;
            Ok::<_, bigmachine::Error>(reply == format!("hello, {text}"))
        }
    });
    let results = tokio::time::timeout(Duration::from_secs(120), futures::future::join_all(calls))
        .await
        .map_err(|_| bigmachine::Error::other("10,000 calls did not finish in 120 s"))?;
    let ok = results.into_iter().collect::<Result<Vec<bool>>>()?;
    assert_eq!(ok.len(), 10_000);
    assert!(
        ok.iter().all(|&same| same),
        "a reply did not match its call"
    );
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argument_over_the_limit_is_refused_clearly() -> Result<()> {
    let (b, machines) =
        echo_cluster(TestSystem::builder().max_payload(64 << 10).build(), 1).await?;
    let small: u64 = machines[0].call("Echo.len", &vec![1u8; 1000]).await?;
    assert_eq!(small, 1000);
    let err = machines[0]
        .call::<Vec<u8>, u64>("Echo.len", &vec![1u8; 100 << 10])
        .await
        .err()
        .ok_or_else(|| bigmachine::Error::other("oversized argument accepted"))?;
    assert_eq!(err.kind(), Kind::Invalid, "{err}");
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_call_each_other_by_address() -> Result<()> {
    use bigmachine::{Services, State, B};
    let b = B::new(TestSystem::new())?;
    let services = Services::new()
        .with(
            "Echo",
            common::Echo {
                greeting: "hi ".into(),
            },
        )
        .with("Relay", common::Relay::new());
    let machines = b.start(2, services).await?;
    for m in &machines {
        assert_eq!(m.wait(State::Running).await, State::Running);
    }
    let arg = (machines[1].addr().to_string(), "there".to_string());
    let reply: String = machines[0].call("Relay.relay", &arg).await?;
    assert_eq!(reply, "hi there");
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_over_the_callers_limit_is_refused_clearly() -> Result<()> {
    use bigmachine::{Services, State, B};
    let b = B::builder(TestSystem::new())
        .max_payload(64 << 10)
        .driver()?;
    let machines = b
        .start(
            1,
            Services::new().with(
                "Echo",
                common::Echo {
                    greeting: String::new(),
                },
            ),
        )
        .await?;
    let m = &machines[0];
    assert_eq!(m.wait(State::Running).await, State::Running);
    let small: String = m.call("Echo.echo", &"x".repeat(1000)).await?;
    assert_eq!(small.len(), 1000);
    let err = m
        .call::<String, String>("Echo.echo", &"x".repeat(100 << 10))
        .await
        .err()
        .ok_or_else(|| bigmachine::Error::other("oversized reply accepted"))?;
    assert_eq!(err.kind(), Kind::Invalid, "{err}");
    assert!(err.to_string().contains("reply of"), "{err}");
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
    let after: String = m.call("Echo.echo", &"y".to_string()).await?;
    assert_eq!(after, "y", "the machine serves on");
    b.shutdown().await;
    Ok(())
}

/// A service interface declared as a trait.
#[service]
trait Greeter {
    /// Greets `name`.
    async fn greet(&self, ctx: &Context, name: String) -> Result<String>;

    /// The length of the byte stream sent with the call.
    async fn count(&self, ctx: &Context, arg: (), body: ByteStream) -> Result<u64>;
}

/// An implementation, registered so that the driver can install it on machines.
#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct English {
    greeting: String,
}

#[service]
impl Greeter for English {
    async fn greet(&self, _ctx: &Context, name: String) -> Result<String> {
        Ok(format!("{}, {name}", self.greeting))
    }

    async fn count(&self, _ctx: &Context, _arg: (), body: ByteStream) -> Result<u64> {
        Ok(body.read_to_end(1 << 20).await?.len() as u64)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trait_services_are_installed_and_called_through_their_client() -> Result<()> {
    let b = B::new(TestSystem::new())?;
    let english = English {
        greeting: "Hello".into(),
    };
    let machines = b.start(1, Services::new().with("Greeter", english)).await?;
    assert_eq!(machines[0].wait(State::Running).await, State::Running);
    let greeter = GreeterClient::new(&machines[0], "Greeter");
    assert_eq!(greeter.greet(&"Ada".into()).await?, "Hello, Ada");
    let counted = greeter
        .count(&())
        .body(|| ByteStream::from(vec![7u8; 1000]))
        .await?;
    assert_eq!(counted, 1000);
    // By name, as any service.
    let by_name: String = machines[0]
        .call("Greeter.greet", &"Bob".to_string())
        .await?;
    assert_eq!(by_name, "Hello, Bob");
    b.shutdown().await;
    Ok(())
}

/// Methods taking a byte vector in each of its forms; each answers the length and a checksum
/// of what it got.
#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Sums;

fn checksum(bytes: &[u8]) -> (u64, u64) {
    let sum = bytes.iter().enumerate().fold(0u64, |h, (i, &b)| {
        h.wrapping_mul(31).wrapping_add(u64::from(b) ^ i as u64)
    });
    (bytes.len() as u64, sum)
}

#[service]
impl Sums {
    async fn owned(&self, _ctx: &Context, data: Vec<u8>) -> Result<(u64, u64)> {
        Ok(checksum(&data))
    }

    async fn in_place(&self, _ctx: &Context, data: Archived<Vec<u8>>) -> Result<(u64, u64)> {
        Ok(checksum(data.as_slice()))
    }

    async fn blob(&self, _ctx: &Context, data: Blob) -> Result<(u64, u64)> {
        Ok(checksum(&data))
    }

    /// Read in place: its typed client takes the `Vec<String>` the archive is of.
    async fn words(&self, _ctx: &Context, words: Archived<Vec<String>>) -> Result<Vec<u64>> {
        Ok(words.iter().map(|w| w.len() as u64).collect())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_argument_arrives_whole_in_every_form_a_method_takes() -> Result<()> {
    let b = B::new(TestSystem::new())?;
    let machines = b.start(1, Services::new().with("Sums", Sums)).await?;
    let m = &machines[0];
    assert_eq!(m.wait(State::Running).await, State::Running);
    // Pseudo-random bytes; blobs are slices at an odd offset, so nothing lines up by luck.
    let mut x = 0x9e37_79b9_u32;
    let source: bytes::Bytes = (0..(3 << 20) + 64)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into();
    // An archive is the blob rounded up to 4 bytes, then 8: around each bound on an argument's
    // archive (16 KiB: copied into the request's head; 64 KiB: the largest on a shared stream;
    // 256 KiB: the largest sent without the machine's grant), the largest blob within it and
    // the next sizes past it; empty; several MiB.
    let mut sizes = vec![0, 1, 13, 3 << 20];
    for bound in [16usize << 10, 64 << 10, 256 << 10] {
        sizes.extend([bound - 9, bound - 8, bound - 7, bound - 4]);
    }
    let client = SumsClient::new(m, "Sums");
    for n in sizes {
        let blob = Blob::from(source.slice(7..7 + n));
        let want = checksum(&blob);
        for method in ["Sums.owned", "Sums.in_place", "Sums.blob"] {
            let got: (u64, u64) = m.call(method, &blob).await?;
            assert_eq!(got, want, "{method} of a {n}-byte blob");
        }
        // The typed client sends a blob, or a vector of the same bytes (the same archive), to
        // each form.
        let vec = blob.to_vec();
        assert_eq!(
            client.owned(&blob).await?,
            want,
            "typed owned, {n}-byte blob"
        );
        assert_eq!(
            client.in_place(&blob).await?,
            want,
            "typed in place, {n}-byte blob"
        );
        assert_eq!(client.blob(&blob).await?, want, "typed blob, {n}-byte blob");
        assert_eq!(
            client.owned(&vec).await?,
            want,
            "typed owned, {n}-byte vector"
        );
        assert_eq!(
            client.in_place(&vec).await?,
            want,
            "typed in place, {n}-byte vector"
        );
        assert_eq!(
            client.blob(&vec).await?,
            want,
            "typed blob, {n}-byte vector"
        );
        let got: (u64, u64) = m.call("Sums.blob", &vec).await?;
        assert_eq!(got, want, "a {n}-byte vector to a method taking a blob");
    }
    let words = vec!["in".to_string(), "place".to_string()];
    assert_eq!(client.words(&words).await?, [2, 5]);
    b.shutdown().await;
    Ok(())
}
