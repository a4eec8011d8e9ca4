//! The side-by-side comparison: the same workloads, client and server in separate processes,
//! over this library and its peers, printed as one table.
//!
//! ```text
//! cargo bench --bench compare                            # full run (~2 minutes)
//! BIGMACHINE_BENCH_QUICK=1 cargo bench --bench compare   # seconds; what CI runs
//! ```
//!
//! Peers: **bigmachine** (a driver and one local machine), and the same with the machine's
//! metrics off (`bigmachine-nometrics`: what counting calls costs); **raw quinn**, a stream per request on
//! endpoints configured exactly as bigmachine's (the transport floor), and the same with quinn's
//! default configuration (*naive*: what a first quinn program gets), and the tuned floor with its
//! stream striped over two connections (`quinn-striped`: what striping could buy at most); **TCP** over loopback with
//! bigmachine's header sizes (the kernel floor: sequential calls are a ping-pong, calls in flight
//! are multiplexed over one connection), and the same over TLS 1.3 with the cluster's
//! certificates (`tls`: the encrypted floor over TCP); **tonic** gRPC with mutual TLS (unary; server streaming
//! for the stream column); **tarpc** (bincode over plain TCP).
//!
//! Workloads: a 64-byte echo called sequentially (p50/p99 from HDR histograms; allocations per
//! call counted on the client by a counting allocator), the same with 256 calls in flight (calls/s),
//! a 64 MiB argument, a 64 MiB reply, and a 1 GiB stream from server to client (GB/s, median of 5).
//!
//! `COMPARE_WORKERS=N` gives every process of the comparison N tokio workers (default: one per
//! core). On a small host running both sides, one worker per process avoids oversubscribing the
//! cores with four runtimes' threads and their cross-thread wake-ups.
//!
//! This binary is also every server: it re-executes itself with `COMPARE_SERVER=<peer>`, and as
//! a bigmachine machine through the local system.

use bigmachine::driver;
use bigmachine_quic::Authority;

mod alloc;
mod harness;
mod peer_bigmachine;
mod peer_quinn;
mod peer_tarpc;
mod peer_tcp;
mod peer_tonic;
mod server;
#[path = "../support/mod.rs"]
mod support;

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

fn quick() -> bool {
    std::env::var_os("BIGMACHINE_BENCH_QUICK").is_some()
}

async fn serve(peer: &str) {
    match peer {
        "quinn" => peer_quinn::serve(false).await,
        "quinn-naive" => peer_quinn::serve(true).await,
        "tcp" => peer_tcp::serve(false).await,
        "tls" => peer_tcp::serve(true).await,
        "tonic" => peer_tonic::serve().await,
        "tarpc" => peer_tarpc::serve().await,
        other => panic!("unknown peer {other:?}"),
    }
}

/// `COMPARE_WORKERS=N`: every process of the comparison (client, servers, bigmachine's machine)
/// runs N tokio workers instead of one per core.
fn workers() -> Option<usize> {
    std::env::var("COMPARE_WORKERS").ok()?.parse().ok()
}

fn main() {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers() {
        rt.worker_threads(n);
    }
    let rt = rt
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    if let Some(peer) = server::role() {
        rt.block_on(serve(&peer));
        return;
    }
    rt.block_on(async {
        let _driver = driver::start().await; // machines never return from here
                                             // The client runs as a task on the runtime's workers, as application code does, not on
                                             // the thread blocked in `block_on` (which would add a cross-thread wake-up per reply).
        tokio::spawn(compare())
            .await
            .unwrap_or_else(|e| panic!("compare: {e}"));
    });
}

/// Whether `peer` is selected by `COMPARE_PEERS` (a comma-separated list; all when unset).
fn selected(peer: &str) -> bool {
    std::env::var("COMPARE_PEERS").map_or(true, |list| list.split(',').any(|p| p.trim() == peer))
}

async fn compare() {
    let w = harness::Workload::new(quick());
    let ca = Authority::new().unwrap_or_else(|e| panic!("authority: {e}"));
    let creds = ca.issue("server").unwrap_or_else(|e| panic!("issue: {e}"));
    let mut rows = Vec::new();
    let mut machine_allocs = None;

    if selected("bigmachine") {
        let bm = peer_bigmachine::Client::start(true).await;
        rows.push(harness::measure("bigmachine", &bm, &w).await);
        machine_allocs = Some(bm.machine_allocs_per_echo(w.calls, w.small).await);
        bm.shutdown().await;
    }
    if selected("bigmachine-nometrics") {
        let bm = peer_bigmachine::Client::start(false).await;
        rows.push(harness::measure("bigmachine, metrics off", &bm, &w).await);
        bm.shutdown().await;
    }
    if selected("quinn") {
        let quinn = peer_quinn::Client::start(&ca, &creds, false, 1).await;
        rows.push(harness::measure("raw quinn, tuned (floor)", &quinn, &w).await);
    }
    if selected("quinn-striped") {
        // What striping a large stream over a pool's 2 connections could buy at most.
        let quinn = peer_quinn::Client::start(&ca, &creds, false, 2).await;
        rows.push(harness::measure("raw quinn, stream over 2 conns", &quinn, &w).await);
    }
    if selected("quinn-naive") {
        let quinn = peer_quinn::Client::start(&ca, &creds, true, 1).await;
        rows.push(harness::measure("raw quinn, defaults (naive)", &quinn, &w).await);
    }
    if selected("tcp") {
        let tcp = peer_tcp::Client::start(&creds, false).await;
        rows.push(harness::measure("TCP loopback (same framing)", &tcp, &w).await);
    }
    if selected("tls") {
        let tls = peer_tcp::Client::start(&creds, true).await;
        rows.push(harness::measure("TLS 1.3 over TCP (same certs)", &tls, &w).await);
    }
    if selected("tonic") {
        let tonic = peer_tonic::Client::start(&ca, &creds).await;
        rows.push(harness::measure("tonic gRPC (mTLS)", &tonic, &w).await);
    }
    if selected("tarpc") {
        let tarpc = peer_tarpc::Client::start(&creds).await;
        rows.push(harness::measure("tarpc (bincode, TCP)", &tarpc, &w).await);
    }

    println!(
        "\ncomparison: client and server in separate processes over loopback, {} cores, {} tokio workers per process{}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        workers().map_or_else(|| "default".to_string(), |n| n.to_string()),
        if quick() {
            " (QUICK MODE: small sizes, not for quoting)"
        } else {
            ""
        }
    );
    harness::print(&rows, &w);
    if let Some(n) = machine_allocs {
        println!("bigmachine machine-side allocations per sequential echo: {n:.1}");
    }
}
