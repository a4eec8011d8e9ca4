//! The workloads, run the same way against every peer, and the table they print.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;

use crate::alloc;

/// The size of the chunks streams and bulk replies are written in.
pub(crate) const CHUNK: usize = 1 << 20;

/// `n` bytes as slices of one 1 MiB buffer allocated once per process (the last one shorter).
pub(crate) fn chunks(n: u64) -> impl Iterator<Item = Bytes> + Send + 'static {
    static SHARED: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    let chunk = SHARED
        .get_or_init(|| Bytes::from(vec![0x5au8; CHUNK]))
        .clone();
    (0..n.div_ceil(CHUNK as u64)).map(move |i| {
        let len = (n - i * CHUNK as u64).min(CHUNK as u64) as usize;
        chunk.slice(..len)
    })
}

/// `n` bytes as a slice of one buffer kept for the process's life: the reply of a bulk `get`
/// for peers that can send bytes they do not own without copying them (bigmachine's `Blob`,
/// tonic's `Bytes`), as the raw floors send slices of one buffer. Peers that need an owned
/// value (tarpc's `ByteBuf`) allocate one per call.
pub(crate) fn shared(n: u64) -> Bytes {
    static SHARED: std::sync::Mutex<Option<Bytes>> = std::sync::Mutex::new(None);
    let mut held = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    let n = n as usize;
    match held.as_ref() {
        Some(bytes) if bytes.len() >= n => bytes.slice(..n),
        _ => {
            let bytes = Bytes::from(vec![0x5au8; n]);
            *held = Some(bytes.clone());
            bytes
        }
    }
}

/// A payload in the two shapes peers take it in (built once, outside the timings).
pub(crate) struct Payload {
    pub(crate) vec: Vec<u8>,
    pub(crate) bytes: Bytes,
}

impl Payload {
    pub(crate) fn new(n: usize) -> Self {
        let vec = vec![0x5a; n];
        Self {
            bytes: Bytes::from(vec.clone()),
            vec,
        }
    }
}

/// One system under comparison, seen from its client. Every method panics on failure: a bench
/// that cannot complete its workload has nothing to report.
pub(crate) trait Peer {
    /// Sends `msg` and waits for it to come back; returns the reply's length.
    fn echo(&self, msg: &Payload) -> impl Future<Output = usize>;

    /// The echo used with many calls in flight (the same unless the peer needs a multiplexer).
    fn echo_concurrent(&self, msg: &Payload) -> impl Future<Output = usize> {
        self.echo(msg)
    }

    /// Called outside the timings before each `put` of `data` (for peers whose API takes the
    /// argument by value, so the bench does not time a copy the user would not make).
    fn prepare_put(&self, _data: &Payload) {}

    /// Sends `data` as one argument; returns the length the server saw.
    fn put(&self, data: &Payload) -> impl Future<Output = u64>;

    /// Asks for one reply of `n` bytes; returns the length received.
    fn get(&self, n: u64) -> impl Future<Output = u64>;

    /// Asks for `n` bytes as a stream; returns the length received, `None` when the peer has no
    /// streams.
    fn stream(&self, n: u64) -> impl Future<Output = Option<u64>>;

    /// The server's process, whose CPU time the bulk workloads count with the client's.
    fn server_pid(&self) -> u32;
}

pub(crate) use crate::support::cpu_seconds;

/// Sizes and counts of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Workload {
    pub(crate) small: usize,
    pub(crate) calls: usize,
    pub(crate) in_flight: usize,
    pub(crate) in_flight_for: Duration,
    pub(crate) bulk: u64,
    pub(crate) stream: u64,
    pub(crate) reps: usize,
}

impl Workload {
    pub(crate) fn new(quick: bool) -> Self {
        if quick {
            Self {
                small: 64,
                calls: 300,
                in_flight: 256,
                in_flight_for: Duration::from_millis(200),
                bulk: 4 << 20,
                stream: 16 << 20,
                reps: 1,
            }
        } else {
            Self {
                small: 64,
                calls: 20_000,
                in_flight: 256,
                in_flight_for: Duration::from_secs(3),
                bulk: 64 << 20,
                stream: 1 << 30,
                reps: 5,
            }
        }
    }
}

/// What one peer measured.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) name: String,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) calls_per_s: f64,
    pub(crate) put_gbps: Option<f64>,
    pub(crate) get_gbps: Option<f64>,
    pub(crate) stream_gbps: Option<f64>,
    /// CPU seconds of client and server together per GB moved by the bulk workloads.
    pub(crate) cpu_s_per_gb: Option<f64>,
    pub(crate) allocs_per_call: f64,
}

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// Completed echoes per second with `w.in_flight` calls kept outstanding for `w.in_flight_for`.
async fn throughput<P: Peer>(peer: &P, msg: &Payload, w: &Workload) -> f64 {
    let start = Instant::now();
    let done = AtomicU64::new(0);
    let workers = (0..w.in_flight).map(|_| async {
        while start.elapsed() < w.in_flight_for {
            assert_eq!(peer.echo_concurrent(msg).await, msg.vec.len());
            done.fetch_add(1, Relaxed);
        }
    });
    futures::future::join_all(workers).await;
    done.into_inner() as f64 / start.elapsed().as_secs_f64()
}

/// Whether workload `name` (`latency`, `inflight` or `bulk`) is selected by `COMPARE_WORKLOADS`
/// (a comma-separated list; all when unset). Profiling one workload is the use.
fn selected(name: &str) -> bool {
    std::env::var("COMPARE_WORKLOADS").map_or(true, |l| l.split(',').any(|w| w.trim() == name))
}

/// Runs every selected workload against `peer`.
pub(crate) async fn measure<P: Peer>(name: &str, peer: &P, w: &Workload) -> Row {
    let msg = Payload::new(w.small);
    // Progress on stderr: where a peer that hangs stopped.
    eprintln!("{name}: warm-up and latency");
    for _ in 0..200 {
        peer.echo(&msg).await;
    }
    let mut h = Histogram::<u64>::new(3).unwrap_or_else(|e| panic!("histogram: {e}"));
    let allocs = alloc::count();
    let calls = if selected("latency") { w.calls } else { 1 };
    for _ in 0..calls {
        let t = Instant::now();
        let n = peer.echo(&msg).await;
        let _ = h.record(t.elapsed().as_nanos() as u64);
        assert_eq!(n, w.small, "{name}: echo length");
    }
    let allocs_per_call = (alloc::count() - allocs) as f64 / calls as f64;
    let calls_per_s = if selected("inflight") {
        eprintln!("{name}: calls in flight");
        throughput(peer, &msg, w).await
    } else {
        0.0
    };
    let ((put_gbps, get_gbps, stream_gbps), cpu_s_per_gb) = if selected("bulk") {
        let pid = Some(peer.server_pid());
        let cpu = || cpu_seconds(None) + cpu_seconds(pid);
        let before = cpu();
        let (rates, moved) = bulk(name, peer, w).await;
        (rates, Some((cpu() - before) / (moved as f64 / 1e9)))
    } else {
        ((None, None, None), None)
    };
    let row = Row {
        name: name.to_string(),
        p50_us: h.value_at_quantile(0.5) as f64 / 1e3,
        p99_us: h.value_at_quantile(0.99) as f64 / 1e3,
        calls_per_s,
        put_gbps,
        get_gbps,
        stream_gbps,
        cpu_s_per_gb,
        allocs_per_call,
    };
    eprintln!("measured {name}: {row:?}");
    row
}

/// GB/s of the 64 MiB argument, the 64 MiB reply and the stream (`None` without streams),
/// medians of `w.reps` runs; and the bytes moved in all.
async fn bulk<P: Peer>(
    name: &str,
    peer: &P,
    w: &Workload,
) -> ((Option<f64>, Option<f64>, Option<f64>), u64) {
    let data = Payload::new(w.bulk as usize);
    let (mut put, mut get, mut stream) = (Vec::new(), Vec::new(), Vec::new());
    let mut streams = true;
    for rep in 0..w.reps {
        eprintln!("{name}: bulk, round {rep}");
        peer.prepare_put(&data);
        let t = Instant::now();
        assert_eq!(peer.put(&data).await, w.bulk, "{name}: put length");
        put.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(peer.get(w.bulk).await, w.bulk, "{name}: get length");
        get.push(t.elapsed());
        let t = Instant::now();
        match peer.stream(w.stream).await {
            Some(n) => {
                assert_eq!(n, w.stream, "{name}: stream length");
                stream.push(t.elapsed());
            }
            None => streams = false,
        }
    }
    let moved = w.reps as u64 * (2 * w.bulk + if streams { w.stream } else { 0 });
    (
        (
            Some(gbps(w.bulk, median(put))),
            Some(gbps(w.bulk, median(get))),
            streams.then(|| gbps(w.stream, median(stream))),
        ),
        moved,
    )
}

fn opt(x: Option<f64>, prec: usize) -> String {
    x.map_or_else(|| "n/a".to_string(), |x| format!("{x:.prec$}"))
}

/// Prints the table: absolute figures, then each peer's figures as ratios to the first row's.
pub(crate) fn print(rows: &[Row], w: &Workload) {
    let mib = |n: u64| format!("{} MiB", n >> 20);
    println!();
    println!(
        "{:<30} {:>9} {:>9} {:>11} {:>10} {:>10} {:>10} {:>8} {:>8}",
        "",
        "p50 µs",
        "p99 µs",
        format!("calls/s@{}", w.in_flight),
        format!("arg {}", mib(w.bulk)),
        format!("reply {}", mib(w.bulk)),
        format!("stream {}", mib(w.stream)),
        "CPU s",
        "allocs"
    );
    println!(
        "{:<30} {:>9} {:>9} {:>11} {:>10} {:>10} {:>10} {:>8} {:>8}",
        "", "", "", "", "GB/s", "GB/s", "GB/s", "/GB", "/call"
    );
    for r in rows {
        println!(
            "{:<30} {:>9.1} {:>9.1} {:>11.0} {:>10} {:>10} {:>10} {:>8} {:>8.1}",
            r.name,
            r.p50_us,
            r.p99_us,
            r.calls_per_s,
            opt(r.put_gbps, 2),
            opt(r.get_gbps, 2),
            opt(r.stream_gbps, 2),
            opt(r.cpu_s_per_gb, 2),
            r.allocs_per_call
        );
    }
    let Some(base) = rows.first() else { return };
    println!();
    println!(
        "{} relative to each peer (latency and CPU: {} ÷ peer, lower is better; rates: {} ÷ peer, higher is better)",
        base.name, base.name, base.name
    );
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let times = |x: Option<f64>| x.map_or_else(|| "n/a".to_string(), |x| format!("{x:.2}x"));
    for r in &rows[1..] {
        println!(
            "{:<30} {:>9} {:>9} {:>11} {:>10} {:>10} {:>10} {:>8}",
            format!("vs {}", r.name),
            times(Some(base.p50_us / r.p50_us)),
            times(Some(base.p99_us / r.p99_us)),
            times(Some(base.calls_per_s / r.calls_per_s)),
            times(ratio(base.put_gbps, r.put_gbps)),
            times(ratio(base.get_gbps, r.get_gbps)),
            times(ratio(base.stream_gbps, r.stream_gbps)),
            times(ratio(base.cpu_s_per_gb, r.cpu_s_per_gb)),
        );
    }
    println!();
}
