//! Security and hostile input: mutual TLS in both directions, garbage on call streams.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bigmachine::testsystem::TestSystem;
use bigmachine::{
    service, Archived, Authority, Context, Credentials, Error, KeepaliveConfig, Kind, Machine,
    Result, Role, Services, State, TransportConfig, B,
};
use bigmachine_core::__internal::io::read_reply;
use bigmachine_core::__internal::wire::{self, RequestHeader, Status};
use bigmachine_core::__internal::{decode, encode, type_tag, KeepaliveReply};
use bigmachine_quic::{Endpoint, SERVER_NAME};
use bigmachine_supervisor::MachineOptions;
use common::{echo_cluster, eventually};
use futures::StreamExt;

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// Credentials whose own certificate comes from `issuer` but which trust `trusted`'s CA.
fn forged(issuer: &Authority, trusted: &Authority) -> Result<Credentials> {
    let mut creds = issuer.issue("impostor")?;
    creds.ca = trusted.certificate().clone();
    Ok(creds)
}

/// A connection to `machine` from an endpoint with a certificate of the cluster, bypassing
/// bigmachine's call path; the endpoint must outlive the connection.
async fn raw_client(
    b: &bigmachine::B,
    machine: &bigmachine::Machine,
) -> Result<(Endpoint, quinn::Connection)> {
    let authority = b.authority().ok_or_else(|| Error::other("no authority"))?;
    let endpoint = Endpoint::bind(
        loopback(),
        &authority.issue("raw client")?,
        TransportConfig::default(),
    )?;
    let conn = endpoint.connect(machine.addr(), SERVER_NAME).await?;
    Ok((endpoint, conn))
}

/// Sends one raw request frame on a fresh stream and reads the reply.
async fn raw_exchange(
    conn: &quinn::Connection,
    frame: &[u8],
) -> Result<(Status, bigmachine::Payload)> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(frame).await?;
    send.finish()?;
    read_reply(&mut recv, 1 << 20).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_with_a_certificate_of_another_ca_is_refused() -> Result<()> {
    let (b, machines) = echo_cluster(TestSystem::new(), 1).await?;
    let cluster_ca = b.authority().ok_or_else(|| Error::other("no authority"))?;
    // The impostor trusts the cluster's CA (so it accepts the server) but its own certificate
    // comes from another CA.
    let impostor = forged(&Authority::new()?, cluster_ca)?;
    refused_then_serving(&impostor, &machines[0]).await?;
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificate_is_refused() -> Result<()> {
    let (b, machines) = echo_cluster(TestSystem::new(), 1).await?;
    let cluster_ca = b.authority().ok_or_else(|| Error::other("no authority"))?;
    // The cluster's own authority, but a certificate that expired yesterday.
    let day = Duration::from_secs(24 * 3600);
    let now = std::time::SystemTime::now();
    let expired = cluster_ca.issue_for("local-9", Role::Machine, now - 2 * day, now - day)?;
    refused_then_serving(&expired, &machines[0]).await?;
    b.shutdown().await;
    Ok(())
}

/// Checks that a client holding `creds` is refused by `machine` at the handshake, promptly and
/// with a fatal network error, and that the machine serves its cluster as before.
async fn refused_then_serving(creds: &Credentials, machine: &Machine) -> Result<()> {
    let endpoint = Endpoint::bind(loopback(), creds, TransportConfig::default())?;
    let attempt = async {
        let conn = endpoint.connect(machine.addr(), SERVER_NAME).await?;
        let frame = ping_frame();
        raw_exchange(&conn, &frame).await
    };
    let outcome = tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .map_err(|_| Error::other("refusal took more than 5 s"))?;
    let err = outcome
        .err()
        .ok_or_else(|| Error::other("the refused client got a reply"))?;
    assert!(err.is(Kind::Net) && err.is_fatal(), "{err}");
    let reply: String = machine.call("Echo.echo", &"ok".to_string()).await?;
    assert_eq!(reply, "hello, ok");
    assert_eq!(machine.state(), State::Running);
    Ok(())
}

/// Tries the Supervisor's methods on peers, and says who called it.
#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Meddler {
    #[rkyv(with = rkyv::with::Skip)]
    b: Option<B>,
}

#[service]
impl Meddler {
    async fn init(&mut self, b: &B) -> Result<()> {
        self.b = Some(b.clone());
        Ok(())
    }

    /// Calls `Supervisor.<method>` on the machine at `addr`; returns the error's kind, or "ok".
    async fn meddle(&self, ctx: &Context, (addr, method): (String, String)) -> Result<String> {
        let b = self.b.as_ref().ok_or_else(|| Error::other("no B"))?;
        let peer = b.dial(addr.parse().map_err(Error::other)?);
        let name = format!("Supervisor.{method}");
        let called = if method == "keepalive" {
            // An hour of life, with the method's own types: were it obeyed, the peer would
            // outlive its driver.
            let call = peer.call::<u64, KeepaliveReply>(&name, &3_600_000);
            call.context(ctx).await.map(drop)
        } else {
            // The other methods with any types: refused before the types are looked at.
            peer.call::<u64, ()>(&name, &0).context(ctx).await
        };
        Ok(called.map_or_else(|e| format!("{:?}", e.kind()), |()| "ok".to_string()))
    }

    /// Who called, as the certificate of the caller states: role and name.
    async fn whoami(&self, ctx: &Context, _arg: ()) -> Result<(String, String)> {
        let caller = ctx.caller().ok_or_else(|| Error::other("no caller"))?;
        Ok((format!("{:?}", caller.role), caller.name.clone()))
    }

    /// `whoami` of the machine at `addr`, called from this machine.
    async fn ask(&self, ctx: &Context, addr: String) -> Result<(String, String)> {
        let b = self.b.as_ref().ok_or_else(|| Error::other("no B"))?;
        let peer = b.dial(addr.parse().map_err(Error::other)?);
        peer.call("M.whoami", &()).context(ctx).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_cannot_control_a_peer() -> Result<()> {
    let mut keepalive = KeepaliveConfig::default();
    keepalive.period = Duration::from_millis(200);
    keepalive.timeout = Duration::from_secs(1);
    keepalive.rpc_timeout = Duration::from_millis(500);
    let system = TestSystem::builder().keepalive(keepalive).build();
    let b = B::new(system.clone())?;
    let machines = b
        .start(2, Services::new().with("M", Meddler { b: None }))
        .await?;
    for m in &machines {
        assert_eq!(m.wait(State::Running).await, State::Running);
    }
    let (meddler, victim) = (&machines[0], &machines[1]);
    let target = victim.addr().to_string();
    for method in [
        "keepalive",
        "shutdown",
        "exec",
        "setbinary",
        "usebinary",
        "fetchbinary",
        "setenv",
        "setargs",
        "register",
        "cpu_profile",
        "heap_profile",
        "last_panic",
    ] {
        let got: String = meddler
            .call("M.meddle", &(target.clone(), method.to_string()))
            .await?;
        assert_eq!(got, "NotAllowed", "a peer's Supervisor.{method}");
    }
    // What peers need stays open (these calls fail on their types, past the check).
    for method in [
        "ping",
        "info",
        "getpid",
        "mem_info",
        "disk_info",
        "load_info",
        "getbinary",
        "expvars",
        "metrics",
    ] {
        let got: String = meddler
            .call("M.meddle", &(target.clone(), method.to_string()))
            .await?;
        assert_ne!(got, "NotAllowed", "a peer's Supervisor.{method}");
    }
    assert_eq!(
        victim.state(),
        State::Running,
        "a refused call stopped the victim"
    );
    // Methods learn who called.
    let by_driver: (String, String) = victim.call("M.whoami", &()).await?;
    assert_eq!(by_driver, ("Driver".to_string(), "driver".to_string()));
    let by_peer: (String, String) = meddler.call("M.ask", &target).await?;
    let meddler_name = meddler.name().unwrap_or_default().to_string();
    assert_eq!(by_peer, ("Machine".to_string(), meddler_name));
    // The driver goes (its keepalives stop): the keepalive the meddler sent did not keep the
    // victim, and both machines exit on their own.
    for m in &machines {
        m.cancel();
    }
    let gone = common::eventually(Duration::from_secs(10), || system.live() == 0).await;
    assert!(gone, "{} machines outlived their driver", system.live());
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_with_a_certificate_of_another_ca_is_refused() -> Result<()> {
    let system = TestSystem::new();
    let (b, _machines) = echo_cluster(system.clone(), 1).await?;
    let cluster_ca = b.authority().ok_or_else(|| Error::other("no authority"))?;
    // An impostor machine that would accept the driver, but whose certificate is not the
    // cluster's.
    let mut options =
        MachineOptions::new(forged(&Authority::new()?, cluster_ca)?, Arc::new(system));
    options.first_keepalive = Duration::from_secs(30);
    let impostor = bigmachine_supervisor::start(options)?;
    let m = b.dial(impostor.addr());
    let state = tokio::time::timeout(Duration::from_secs(5), m.wait(State::Running))
        .await
        .map_err(|_| Error::other("dial neither succeeded nor failed in 5 s"))?;
    assert_eq!(state, State::Stopped);
    let err = m.err().ok_or_else(|| Error::other("no error"))?;
    assert!(err.is(Kind::Net) && err.is_fatal(), "{err}");
    assert!(err.to_string().contains("TLS"), "{err}");
    impostor.exit(Error::other("test over"));
    b.shutdown().await;
    Ok(())
}

fn ping_frame() -> Vec<u8> {
    let method = b"Supervisor.ping";
    let arg = encode(&1u64).unwrap_or_default();
    frame(method, &arg, type_tag::<u64>(), type_tag::<u64>())
}

fn frame(method: &[u8], payload: &[u8], arg_type: u64, reply_type: u64) -> Vec<u8> {
    let mut out = RequestHeader {
        flags: 0,
        method_len: method.len() as u16,
        timeout_us: 0,
        arg_type,
        reply_type,
        payload_len: payload.len() as u64,
        call_id: 1,
    }
    .encode()
    .to_vec();
    out.extend_from_slice(method);
    out.extend_from_slice(payload);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_a_call_stream_gets_an_error_reply() -> Result<()> {
    let (b, machines) = echo_cluster(TestSystem::new(), 1).await?;
    let (_endpoint, conn) = raw_client(&b, &machines[0]).await?;

    // A well-formed ping first: the raw path works.
    let (status, reply) = raw_exchange(&conn, &ping_frame()).await?;
    assert_eq!(status, Status::Ok);
    assert_eq!(decode::<u64>(&reply)?, 1);

    let mut rng = fastrand::Rng::with_seed(42);
    let random: Vec<Vec<u8>> = (0..20)
        .map(|i| (0..[7, 40, 1024][i % 3]).map(|_| rng.u8(..)).collect())
        .collect();
    let string_tag = type_tag::<String>();
    let hostile = [
        // A valid header for Echo.len with the right type tags, but a payload that is no
        // archive of a Vec<u8> (its root points far outside the buffer).
        frame(
            b"Echo.len",
            &[0x7f; 64],
            type_tag::<Vec<u8>>(),
            type_tag::<u64>(),
        ),
        // A header announcing more payload than is sent.
        {
            let mut f = frame(b"Echo.echo", &[0; 8], string_tag, string_tag);
            f.truncate(f.len() - 4);
            f
        },
        // A method name that is not UTF-8.
        frame(&[0xc3, 0x28, b'.', b'x'], &[], 0, 0),
        // A well-formed ping followed by bytes its header does not announce.
        {
            let mut f = ping_frame();
            f.extend_from_slice(b"trailing");
            f
        },
        // The same after an argument of many packets.
        {
            let arg = encode(&vec![1u8; 100 << 10])?;
            let mut f = frame(b"Echo.len", &arg, type_tag::<Vec<u8>>(), type_tag::<u64>());
            f.extend_from_slice(b"trailing");
            f
        },
    ];
    for (i, bytes) in random.iter().chain(hostile.iter()).enumerate() {
        let (status, payload) = raw_exchange(&conn, bytes).await?;
        assert_eq!(status, Status::ServerError, "case {i}");
        let err = wire::decode_error(&payload);
        assert_eq!(err.kind(), Kind::Invalid, "{err}");
    }
    // Still serving.
    let reply: String = machines[0].call("Echo.echo", &"fine".to_string()).await?;
    assert_eq!(reply, "hello, fine");
    b.shutdown().await;
    Ok(())
}

/// Sends a request allowing `timeout_us` (0: no deadline) that announces 1,000 bytes of
/// argument, sends 10 and keeps the stream open; returns the error the machine answers with.
async fn stalled_request(system: TestSystem, timeout_us: u64) -> Result<Error> {
    let (b, machines) = echo_cluster(system, 1).await?;
    let (_endpoint, conn) = raw_client(&b, &machines[0]).await?;
    let method = b"Echo.echo";
    let string_tag = type_tag::<String>();
    let mut head = RequestHeader {
        flags: 0,
        method_len: method.len() as u16,
        timeout_us,
        arg_type: string_tag,
        reply_type: string_tag,
        payload_len: 1000,
        call_id: 7,
    }
    .encode()
    .to_vec();
    head.extend_from_slice(method);
    head.extend_from_slice(&[0u8; 10]);
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&head).await?;
    let reply = tokio::time::timeout(Duration::from_secs(5), read_reply(&mut recv, 1 << 20))
        .await
        .map_err(|_| Error::other("the server still waits for the argument after 5 s"))??;
    assert_eq!(reply.0, Status::ServerError);
    drop(send);
    b.shutdown().await;
    Ok(wire::decode_error(&reply.1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_stalls_is_answered_at_its_deadline() -> Result<()> {
    let err = stalled_request(TestSystem::new(), 300_000).await?;
    assert_eq!(err.kind(), Kind::DeadlineExceeded, "{err}");
    assert!(
        !err.is_temporary(),
        "a call past its deadline is over: {err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_is_cut_by_its_time_bound() -> Result<()> {
    let system = TestSystem::builder()
        .request_timeout(Duration::from_millis(300))
        .build();
    let err = stalled_request(system, 0).await?;
    // The transfer stalled, the call is not over: retrying may succeed.
    assert_eq!(err.kind(), Kind::Unavailable, "{err}");
    assert!(err.is_temporary(), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_payload_is_not_read_for_an_unknown_method() -> Result<()> {
    let (b, machines) = echo_cluster(TestSystem::new(), 1).await?;
    let (_endpoint, conn) = raw_client(&b, &machines[0]).await?;
    // Heads that announce 64 MiB of argument awaiting a grant, of which nothing is sent: an
    // unknown method, an unknown service, a wrong argument type. Each is answered from its
    // head alone: no grant, then the error.
    let string_tag = type_tag::<String>();
    // And one that announces more than the machine takes at all, refused from its header.
    let cases = [
        (
            &b"Echo.nosuch"[..],
            string_tag,
            64 << 20,
            Kind::NotSupported,
        ),
        (
            &b"Nosuch.echo"[..],
            string_tag,
            64 << 20,
            Kind::NotSupported,
        ),
        (
            &b"Echo.echo"[..],
            type_tag::<u64>(),
            64 << 20,
            Kind::Invalid,
        ),
        (&b"Echo.echo"[..], string_tag, 4 << 30, Kind::Invalid),
    ];
    for (method, arg_type, payload_len, kind) in cases {
        let head = RequestHeader {
            flags: wire::FLAG_AWAIT_GRANT,
            method_len: method.len() as u16,
            timeout_us: 0,
            arg_type,
            reply_type: string_tag,
            payload_len,
            call_id: 9,
        };
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&head.encode()).await?;
        send.write_all(method).await?;
        let answer = async {
            let mut grant = [0u8; 1];
            recv.read_exact(&mut grant).await.map_err(Error::other)?;
            assert_eq!(grant[0], wire::NO_GRANT, "{method:?}");
            read_reply(&mut recv, 1 << 20).await
        };
        let reply = tokio::time::timeout(Duration::from_secs(5), answer)
            .await
            .map_err(|_| Error::other("the machine waits for the argument"))??;
        assert_eq!(reply.0, Status::ServerError);
        let err = wire::decode_error(&reply.1);
        assert_eq!(err.kind(), kind, "{err}");
    }
    // A large argument that does not await a grant is refused from its header.
    let mut unasked = RequestHeader {
        flags: 0,
        method_len: 8,
        timeout_us: 0,
        arg_type: type_tag::<Vec<u8>>(),
        reply_type: type_tag::<u64>(),
        payload_len: 64 << 20,
        call_id: 10,
    }
    .encode()
    .to_vec();
    unasked.extend_from_slice(b"Echo.len");
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&unasked).await?;
    let reply = tokio::time::timeout(Duration::from_secs(5), read_reply(&mut recv, 1 << 20))
        .await
        .map_err(|_| Error::other("the machine waits for an unasked argument"))??;
    assert_eq!(reply.0, Status::ServerError);
    let err = wire::decode_error(&reply.1);
    assert!(
        err.is(Kind::Invalid) && err.to_string().contains("grant"),
        "{err}"
    );
    // Through the call path, with the argument sent: the caller gets the machine's refusal, not
    // the error of a write the machine stopped.
    let big = vec![7u8; 64 << 20];
    let err = machines[0]
        .call::<Vec<u8>, u64>("Echo.nosuch", &big)
        .await
        .err()
        .ok_or_else(|| Error::other("an unknown method replied"))?;
    assert_eq!(err.kind(), Kind::NotSupported, "{err}");
    assert_eq!(machines[0].state(), State::Running);
    b.shutdown().await;
    Ok(())
}

/// Holds large arguments until its gate opens; counts the calls whose handler got them. Each
/// test has a gate of its own (`slot`).
#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Holder {
    slot: usize,
}

struct Gate {
    entered: AtomicUsize,
    open: tokio::sync::Semaphore,
}

static GATES: [Gate; 2] = [Gate::new(), Gate::new()];

impl Gate {
    const fn new() -> Self {
        Self {
            entered: AtomicUsize::new(0),
            open: tokio::sync::Semaphore::const_new(0),
        }
    }
}

#[service]
impl Holder {
    async fn hold(&self, _ctx: &Context, bytes: Archived<Vec<u8>>) -> Result<u64> {
        let gate = &GATES[self.slot];
        gate.entered.fetch_add(1, Ordering::SeqCst);
        gate.open.acquire().await.map_err(Error::other)?.forget();
        Ok(bytes.get().len() as u64)
    }

    async fn ping(&self, _ctx: &Context, n: u64) -> Result<u64> {
        Ok(n)
    }
}

/// Which budget a test fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Full {
    Machine,
    Connection,
}

/// Three calls of 400 KiB at once to a machine whose budget (its own, or a connection's, as
/// `full` and `system` set it; 600 KiB) holds one: one gets in; the others wait for room, as
/// do 300 more of 300 KiB (more than a connection has streams), while small calls pass and a
/// large call with a short deadline gives up; once the first lets go, the others get in in
/// turn. The driver has one connection to the machine.
async fn large_arguments_wait_for_room(slot: usize, full: Full, system: TestSystem) -> Result<()> {
    const ARG: usize = 400 << 10;
    const CROWD: usize = 300;
    let mut transport = TransportConfig::default();
    transport.pool_size = 1;
    let b = B::builder(system).transport(transport).driver()?;
    let machines = b
        .start(1, Services::new().with("Holder", Holder { slot }))
        .await?;
    let m = machines[0].clone();
    assert_eq!(m.wait(State::Running).await, State::Running);
    let gate = &GATES[slot];
    let arg = vec![1u8; ARG];
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let (m, arg) = (m.clone(), arg.clone());
            tokio::spawn(async move { m.call::<Vec<u8>, u64>("Holder.hold", &arg).await })
        })
        .collect();
    let entered = || gate.entered.load(Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(10), || entered() >= 1).await,
        "no large call got in"
    );
    let small = vec![2u8; 300 << 10];
    let crowd: Vec<_> = (0..CROWD)
        .map(|_| {
            let (m, small) = (m.clone(), small.clone());
            tokio::spawn(async move { m.call::<Vec<u8>, u64>("Holder.hold", &small).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for n in 0..20u64 {
        let echoed: u64 = m
            .call("Holder.ping", &n)
            .timeout(Duration::from_secs(5))
            .await?;
        assert_eq!(echoed, n);
    }
    let late = m
        .call::<Vec<u8>, u64>("Holder.hold", &arg)
        .timeout(Duration::from_millis(300))
        .await
        .err()
        .ok_or_else(|| Error::other("a large call got room past the budget"))?;
    assert_eq!(late.kind(), Kind::DeadlineExceeded, "{late}");
    // From another connection: with the machine's budget full, the machine itself ends the
    // wait at the request's deadline (a raw request allowing 200 ms, whose caller waits as
    // long as it takes, is refused its grant, with the reason); with only the driver's
    // connection's budget full, the other connection has room of its own.
    let (_endpoint, conn) = raw_client(&b, &m).await?;
    let head = RequestHeader {
        flags: wire::FLAG_AWAIT_GRANT,
        method_len: 11,
        timeout_us: 200_000,
        arg_type: type_tag::<Vec<u8>>(),
        reply_type: type_tag::<u64>(),
        payload_len: ARG as u64,
        call_id: 11,
    };
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&head.encode()).await?;
    send.write_all(b"Holder.hold").await?;
    let mut grant = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(10), recv.read_exact(&mut grant))
        .await
        .map_err(|_| Error::other("the machine kept a request past its deadline"))?
        .map_err(Error::other)?;
    if full == Full::Machine {
        assert_eq!(grant[0], wire::NO_GRANT);
        let (status, payload) = read_reply(&mut recv, 1 << 20).await?;
        assert_eq!(status, Status::ServerError);
        let err = wire::decode_error(&payload);
        assert!(
            err.is(Kind::DeadlineExceeded) && err.to_string().contains("room"),
            "{err}"
        );
    } else {
        assert_eq!(grant[0], wire::GRANT, "another connection found no room");
    }
    drop((send, recv, conn));
    assert_eq!(entered(), 1, "large arguments got in past the budget");
    gate.open.add_permits(3 + CROWD);
    for (call, want) in calls
        .into_iter()
        .map(|c| (c, ARG))
        .chain(crowd.into_iter().map(|c| (c, small.len())))
    {
        let len = tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .map_err(|_| Error::other("a waiting call never got room"))?
            .map_err(Error::other)??;
        assert_eq!(len, want as u64);
    }
    assert_eq!(entered(), 3 + CROWD);
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_arguments_wait_for_room_in_the_machines_budget() -> Result<()> {
    let system = TestSystem::builder()
        .inflight_bytes(600 << 10, 1 << 30)
        .build();
    large_arguments_wait_for_room(0, Full::Machine, system).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_arguments_wait_for_room_in_a_connections_budget() -> Result<()> {
    let system = TestSystem::builder()
        .inflight_bytes(1 << 30, 600 << 10)
        .build();
    large_arguments_wait_for_room(1, Full::Connection, system).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_flood_is_bounded() -> Result<()> {
    // A small bound, so that the flood goes past it: retries past 4 handshakes, refusals
    // past 16.
    let mut transport = TransportConfig::default();
    transport.max_handshakes = 16;
    // A stalled handshake holds its slot this long at most (well within the 5 s a cluster
    // connection is given below).
    transport.connect_timeout = Duration::from_secs(2);
    let system = TestSystem::builder().transport(transport).build();
    let (b, machines) = echo_cluster(system, 1).await?;
    let cluster_ca = b.authority().ok_or_else(|| Error::other("no authority"))?;
    let target = machines[0].addr();
    // 2,000 connection attempts, 400 at a time, by a client the machine must refuse (its
    // certificate is of another CA): each that gets a handshake costs the machine its crypto.
    let impostor = forged(&Authority::new()?, cluster_ca)?;
    let flood = tokio::spawn(async move {
        let endpoint = Endpoint::bind(loopback(), &impostor, TransportConfig::default())?;
        let attempts = futures::stream::iter(0..2000)
            .map(|_| {
                let endpoint = endpoint.clone();
                async move {
                    // A client's side of the handshake ends before the machine has checked
                    // its certificate: whether it was served shows in a call.
                    let served = async {
                        let conn = endpoint.connect(target, SERVER_NAME).await?;
                        raw_exchange(&conn, &ping_frame()).await
                    };
                    matches!(
                        tokio::time::timeout(Duration::from_secs(20), served).await,
                        Ok(Ok(_))
                    )
                }
            })
            .buffer_unordered(400);
        let outcomes: Vec<bool> = attempts.collect().await;
        let admitted = outcomes.iter().filter(|served| **served).count();
        Ok::<_, Error>((outcomes.len(), admitted))
    });
    // Meanwhile the driver's calls go on (each must succeed within 5 s), and new connections
    // of the cluster get through (each within 5 s, trying again when refused at the bound).
    let mut served = 0;
    let mut connected = 0;
    let started = std::time::Instant::now();
    while !flood.is_finished() && served < 2000 {
        let reply: String = machines[0]
            .call("Echo.echo", &"during".to_string())
            .timeout(Duration::from_secs(5))
            .await?;
        assert_eq!(reply, "hello, during");
        served += 1;
        if served % 10 == 1 {
            let until = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                let attempt =
                    tokio::time::timeout(Duration::from_secs(3), raw_client(&b, &machines[0]))
                        .await
                        .unwrap_or_else(|_| Err(Error::other("connection attempt took 3 s")));
                match attempt {
                    Ok(_) => break,
                    Err(e) if std::time::Instant::now() > until => {
                        return Err(Error::other(format!(
                            "a cluster connection was refused for 5 s during the flood: {e}"
                        )))
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            connected += 1;
        }
    }
    let (attempts, admitted) = flood
        .await
        .map_err(|e| Error::other(format!("flood task: {e}")))??;
    eprintln!(
        "{served} calls served and {connected} cluster connections made during {attempts} \
         refused connection attempts ({:?})",
        started.elapsed()
    );
    // After the flood, the bound holds no slot: a connection gets through at once.
    raw_client(&b, &machines[0]).await?;
    assert_eq!(admitted, 0, "an impostor was served");
    assert!(served > 0, "no call was served during the flood");
    assert_eq!(machines[0].state(), State::Running);
    b.shutdown().await;
    Ok(())
}
