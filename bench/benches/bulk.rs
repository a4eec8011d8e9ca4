//! Bulk transfer: a 64 MiB argument and a 64 MiB reply (driver and machine), and a 1 GiB byte
//! stream from one machine to another, beside raw quinn (one connection, one stream, same
//! endpoint tuning and mutual TLS) and TCP over loopback, each between two processes, in one
//! run (criterion group `bulk`, then a summary table printed from the same runs). Also prints
//! the bytes the engine copied per payload byte.
//!
//! `cargo bench --bench bulk`; `BIGMACHINE_BENCH_QUICK=1` for a short run. This binary is its
//! own machine, and its own raw quinn / TCP sink (`BULK_SINK=quinn|tcp`).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bigmachine::buffers::bytes_copied;
use bigmachine::driver;
use bigmachine::local::LocalSystem;
use bigmachine::{
    service, Archived, ByteStream, Context, Error, Machine, Result, Services, State, B,
};
use bigmachine_quic::{Authority, Credentials, Endpoint, TransportConfig, SERVER_NAME};
use bytes::Bytes;
use criterion::Throughput;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod support;

use support::{quick, Record};

const SINK: &str = "BULK_SINK";
const CHUNK: usize = 1 << 20;

fn chunks(n: u64) -> ByteStream {
    let chunk = Bytes::from(vec![0x5au8; CHUNK]);
    let count = n.div_ceil(CHUNK as u64);
    ByteStream::from_stream(futures::stream::iter((0..count).map(move |i| {
        let len = (n - i * CHUNK as u64).min(CHUNK as u64) as usize;
        Ok(chunk.slice(..len))
    })))
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Bulk {
    #[rkyv(with = rkyv::with::Skip)]
    b: Option<B>,
}

#[service]
impl Bulk {
    async fn init(&mut self, b: &B) -> Result<()> {
        self.b = Some(b.clone());
        Ok(())
    }

    async fn take(&self, _ctx: &Context, data: Archived<Vec<u8>>) -> Result<u64> {
        Ok(data.len() as u64)
    }

    async fn give(&self, _ctx: &Context, n: u64) -> Result<Vec<u8>> {
        Ok(vec![0x5a; n as usize])
    }

    async fn sink(&self, _ctx: &Context, _arg: (), mut body: ByteStream) -> Result<u64> {
        let mut n = 0;
        while let Some(chunk) = body.next_chunk().await {
            n += chunk?.len() as u64;
        }
        Ok(n)
    }

    /// Streams `n` bytes to the machine at `peer`; returns the seconds it took.
    async fn push(&self, ctx: &Context, arg: (String, u64)) -> Result<f64> {
        let (peer, n) = arg;
        let b = self.b.as_ref().ok_or_else(|| Error::other("no B"))?;
        let peer = b.dial(peer.parse().map_err(Error::other)?);
        peer.wait(State::Running).await;
        let started = Instant::now();
        let got: u64 = peer
            .call("Bulk.sink", &())
            .context(ctx)
            .body(move || chunks(n))
            .await?;
        assert_eq!(got, n);
        Ok(started.elapsed().as_secs_f64())
    }

    async fn copied(&self, _ctx: &Context, _arg: ()) -> Result<u64> {
        Ok(bytes_copied())
    }
}

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

/// Starts this binary as a sink of `kind`; returns its address and the child.
async fn start_sink(
    kind: &str,
    creds: Option<&Credentials>,
) -> (SocketAddr, tokio::process::Child) {
    support::spawn_self(&[(SINK, kind.to_string())], creds).await
}

/// The sink side: counts what arrives on one quinn stream or TCP connection, then replies with
/// one byte.
async fn run_sink(kind: &str) {
    let local = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    match kind {
        "tcp" => {
            let listener = tokio::net::TcpListener::bind(local)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            println!(
                "{}",
                listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
            );
            let (mut conn, _) = listener.accept().await.unwrap_or_else(|e| panic!("{e}"));
            let mut buf = vec![0u8; CHUNK];
            while conn.read(&mut buf).await.map(|n| n > 0).unwrap_or(false) {}
        }
        _ => {
            let creds = support::credentials_from_stdin();
            let ep = Endpoint::bind(local, &creds, TransportConfig::default())
                .unwrap_or_else(|e| panic!("{e}"));
            println!("{}", ep.local_addr().unwrap_or_else(|e| panic!("{e}")));
            let conn = ep.accept().await.unwrap_or_else(|| panic!("no connection"));
            let (mut send, mut recv) = conn.accept_bi().await.unwrap_or_else(|e| panic!("{e}"));
            while let Ok(Some(_)) = recv.read_chunk(usize::MAX, false).await {}
            let _ = send.write_all(&[1]).await;
            let _ = send.finish();
            conn.closed().await;
        }
    }
}

async fn tcp_bulk(n: u64) -> Duration {
    let (addr, mut child) = start_sink("tcp", None).await;
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let buf = vec![0x5au8; CHUNK];
    let started = Instant::now();
    let mut sent = 0;
    while sent < n {
        let len = (n - sent).min(CHUNK as u64) as usize;
        conn.write_all(&buf[..len])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        sent += len as u64;
    }
    conn.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
    let _ = child.wait().await;
    started.elapsed()
}

async fn quinn_bulk(n: u64) -> Duration {
    let ca = Authority::new().unwrap_or_else(|e| panic!("{e}"));
    let server = ca.issue("sink").unwrap_or_else(|e| panic!("{e}"));
    let (addr, _child) = start_sink("quinn", Some(&server)).await;
    let local = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let ep = Endpoint::bind(
        local,
        &ca.issue("source").unwrap_or_else(|e| panic!("{e}")),
        TransportConfig::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let conn = ep
        .connect(addr, SERVER_NAME)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await.unwrap_or_else(|e| panic!("{e}"));
    let chunk = Bytes::from(vec![0x5au8; CHUNK]);
    let mut sent = 0;
    while sent < n {
        let len = (n - sent).min(CHUNK as u64) as usize;
        send.write_chunk(chunk.slice(..len))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        sent += len as u64;
    }
    send.finish().unwrap_or_else(|e| panic!("{e}"));
    let _ = recv.read_to_end(16).await;
    let elapsed = started.elapsed();
    conn.close(0u32.into(), b"done");
    elapsed
}

async fn timed_take(m: &Machine, data: &Vec<u8>) -> Duration {
    let t = Instant::now();
    let got: u64 = m
        .call("Bulk.take", data)
        .await
        .unwrap_or_else(|e| panic!("take: {e}"));
    assert_eq!(got, data.len() as u64);
    t.elapsed()
}

async fn timed_give(m: &Machine, n: u64) -> Duration {
    let t = Instant::now();
    let got: Archived<Vec<u8>> = m
        .call("Bulk.give", &n)
        .await
        .unwrap_or_else(|e| panic!("give: {e}"));
    assert_eq!(got.len() as u64, n);
    t.elapsed()
}

async fn timed_push(from: &Machine, to: &Machine, n: u64) -> Duration {
    let secs: f64 = from
        .call("Bulk.push", &(to.addr().to_string(), n))
        .await
        .unwrap_or_else(|e| panic!("push: {e}"));
    Duration::from_secs_f64(secs)
}

async fn copied(m: &Machine) -> u64 {
    m.call("Bulk.copied", &())
        .await
        .unwrap_or_else(|e| panic!("copied: {e}"))
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("runtime: {e}"));
    if let Ok(kind) = std::env::var(SINK) {
        rt.block_on(run_sink(&kind));
        return;
    }
    let (arg_n, stream_n): (u64, u64) = if quick() {
        (8 << 20, 64 << 20)
    } else {
        (64 << 20, 1 << 30)
    };
    let (b, machines) = rt.block_on(async {
        let _driver = driver::start().await; // machines never return from here
        let b = B::new(LocalSystem::new()).unwrap_or_else(|e| panic!("driver: {e}"));
        let machines = b
            .start(2, Services::new().with("Bulk", Bulk { b: None }))
            .await
            .unwrap_or_else(|e| panic!("start: {e}"));
        for m in &machines {
            let state = m.wait(State::Running).await;
            assert_eq!(state, State::Running, "{:?}", m.err());
        }
        (b, machines)
    });
    let (a, z) = (&machines[0], &machines[1]);
    let data = vec![0x5au8; arg_n as usize];

    // Copies per byte, from one run of each workload.
    let (arg_copies, reply_copies, stream_copies) = rt.block_on(async {
        let before = copied(a).await;
        timed_take(a, &data).await;
        let arg = (copied(a).await - before) as f64 / arg_n as f64;
        let before = bytes_copied();
        timed_give(a, arg_n).await;
        let reply = (bytes_copied() - before) as f64 / arg_n as f64;
        let before = copied(z).await;
        timed_push(a, z, stream_n).await;
        let stream = (copied(z).await - before) as f64 / stream_n as f64;
        (arg, reply, stream)
    });

    let record = Record::default();
    let mut c = support::criterion();
    let mut g = c.benchmark_group("bulk");
    support::slow(&mut g);
    g.throughput(Throughput::Bytes(arg_n));
    let (arg_name, reply_name) = (
        format!("arg_{}MiB/bigmachine", arg_n >> 20),
        format!("reply_{}MiB/bigmachine", arg_n >> 20),
    );
    record.bench(&mut g, &rt, &arg_name, || timed_take(a, &data));
    record.bench(&mut g, &rt, &reply_name, || timed_give(a, arg_n));
    g.throughput(Throughput::Bytes(stream_n));
    let stream = |peer: &str| format!("stream_{}MiB/{peer}", stream_n >> 20);
    record.bench(&mut g, &rt, &stream("bigmachine_m2m"), || {
        timed_push(a, z, stream_n)
    });
    record.bench(&mut g, &rt, &stream("raw_quinn"), || quinn_bulk(stream_n));
    record.bench(&mut g, &rt, &stream("tcp"), || tcp_bulk(stream_n));
    g.finish();
    c.final_summary();
    rt.block_on(b.shutdown());

    let tcp = record.median(&stream("tcp"));
    let tcp_gbps = gbps(stream_n, tcp);
    println!("\nbulk transfer, two processes over loopback (medians)");
    println!(
        "{:<44} {:>8} {:>10} {:>12}",
        "", "GB/s", "vs TCP", "copies/byte"
    );
    let row = |name: &str, bytes: u64, d: Duration, copies: Option<f64>| {
        println!(
            "{name:<44} {:>8.2} {:>9.2}x {:>12}",
            gbps(bytes, d),
            gbps(bytes, d) / tcp_gbps,
            copies.map_or("-".to_string(), |c| format!("{c:.2}"))
        );
    };
    row(
        &format!("bigmachine {} MiB argument (Archived)", arg_n >> 20),
        arg_n,
        record.median(&arg_name),
        Some(arg_copies),
    );
    row(
        &format!("bigmachine {} MiB reply (Archived)", arg_n >> 20),
        arg_n,
        record.median(&reply_name),
        Some(reply_copies),
    );
    row(
        &format!("bigmachine {} MiB stream machine->machine", stream_n >> 20),
        stream_n,
        record.median(&stream("bigmachine_m2m")),
        Some(stream_copies),
    );
    row(
        &format!("raw quinn {} MiB, one connection", stream_n >> 20),
        stream_n,
        record.median(&stream("raw_quinn")),
        None,
    );
    row(
        &format!("TCP loopback {} MiB", stream_n >> 20),
        stream_n,
        tcp,
        None,
    );
    println!();
}
