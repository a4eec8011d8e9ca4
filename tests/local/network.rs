//! A bad network between the driver and real machine processes: each machine behind a seeded
//! UDP relay (`Relayed`) that loses, delays or partitions its traffic.

use std::time::{Duration, Instant};

use futures::StreamExt;

use bigmachine::local::LocalSystem;
use bigmachine::testsystem::{LinkFaults, Relayed};
use bigmachine::{
    ByteStream, Congestion, KeepaliveConfig, Kind, Result, Services, State, TransportConfig, B,
};

use crate::common::eventually;
use crate::support::{
    check, fail, gone, running, short_keepalive, sigkill, tests, Probe, ProbeClient, Test,
};

pub(crate) fn tests() -> Vec<(&'static str, Test)> {
    tests![
        lossy_link_5pct_50ms_all_calls_complete,
        partition_shorter_than_keepalive_heals,
        partition_longer_than_keepalive_stops_machine_and_machine_exits,
        kill_machine_mid_stream_reader_errors_promptly,
    ]
}

fn relayed(keepalive: KeepaliveConfig, faults: LinkFaults) -> Relayed<LocalSystem> {
    Relayed::new(
        LocalSystem::builder().keepalive(keepalive).build(),
        faults,
        0x5eed,
    )
}

/// A driver and machines whose transports use `congestion`.
fn with_congestion(system: Relayed<LocalSystem>, congestion: Congestion) -> Result<B> {
    let mut transport = TransportConfig::default();
    transport.congestion = congestion;
    B::builder(system).transport(transport).driver()
}

/// The text of call `i`: distinct per call, `len` bytes.
fn text(i: usize, len: usize) -> String {
    let mut t = format!("{i}:");
    let fill = char::from(b'a' + (i % 26) as u8);
    t.extend(std::iter::repeat_n(fill, len.saturating_sub(t.len())));
    t
}

/// 1,000 calls (every tenth with a 1 MiB argument and reply, the rest small), 16 at a time,
/// through a link losing 5 % of its datagrams each way and delaying each by 50 ms: every one
/// completes with its own reply, QUIC recovering every loss. Driver and machine use BBR, the
/// controller for lossy links (CUBIC reads each loss as congestion and crawls at ~60 KB/s here:
/// two 1 MiB echoes took 67 s).
async fn lossy_link_5pct_50ms_all_calls_complete() -> Result<()> {
    let mut keepalive = short_keepalive();
    // Keepalives cross the same lossy link: give them room.
    keepalive.timeout = Duration::from_secs(10);
    keepalive.rpc_timeout = Duration::from_secs(3);
    let faults = LinkFaults::default()
        .loss(0.05)
        .delay(Duration::from_millis(50));
    let system = Relayed::new(
        LocalSystem::builder()
            .keepalive(keepalive)
            .env("BIGMACHINE_CONGESTION", "bbr")
            .build(),
        faults,
        0x5eed,
    );
    let b = with_congestion(system.clone(), Congestion::Bbr)?;
    let machines = running(&b, 1, Services::new().with("Probe", Probe)).await?;
    let m = &machines[0];
    let probe = ProbeClient::new(m, "Probe");
    let started = Instant::now();
    let calls = (0..1000usize).map(|i| {
        let probe = &probe;
        async move {
            let len = if i % 10 == 0 { 1 << 20 } else { 64 };
            let sent = text(i, len);
            let got = probe.echo(&sent).await?;
            check(got == sent, format!("call {i}: wrong reply"))
        }
    });
    let results: Vec<Result<()>> = futures::stream::iter(calls)
        .buffer_unordered(16)
        .collect()
        .await;
    let took = started.elapsed();
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    check(
        failed.is_empty(),
        format!(
            "{} of 1000 calls failed, first: {:?}",
            failed.len(),
            failed.first()
        ),
    )?;
    check(m.state() == State::Running, "machine not running")?;
    let stats = system
        .relay(m)
        .map(|r| r.stats())
        .ok_or_else(|| fail("no relay"))?;
    check(
        stats.dropped > 0,
        "the relay lost nothing: the test proves nothing",
    )?;
    println!(
        "    1000 calls (100 of 1 MiB) in {took:.2?}; relay: {} datagrams forwarded, {} lost",
        stats.forwarded, stats.dropped
    );
    b.shutdown().await;
    Ok(())
}

/// A partition of 1 s, shorter than the keepalive timeout (2 s): a call made during it
/// completes once it heals, and the machine stays Running.
async fn partition_shorter_than_keepalive_heals() -> Result<()> {
    let system = relayed(short_keepalive(), LinkFaults::default());
    let b = B::new(system.clone())?;
    let machines = running(&b, 1, Services::new().with("Probe", Probe)).await?;
    let m = &machines[0];
    let probe = ProbeClient::new(m, "Probe");
    check(probe.echo(&"before".to_string()).await? == "before", "echo")?;
    let relay = system.relay(m).ok_or_else(|| fail("no relay"))?;
    relay.partition(true);
    let during = "during".to_string();
    let during = probe.echo(&during);
    let heal = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        relay.partition(false);
    };
    let (reply, ()) = tokio::join!(during, heal);
    check(
        reply? == "during",
        "the call made during the partition got a wrong reply",
    )?;
    // Two keepalive timeouts on: still Running, still answering.
    tokio::time::sleep(Duration::from_secs(4)).await;
    check(
        m.state() == State::Running,
        format!(
            "machine {:?} after a healed partition: {:?}",
            m.state(),
            m.err()
        ),
    )?;
    check(probe.echo(&"after".to_string()).await? == "after", "echo")?;
    check(relay.stats().dropped > 0, "the partition dropped nothing")?;
    b.shutdown().await;
    Ok(())
}

/// A partition that outlasts the keepalive timeout: the driver stops the machine with an error
/// saying keepalives failed (not the machine's exit, which comes later), and the machine's
/// process, hearing no keepalive, exits by its watchdog (the driver does not kill it).
async fn partition_longer_than_keepalive_stops_machine_and_machine_exits() -> Result<()> {
    let keepalive = short_keepalive();
    let system = relayed(keepalive, LinkFaults::default());
    let b = B::new(system.clone())?;
    let machines = running(&b, 1, Services::new().with("Probe", Probe)).await?;
    let m = &machines[0];
    let pid = m.info().await?.pid;
    let relay = system.relay(m).ok_or_else(|| fail("no relay"))?;
    relay.partition(true);
    let cut = Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(30), m.wait(State::Stopped)).await;
    check(
        stopped.is_ok(),
        "machine not stopped 30 s into the partition",
    )?;
    let detected = cut.elapsed();
    let err = m.err().ok_or_else(|| fail("no machine error"))?;
    check(
        err.kind() == Kind::Unavailable && err.to_string().contains("failed keepalives"),
        format!("the driver's error does not say keepalives failed: {err}"),
    )?;
    // The machine waits the timeout plus a period and an rpc timeout (3.2 s) from the last
    // keepalive it heard, then exits.
    let exited = eventually(Duration::from_secs(30), || gone(pid)).await;
    let exit_after = cut.elapsed();
    if !exited {
        sigkill(pid);
    }
    check(exited, "the machine process outlived the partition by 30 s")?;
    println!(
        "    driver stopped the machine {detected:.2?} into the partition; the process exited \
         {exit_after:.2?} into it (keepalive timeout {:?})",
        keepalive.timeout
    );
    b.shutdown().await;
    Ok(())
}

/// A machine killed while it streams a reply: the reader's next read fails (it does not hang
/// until a keepalive timeout, here 30 s), with a network or unavailable error.
async fn kill_machine_mid_stream_reader_errors_promptly() -> Result<()> {
    let mut keepalive = short_keepalive();
    keepalive.timeout = Duration::from_secs(30);
    let b = B::new(LocalSystem::builder().keepalive(keepalive).build())?;
    let machines = running(&b, 1, Services::new().with("Probe", Probe)).await?;
    let m = &machines[0];
    let pid = m.info().await?.pid;
    let mut stream: ByteStream = m.call("Probe.flow", &()).await?;
    let mut read = 0usize;
    while read < 8 << 20 {
        let chunk = stream
            .next_chunk()
            .await
            .ok_or_else(|| fail("the endless stream ended"))??;
        read += chunk.len();
    }
    sigkill(pid);
    let killed = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.next_chunk().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Ok(e),
                None => return Err(fail("the stream ended cleanly after its machine died")),
            }
        }
    })
    .await
    .map_err(|_| fail("the reader still waits 10 s after the kill"))??;
    let after = killed.elapsed();
    check(
        matches!(ended.kind(), Kind::Net | Kind::Unavailable),
        format!("reader saw {ended}"),
    )?;
    println!("    the reader failed {after:.2?} after the kill: {ended}");
    b.shutdown().await;
    Ok(())
}
