//! Bulk transfer: a 64 MiB argument and a 64 MiB reply (driver and machine), and a 1 GiB byte
//! stream from one machine to another, beside raw quinn (one connection, one stream, same
//! endpoint tuning and mutual TLS) and TCP over loopback, each between two processes, in one
//! run. Also prints the bytes the engine copied per payload byte.
//!
//! `cargo bench --bench bulk`; `BIGMACHINE_BENCH_QUICK=1` for a short run. This binary is its
//! own machine, and its own raw quinn / TCP sink (`BULK_SINK=quinn|tcp`).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bigmachine::core::codec::bytes_copied;
use bigmachine::driver::{self, Flags};
use bigmachine::local::LocalSystem;
use bigmachine::quic::{Authority, Credentials, Endpoint, TransportConfig};
use bigmachine::{service, Archived, ByteStream, Context, Error, Result, Services, State, B};
use bytes::Bytes;
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
#[command(ignore_errors = true)]
struct Args {
    #[command(flatten)]
    bigm: Flags,
}

const SINK: &str = "BULK_SINK";
const CHUNK: usize = 1 << 20;

fn quick() -> bool {
    std::env::var_os("BIGMACHINE_BENCH_QUICK").is_some()
}

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
    use tokio::io::AsyncBufReadExt;
    let mut cmd =
        tokio::process::Command::new(std::env::current_exe().unwrap_or_else(|e| panic!("{e}")));
    cmd.env(SINK, kind)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(c) = creds {
        cmd.env("BULK_CREDS", c.to_pem());
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn sink: {e}"));
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let mut line = String::new();
    tokio::io::BufReader::new(stdout)
        .read_line(&mut line)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (
        line.trim()
            .parse()
            .unwrap_or_else(|e| panic!("sink address {line:?}: {e}")),
        child,
    )
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
            let pem = std::env::var("BULK_CREDS").unwrap_or_else(|e| panic!("{e}"));
            let creds = Credentials::from_pem(pem.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
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
    let conn = ep.connect(addr).await.unwrap_or_else(|e| panic!("{e}"));
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

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("runtime: {e}"));
    if let Ok(kind) = std::env::var(SINK) {
        rt.block_on(run_sink(&kind));
        return;
    }
    let args = Args::parse();
    rt.block_on(async {
        let _driver = driver::start_with(&args.bigm).await; // machines never return from here
        let (arg_n, stream_n): (u64, u64) = if quick() {
            (8 << 20, 64 << 20)
        } else {
            (64 << 20, 1 << 30)
        };
        let reps = if quick() { 1 } else { 5 };
        let b = B::new(LocalSystem::new()).unwrap_or_else(|e| panic!("driver: {e}"));
        let machines = b
            .start(2, Services::new().with("Bulk", Bulk { b: None }))
            .await
            .unwrap_or_else(|e| panic!("start: {e}"));
        for m in &machines {
            assert_eq!(
                m.wait(State::Running).await,
                State::Running,
                "{:?}",
                m.err()
            );
        }
        let (a, z) = (&machines[0], &machines[1]);
        let data = vec![0x5au8; arg_n as usize];
        let median = |mut v: Vec<Duration>| {
            v.sort();
            v[v.len() / 2]
        };

        let mut arg = Vec::new();
        let mut reply = Vec::new();
        let mut stream = Vec::new();
        let mut tcp = Vec::new();
        let mut raw = Vec::new();
        let (mut arg_copies, mut reply_copies, mut stream_copies) = (0.0, 0.0, 0.0);
        for _ in 0..reps {
            let before: u64 = a
                .call("Bulk.copied", &())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let t = Instant::now();
            let got: u64 = a
                .call("Bulk.take", &data)
                .await
                .unwrap_or_else(|e| panic!("take: {e}"));
            arg.push(t.elapsed());
            assert_eq!(got, arg_n);
            let after: u64 = a
                .call("Bulk.copied", &())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            arg_copies = (after - before) as f64 / arg_n as f64;

            let before = bytes_copied();
            let t = Instant::now();
            let got: Archived<Vec<u8>> = a
                .call("Bulk.give", &arg_n)
                .await
                .unwrap_or_else(|e| panic!("give: {e}"));
            reply.push(t.elapsed());
            assert_eq!(got.len() as u64, arg_n);
            reply_copies = (bytes_copied() - before) as f64 / arg_n as f64;

            let before: u64 = z
                .call("Bulk.copied", &())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let secs: f64 = a
                .call("Bulk.push", &(z.addr().to_string(), stream_n))
                .await
                .unwrap_or_else(|e| panic!("push: {e}"));
            stream.push(Duration::from_secs_f64(secs));
            let after: u64 = z
                .call("Bulk.copied", &())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            stream_copies = (after - before) as f64 / stream_n as f64;

            tcp.push(tcp_bulk(stream_n).await);
            raw.push(quinn_bulk(stream_n).await);
        }
        b.shutdown().await;
        let (arg, reply, stream, tcp, raw) = (
            median(arg),
            median(reply),
            median(stream),
            median(tcp),
            median(raw),
        );
        let tcp_gbps = gbps(stream_n, tcp);
        println!("\nbulk transfer, two processes over loopback (median of {reps})");
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
            arg,
            Some(arg_copies),
        );
        row(
            &format!("bigmachine {} MiB reply (Archived)", arg_n >> 20),
            arg_n,
            reply,
            Some(reply_copies),
        );
        row(
            &format!("bigmachine {} MiB stream machine->machine", stream_n >> 20),
            stream_n,
            stream,
            Some(stream_copies),
        );
        row(
            &format!("raw quinn {} MiB, one connection", stream_n >> 20),
            stream_n,
            raw,
            None,
        );
        row(
            &format!("TCP loopback {} MiB", stream_n >> 20),
            stream_n,
            tcp,
            None,
        );
        println!();
    });
}
