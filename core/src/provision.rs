//! Getting a binary onto a machine that must run it: from the machine's own store, from a
//! running peer, or streamed from the driver (see [`crate::binary`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use crate::b::B;
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
/// it has it, else from a running peer that runs it, else from the driver.
pub(crate) async fn provide_binary(
    machine: &Machine,
    supervisor: &SupervisorClient,
    binary: &Binary,
    b: &B,
    keepalive: KeepaliveConfig,
    bound: Duration,
) -> Result<()> {
    let stored = supervisor
        .usebinary(&binary.digest)
        .internal()
        .timeout(keepalive.rpc_timeout)
        .await?;
    if stored {
        tracing::debug!(machine = %machine.addr(), "binary found in the machine's store");
        return Ok(());
    }
    if let Some(peer) = b.peer_running(&binary.digest, machine.addr()) {
        // A peer that hangs leaves half the bound for the upload.
        match fetch_from(supervisor, peer, &binary.digest, bound / 2).await {
            Ok(()) => {
                tracing::info!(machine = %machine.addr(), %peer, "binary fetched from a peer");
                return Ok(());
            }
            Err(e) => tracing::warn!(
                machine = %machine.addr(), %peer, error = %e,
                "fetching the binary from a peer failed; uploading it"
            ),
        }
    }
    upload(machine, supervisor, binary, b).await
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
    supervisor
        .setbinary(&binary.digest)
        .internal()
        .body(move || ByteStream::from_file(path.clone()))
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
