//! Machine lifecycle: start failures, init, kill, keepalive, faults and retries, shutdown.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bigmachine::testsystem::{LinkFaults, Relayed, ReplyFaults, TestSystem};
use bigmachine::{
    service, BootTimeouts, Context, Error, KeepaliveConfig, Kind, Payload, Result, ServiceValue,
    Services, Severity, State, B,
};
use common::{echo_cluster, eventually, handler_started, Echo};
use tokio::time::Instant;

/// A service whose `init` fails.
#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct InitFails {
    why: String,
}

#[service]
impl InitFails {
    async fn init(&mut self, _b: &B) -> Result<()> {
        Err(Error::fatal(Kind::Precondition, self.why.clone()))
    }

    async fn noop(&self, _ctx: &Context, _arg: ()) -> Result<()> {
        Ok(())
    }
}

/// A service whose `init` panics.
#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct InitPanics;

#[service]
impl InitPanics {
    async fn init(&mut self, _b: &B) -> Result<()> {
        panic!("init exploded")
    }

    async fn noop(&self, _ctx: &Context, _arg: ()) -> Result<()> {
        Ok(())
    }
}

/// A service whose `init` never ends.
#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct InitHangs;

#[service]
impl InitHangs {
    async fn init(&mut self, _b: &B) -> Result<()> {
        futures::future::pending().await
    }

    async fn noop(&self, _ctx: &Context, _arg: ()) -> Result<()> {
        Ok(())
    }
}

/// A value whose rkyv serialization fails.
#[derive(Debug)]
struct Unserializable;

impl rkyv::Archive for Unserializable {
    type Archived = ();
    type Resolver = ();
    fn resolve(&self, _resolver: (), _out: rkyv::Place<()>) {}
}

impl<S> rkyv::Serialize<S> for Unserializable
where
    S: rkyv::rancor::Fallible + ?Sized,
    S::Error: rkyv::rancor::Source,
{
    fn serialize(&self, _serializer: &mut S) -> std::result::Result<(), S::Error> {
        Err(<S::Error as rkyv::rancor::Source>::new(
            std::io::Error::other("this value refuses to serialize"),
        ))
    }
}

impl<D: rkyv::rancor::Fallible + ?Sized> rkyv::Deserialize<Unserializable, D> for () {
    fn deserialize(&self, _d: &mut D) -> std::result::Result<Unserializable, D::Error> {
        Ok(Unserializable)
    }
}

#[service]
impl Unserializable {
    async fn noop(&self, _ctx: &Context, _arg: ()) -> Result<()> {
        Ok(())
    }
}

/// A service value whose type was never registered (no `#[service]`).
#[derive(Debug)]
struct Unregistered;

impl ServiceValue for Unregistered {
    const TYPE_NAME: &'static str = "lifecycle::Unregistered";
    fn encode_value(&self) -> Result<Payload> {
        Ok(Payload::new())
    }
}

fn fast_keepalive() -> KeepaliveConfig {
    let mut k = KeepaliveConfig::default();
    k.period = Duration::from_millis(100);
    k.timeout = Duration::from_millis(1500);
    k.rpc_timeout = Duration::from_millis(500);
    k
}

async fn boot_outcome(b: &B, services: Services) -> Result<bigmachine::Machine> {
    let machines = b.start(1, services).await?;
    let m = machines
        .into_iter()
        .next()
        .ok_or_else(|| Error::other("no machine"))?;
    tokio::time::timeout(Duration::from_secs(5), m.wait(State::Running))
        .await
        .map_err(|_| Error::other("boot neither finished nor failed in 5 s"))?;
    Ok(m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_of_zero_machines_is_a_precondition_error() -> Result<()> {
    let system = TestSystem::new();
    let b = B::new(system.clone())?;
    let err = b
        .start(
            0,
            Services::new().with(
                "Echo",
                Echo {
                    greeting: "hi ".into(),
                },
            ),
        )
        .await
        .err()
        .ok_or_else(|| Error::other("start(0) succeeded with an empty cluster"))?;
    assert_eq!(err.kind(), Kind::Precondition, "{err}");
    assert_eq!(system.live(), 0);
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_or_unserializable_services_fail_start_fast() -> Result<()> {
    let b = B::new(TestSystem::new())?;
    for services in [
        Services::new().with("U", Unregistered),
        Services::new().with("U", Unserializable),
    ] {
        let started = Instant::now();
        let err = b
            .start(2, services)
            .await
            .err()
            .ok_or_else(|| Error::other("start succeeded"))?;
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(err.severity(), Severity::Fatal, "{err}");
    }
    assert!(b.machines().is_empty(), "no machine was started");
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_refuses_an_unregistered_type_sent_over_the_wire() -> Result<()> {
    use bigmachine_core::__internal::{ServiceSpec, SupervisorClient, SUPERVISOR};
    let (b, machines) = echo_cluster(TestSystem::new(), 1).await?;
    let spec = ServiceSpec {
        name: "Ghost".into(),
        type_name: "nowhere::Ghost".into(),
        value: vec![],
    };
    let err = SupervisorClient::new(&machines[0], SUPERVISOR)
        .register(&spec)
        .await
        .err()
        .ok_or_else(|| Error::other("registered a ghost"))?;
    assert!(err.is(Kind::NotSupported) && err.is_fatal(), "{err}");
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_init_fails_fast() -> Result<()> {
    let b = B::new(TestSystem::new())?;
    let started = Instant::now();
    let m = boot_outcome(&b, Services::new().with("P", InitPanics)).await?;
    assert_eq!(m.state(), State::Stopped);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let err = m.err().ok_or_else(|| Error::other("no error"))?;
    assert!(err.is_fatal(), "{err}");
    assert!(err.to_string().contains("init exploded"), "{err}");
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_machine_is_killed_through_a_relay() -> Result<()> {
    let system = TestSystem::new();
    let b = B::new(Relayed::new(system.clone(), LinkFaults::default(), 1))?;
    let machines = b
        .start(
            1,
            Services::new().with(
                "E",
                Echo {
                    greeting: "hi ".into(),
                },
            ),
        )
        .await?;
    let m = machines.first().ok_or_else(|| Error::other("no machine"))?;
    assert_eq!(m.wait(State::Running).await, State::Running);
    assert!(system.kill(m), "the machine behind the relay was not found");
    let stopped = tokio::time::timeout(Duration::from_secs(5), m.wait(State::Stopped)).await;
    assert!(
        stopped.is_ok(),
        "the killed machine is still {:?}",
        m.state()
    );
    assert_eq!(system.live(), 0);
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_init_stops_its_machine_at_the_install_bound() -> Result<()> {
    let mut timeouts = BootTimeouts::default();
    timeouts.install = Duration::from_millis(500);
    let b = B::builder(TestSystem::new())
        .boot_timeouts(timeouts)
        .driver()?;
    let m = boot_outcome(&b, Services::new().with("H", InitHangs)).await?;
    assert_eq!(
        m.state(),
        State::Stopped,
        "a hung init left the machine Starting"
    );
    let err = m.err().ok_or_else(|| Error::other("no error"))?;
    assert!(err.is(Kind::DeadlineExceeded), "{err}");
    assert!(err.to_string().contains("installing service H"), "{err}");
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_error_leaves_the_machine_stopped_with_it() -> Result<()> {
    let b = B::new(TestSystem::new())?;
    let why = "the widget store is empty".to_string();
    let m = boot_outcome(
        &b,
        Services::new().with("F", InitFails { why: why.clone() }),
    )
    .await?;
    assert_eq!(m.state(), State::Stopped);
    let err = m.err().ok_or_else(|| Error::other("no error"))?;
    let init_error = err.chain().find(|e| e.kind() == Kind::Precondition);
    assert_eq!(init_error.map(|e| e.message()), Some(why.as_str()), "{err}");
    let call = m
        .call::<(), ()>("F.noop", &())
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(call, Some(Kind::Unavailable));
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_machine_is_stopped_and_fails_calls() -> Result<()> {
    let system = TestSystem::new();
    let (b, machines) = echo_cluster(system.clone(), 2).await?;
    let (victim, survivor) = (&machines[0], &machines[1]);
    // A call in flight when the machine dies fails at once.
    let pending = victim.call::<u64, ()>("Echo.hang", &2001u64);
    let killer = async {
        // Once the call runs on the machine.
        assert!(handler_started(2001, Duration::from_secs(3)).await);
        assert!(system.kill(victim));
    };
    let (pending, ()) = tokio::time::timeout(Duration::from_secs(3), async {
        tokio::join!(pending, killer)
    })
    .await
    .map_err(|_| Error::other("pending call did not fail within 3 s of the kill"))?;
    let kind = pending.err().map(|e| e.kind());
    assert!(
        matches!(kind, Some(Kind::Net | Kind::Unavailable)),
        "{kind:?}"
    );

    let next = victim
        .call::<String, String>("Echo.echo", &"x".into())
        .await;
    let kind = next.err().map(|e| e.kind());
    assert!(
        matches!(kind, Some(Kind::Net | Kind::Unavailable)),
        "{kind:?}"
    );
    assert_eq!(victim.wait(State::Stopped).await, State::Stopped);
    assert!(victim
        .err()
        .is_some_and(|e| e.to_string().contains("killed")));
    // A dead machine is not retried: the error is final at the first try.
    let retried = victim
        .retry_call::<String, String>("Echo.echo", &"x".into())
        .await
        .err()
        .ok_or_else(|| Error::other("a call to a stopped machine succeeded"))?;
    assert_eq!(retried.kind(), Kind::Unavailable);
    assert!(retried.is_fatal(), "{retried:?}");

    let reply: String = survivor.call("Echo.echo", &"y".to_string()).await?;
    assert_eq!(reply, "hello, y");
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_call_succeeds_through_injected_faults() -> Result<()> {
    let faults = Arc::new(ReplyFaults::new(0.3, 0.3, 7));
    let (b, machines) =
        echo_cluster(TestSystem::builder().faults(faults.clone()).build(), 1).await?;
    let m = &machines[0];
    // Plain calls see the faults as temporary network errors.
    let mut failures = 0;
    for i in 0..40u32 {
        match m.call::<String, String>("Echo.echo", &i.to_string()).await {
            Ok(reply) => assert_eq!(reply, format!("hello, {i}")),
            Err(e) => {
                assert_eq!(
                    (e.kind(), e.severity()),
                    (Kind::Net, Severity::Temporary),
                    "{e}"
                );
                failures += 1;
            }
        }
    }
    assert!(failures > 0, "no fault was injected in 40 calls");
    let injected_before = faults.injected();
    for i in 0..40u32 {
        let reply: String = m.retry_call("Echo.echo", &i.to_string()).await?;
        assert_eq!(reply, format!("hello, {i}"));
    }
    assert!(
        faults.injected() > injected_before,
        "retries were never exercised"
    );
    assert_eq!(
        m.state(),
        State::Running,
        "faults on user services leave the machine up"
    );
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_exits_when_keepalives_stop() -> Result<()> {
    let system = TestSystem::builder().keepalive(fast_keepalive()).build();
    let (b, machines) = echo_cluster(system.clone(), 1).await?;
    assert!(
        eventually(Duration::from_secs(2), || !machines[0]
            .keepalive_reply_times()
            .is_empty())
        .await,
        "no keepalive answered"
    );
    assert!(machines[0].maxprocs() > 0);
    assert_eq!(system.live(), 1);
    // The driver stops keeping it alive (as if the driver died).
    machines[0].cancel();
    assert_eq!(machines[0].err().map(|e| e.kind()), Some(Kind::Canceled));
    assert!(
        eventually(Duration::from_secs(4), || system.live() == 0).await,
        "the machine outlived its keepalive timeout"
    );
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialed_machine_stops_when_it_stops_answering() -> Result<()> {
    let system = TestSystem::builder().keepalive(fast_keepalive()).build();
    let (b, machines) = echo_cluster(system.clone(), 1).await?;
    // The driver dials its own machine by address: a second, unowned handle with its own pool.
    let dialer = b.clone();
    let dialed = dialer.dial(machines[0].addr());
    assert!(!dialed.owned());
    assert_eq!(dialed.wait(State::Running).await, State::Running);
    let reply: String = dialed.call("Echo.echo", &"dialed".to_string()).await?;
    assert_eq!(reply, "hello, dialed");
    assert!(
        dialer.dial(machines[0].addr()).addr() == dialed.addr(),
        "same address, same machine"
    );
    system.kill(&machines[0]);
    let state = tokio::time::timeout(Duration::from_secs(5), dialed.wait(State::Stopped))
        .await
        .map_err(|_| Error::other("dialed machine not stopped within 5 s"))?;
    assert_eq!(state, State::Stopped);
    assert_eq!(dialed.err().map(|e| e.kind()), Some(Kind::Unavailable));
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_every_machine() -> Result<()> {
    let system = TestSystem::new();
    let (b, machines) = echo_cluster(system.clone(), 3).await?;
    assert_eq!(system.live(), 3);
    b.shutdown().await;
    for m in &machines {
        assert_eq!(m.state(), State::Stopped);
    }
    assert!(eventually(Duration::from_secs(2), || system.live() == 0).await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_move_forward_from_starting_to_running() -> Result<()> {
    let b = B::new(TestSystem::new())?;
    let machines = b
        .start(
            1,
            Services::new().with(
                "Echo",
                Echo {
                    greeting: String::new(),
                },
            ),
        )
        .await?;
    let m = &machines[0];
    assert!(m.owned());
    assert!(matches!(
        m.state(),
        State::Starting | State::Running | State::Unstarted
    ));
    assert_eq!(m.wait(State::Running).await, State::Running);
    assert_eq!(
        m.wait(State::Starting).await,
        State::Running,
        "wait returns the state reached"
    );
    assert!(m.err().is_none());
    b.shutdown().await;
    assert_eq!(m.state(), State::Stopped);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_status_page_lists_machines() -> Result<()> {
    let (b, machines) = echo_cluster(TestSystem::new(), 2).await?;
    let addr = bigmachine::debug::serve(b.clone(), "127.0.0.1:0".parse().map_err(Error::other)?)?;
    let (json, html, missing) = tokio::task::spawn_blocking(move || {
        Ok::<_, std::io::Error>((
            common::http_get(addr, "/debug/bigmachine/status?format=json")?,
            common::http_get(addr, "/debug/bigmachine/status")?,
            common::http_get(addr, "/nope")?,
        ))
    })
    .await
    .map_err(Error::other)??;
    let status: serde_json::Value = serde_json::from_str(&json.1).map_err(Error::other)?;
    assert_eq!(status["system"], "test");
    let listed = status["machines"].as_array().map(Vec::len);
    assert_eq!(listed, Some(2), "{status}");
    for m in &machines {
        let entry = status["machines"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["addr"] == m.addr().to_string());
        assert_eq!(entry.map(|e| e["state"].clone()), Some("running".into()));
        // What the machine says of itself: its uptime and processors.
        assert!(
            entry.and_then(|e| e["uptime_seconds"].as_f64()).is_some(),
            "{status}"
        );
        assert!(
            entry.and_then(|e| e["processors"].as_f64()).is_some(),
            "{status}"
        );
        assert!(html.1.contains(&m.addr().to_string()));
    }
    assert!(html.1.contains("<table id=\"machines\">"), "{}", html.1);
    assert!(missing.0.contains(" 404"), "{}", missing.0);
    b.shutdown().await;
    Ok(())
}
