//! Getting a binary onto a machine that must run it: from the machine's own store, from a
//! running peer, or streamed from the driver (see [`crate::binary`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use crate::b::{UploadClaim, B};
use crate::error::{Error, Kind, Result};
use crate::keepalive::KeepaliveConfig;
use crate::machine::Machine;
use crate::stream::ByteStream;
use crate::supervisor::{FetchBinary, SupervisorClient};

/// A binary machines must run, and its digest.
#[derive(Debug, Clone)]
pub(crate) struct Binary {
    pub(crate) path: PathBuf,
    pub(crate) digest: String,
}

/// Gets the plan's binary onto the machine for its next exec: from the machine's own store if
/// it has it, else from a peer that runs it, else from the driver. Of machines booted together,
/// one is given the binary by the driver (the returned claim, which the boot holds until the
/// machine runs the binary) while the others wait, up to half of `bound`, to fetch it from a
/// peer that runs it.
pub(crate) async fn provide_binary(
    machine: &Machine,
    supervisor: &SupervisorClient,
    binary: &Binary,
    b: &B,
    keepalive: KeepaliveConfig,
    bound: Duration,
) -> Result<Option<UploadClaim>> {
    let in_store = || async {
        supervisor
            .usebinary(&binary.digest)
            .internal()
            .timeout(keepalive.rpc_timeout)
            .await
    };
    if in_store().await? {
        tracing::debug!(machine = %machine.addr(), "binary found in the machine's store");
        return Ok(None);
    }
    let give_up = crate::deadline::from_now(bound);
    // Half of what is left: a peer that hangs leaves the rest for the upload.
    let half_left = || give_up.saturating_duration_since(Instant::now()) / 2;
    let stop_waiting = crate::deadline::from_now(bound / 2);
    let mut waited = false;
    loop {
        // Created before looking, so news that comes while looking is not missed.
        let news = b.binary_news_wait();
        if let Some(peer) = b.peer_with(&binary.digest, machine.addr()) {
            // A peer sharing this machine's store (one host) put the binary there meanwhile.
            // (A failed look is no reason to give up: the peer is there.)
            if waited && in_store().await.unwrap_or(false) {
                return Ok(None);
            }
            match fetch_from(supervisor, peer, &binary.digest, half_left()).await {
                Ok(()) => {
                    tracing::info!(machine = %machine.addr(), %peer, "binary fetched from a peer");
                    return Ok(None);
                }
                Err(e) => {
                    tracing::warn!(
                        machine = %machine.addr(), %peer, error = %e,
                        "fetching the binary from a peer failed; uploading it"
                    );
                    break;
                }
            }
        }
        if let Some(claim) = b.claim_upload(&binary.digest) {
            // The last holder may have booted between the look for a peer and the claim.
            if b.peer_with(&binary.digest, machine.addr()).is_some() {
                drop(claim);
                continue;
            }
            upload(machine, supervisor, binary, b).await?;
            return Ok(Some(claim));
        }
        if Instant::now() >= stop_waiting {
            break;
        }
        // Another machine is being given the binary: fetch it from that one once it runs it
        // (or claim the upload if that one fails).
        waited = true;
        tokio::select! {
            _ = news => {}
            _ = tokio::time::sleep_until(stop_waiting) => {}
        }
    }
    upload(machine, supervisor, binary, b).await?;
    Ok(None)
}

async fn fetch_from(
    supervisor: &SupervisorClient,
    peer: SocketAddr,
    digest: &str,
    bound: Duration,
) -> Result<()> {
    let fetch = FetchBinary {
        peer: peer.to_string(),
        digest: digest.to_string(),
    };
    supervisor
        .fetchbinary(&fetch)
        .internal()
        .timeout(bound)
        .await
}

/// How often a long upload says how far it got.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// `stream`, logging every [`PROGRESS_EVERY`] how much of its `total` bytes went to `machine`
/// and at what rate.
fn with_progress(stream: ByteStream, machine: std::net::SocketAddr, total: u64) -> ByteStream {
    use futures::StreamExt;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut next_report = started + PROGRESS_EVERY;
    ByteStream::from_stream(stream.inspect(move |chunk| {
        if let Ok(chunk) = chunk {
            sent += chunk.len() as u64;
            let now = Instant::now();
            if now >= next_report {
                next_report = now + PROGRESS_EVERY;
                let mib = sent as f64 / 1048576.0;
                tracing::info!(
                    %machine,
                    "uploading the binary: {mib:.1} of {:.1} MiB ({:.0} MiB/s)",
                    total as f64 / 1048576.0,
                    mib / (now - started).as_secs_f64().max(1e-9)
                );
            }
        }
    }))
}

/// Streams the binary from the driver to the machine.
async fn upload(
    machine: &Machine,
    supervisor: &SupervisorClient,
    binary: &Binary,
    b: &B,
) -> Result<()> {
    let started = Instant::now();
    let total = tokio::fs::metadata(&binary.path)
        .await
        .map_err(|e| Error::new(Kind::Other, format!("{}: {e}", binary.path.display())))?
        .len();
    tracing::info!(
        machine = %machine.addr(), bytes = total,
        "machine runs another binary; uploading {}", binary.path.display()
    );
    let path = binary.path.clone();
    let addr = machine.addr();
    supervisor
        .setbinary(&binary.digest)
        .internal()
        .body(move || with_progress(ByteStream::from_file(path.clone()), addr, total))
        .await?;
    b.count_upload(total);
    let secs = started.elapsed().as_secs_f64();
    let mib = total as f64 / 1048576.0;
    tracing::info!(
        machine = %machine.addr(),
        "binary uploaded: {mib:.1} MiB in {secs:.2} s ({:.0} MiB/s)",
        mib / secs.max(1e-9)
    );
    Ok(())
}
