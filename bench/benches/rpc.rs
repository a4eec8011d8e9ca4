//! Small-call latency and throughput on the test system (client and machines in one process),
//! beside a raw quinn stream round trip over the same kind of connection (same endpoint tuning,
//! same mutual TLS): a sequential call, 256 calls in flight to one machine, and 256 in flight
//! spread over 4 machines. The cross-process comparison with every peer is `benches/compare`.
//!
//! `cargo bench --bench rpc` prints a summary table first (p50/p99 from HDR histograms, calls/s
//! with 256 in flight, and the ratio to raw quinn), then runs the criterion groups.
//! `BIGMACHINE_BENCH_QUICK=1` shortens everything (CI uses it so the bench cannot rot).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bigmachine::testsystem::TestSystem;
use bigmachine::{service, Context, Machine, Result, Services, State, B};
use bigmachine_quic::{Authority, Endpoint, TransportConfig, SERVER_NAME};
use criterion::{criterion_group, Criterion, Throughput};
use hdrhistogram::Histogram;

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Bench;

#[service]
impl Bench {
    async fn echo(&self, _ctx: &Context, n: u64) -> Result<u64> {
        Ok(n)
    }
}

fn quick() -> bool {
    std::env::var_os("BIGMACHINE_BENCH_QUICK").is_some()
}

/// In quick mode, a group takes a fraction of a second.
fn shorten<M: criterion::measurement::Measurement>(g: &mut criterion::BenchmarkGroup<'_, M>) {
    if quick() {
        g.sample_size(10)
            .measurement_time(Duration::from_millis(200))
            .warm_up_time(Duration::from_millis(50));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
}

struct Setup {
    b: B,
    machine: Machine,
    machines: Vec<Machine>,
    raw: RawClient,
}

async fn setup() -> Setup {
    let b = B::new(TestSystem::new()).unwrap_or_else(|e| panic!("driver: {e}"));
    let machines = b
        .start(4, Services::new().with("Bench", Bench))
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    for m in &machines {
        assert_eq!(m.wait(State::Running).await, State::Running);
    }
    let machine = machines[0].clone();
    let raw = RawClient::start().await;
    Setup {
        b,
        machine,
        machines,
        raw,
    }
}

/// The floor: one quinn stream per request carrying 64 bytes each way, on endpoints configured
/// exactly as bigmachine's.
struct RawClient {
    client: Endpoint,
    conn: quinn::Connection,
    _server: Endpoint,
}

impl RawClient {
    async fn start() -> Self {
        let ca = Authority::new().unwrap_or_else(|e| panic!("ca: {e}"));
        let local = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let issue = |name: &str| ca.issue(name).unwrap_or_else(|e| panic!("issue: {e}"));
        let server = Endpoint::bind(local, &issue("server"), TransportConfig::default())
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let client = Endpoint::bind(local, &issue("client"), TransportConfig::default())
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let serving = server.clone();
        tokio::spawn(async move {
            while let Some(conn) = serving.accept().await {
                tokio::spawn(async move {
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        tokio::spawn(async move {
                            if let Ok(msg) = recv.read_to_end(1024).await {
                                let _ = send.write_all(&msg).await;
                                let _ = send.finish();
                            }
                        });
                    }
                });
            }
        });
        let addr = server.local_addr().unwrap_or_else(|e| panic!("addr: {e}"));
        let conn = client
            .connect(addr, SERVER_NAME)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        Self {
            client,
            conn,
            _server: server,
        }
    }

    async fn round_trip(&self) {
        let (mut send, mut recv) = self
            .conn
            .open_bi()
            .await
            .unwrap_or_else(|e| panic!("open: {e}"));
        let _ = send.write_all(&[7u8; 64]).await;
        let _ = send.finish();
        let reply = recv
            .read_to_end(1024)
            .await
            .unwrap_or_else(|e| panic!("read: {e}"));
        assert_eq!(reply.len(), 64);
    }
}

async fn call(m: &Machine, n: u64) {
    let r: u64 = m
        .call("Bench.echo", &n)
        .await
        .unwrap_or_else(|e| panic!("call: {e}"));
    assert_eq!(r, n);
}

async fn latency<F, Fut>(n: usize, mut f: F) -> Histogram<u64>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut h = Histogram::<u64>::new(3).unwrap_or_else(|e| panic!("histogram: {e}"));
    for i in 0..n as u64 {
        let t = Instant::now();
        f(i).await;
        let _ = h.record(t.elapsed().as_nanos() as u64);
    }
    h
}

/// Completed calls per second with `in_flight` calls kept outstanding for `dur`.
async fn throughput<F, Fut>(in_flight: usize, dur: Duration, f: F) -> f64
where
    F: Fn(u64) -> Fut + Sync,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = Instant::now();
    let done = std::sync::atomic::AtomicU64::new(0);
    let workers = (0..in_flight).map(|w| {
        let (f, done) = (&f, &done);
        async move {
            let mut i = w as u64;
            while start.elapsed() < dur {
                f(i).await;
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                i += in_flight as u64;
            }
        }
    });
    futures::future::join_all(workers).await;
    done.into_inner() as f64 / start.elapsed().as_secs_f64()
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn summary(rt: &tokio::runtime::Runtime, s: &Setup) {
    let (n, dur) = if quick() {
        (200, Duration::from_millis(200))
    } else {
        (20_000, Duration::from_secs(3))
    };
    rt.block_on(async {
        // Warm up both paths (connections, allocator).
        for i in 0..200 {
            call(&s.machine, i).await;
            s.raw.round_trip().await;
        }
        let bm = latency(n, |i| call(&s.machine, i)).await;
        let raw = latency(n, |_| s.raw.round_trip()).await;
        let bm_tput = throughput(256, dur, |i| call(&s.machine, i)).await;
        let raw_tput = throughput(256, dur, |_| s.raw.round_trip()).await;
        println!("\nsmall call, test system (client and machine in one process, 2 workers)");
        println!(
            "{:<28} {:>10} {:>10} {:>14}",
            "", "p50 µs", "p99 µs", "calls/s @256"
        );
        println!(
            "{:<28} {:>10.1} {:>10.1} {:>14.0}",
            "bigmachine call (u64)",
            us(&bm, 0.5),
            us(&bm, 0.99),
            bm_tput
        );
        println!(
            "{:<28} {:>10.1} {:>10.1} {:>14.0}",
            "raw quinn stream (64 B)",
            us(&raw, 0.5),
            us(&raw, 0.99),
            raw_tput
        );
        println!(
            "ratio bigmachine / raw quinn: p50 {:.2}x, p99 {:.2}x, calls/s {:.2}x\n",
            us(&bm, 0.5) / us(&raw, 0.5),
            us(&bm, 0.99) / us(&raw, 0.99),
            bm_tput / raw_tput
        );
    });
}

fn benches(c: &mut Criterion) {
    let rt = runtime();
    let s = rt.block_on(setup());
    summary(&rt, &s);

    let mut g = c.benchmark_group("small_call");
    shorten(&mut g);
    g.bench_function("bigmachine", |bench| {
        bench.to_async(&rt).iter(|| call(&s.machine, 1))
    });
    g.bench_function("raw_quinn", |bench| {
        bench.to_async(&rt).iter(|| s.raw.round_trip())
    });
    g.finish();

    let mut g = c.benchmark_group("in_flight_256");
    g.throughput(Throughput::Elements(256));
    shorten(&mut g);
    let machine = Arc::new(s.machine.clone());
    g.bench_function("bigmachine", |bench| {
        bench.to_async(&rt).iter(|| {
            let m = machine.clone();
            async move { futures::future::join_all((0..256).map(|i| call(&m, i))).await }
        })
    });
    g.bench_function("raw_quinn", |bench| {
        bench
            .to_async(&rt)
            .iter(|| futures::future::join_all((0..256).map(|_| s.raw.round_trip())))
    });
    g.finish();

    let mut g = c.benchmark_group("in_flight_256_over_4_machines");
    g.throughput(Throughput::Elements(256));
    shorten(&mut g);
    let machines = Arc::new(s.machines.clone());
    g.bench_function("bigmachine", |bench| {
        bench.to_async(&rt).iter(|| {
            let ms = machines.clone();
            async move {
                futures::future::join_all((0..256).map(|i| call(&ms[i % ms.len()], i as u64))).await
            }
        })
    });
    g.finish();

    rt.block_on(s.b.shutdown());
    drop(s.raw.client);
}

criterion_group!(rpc, benches);

fn main() {
    rpc();
    Criterion::default().configure_from_args().final_summary();
}
