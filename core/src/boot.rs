//! Booting an owned machine, the driver's side: reach its Supervisor, give it the binary and
//! environment it must run (re-executing it when needed), and install its services.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::b::B;
use crate::error::{Error, Kind, Result};
use crate::keepalive::KeepaliveConfig;
use crate::machine::Machine;
use crate::provision::{provide_binary, Binary};
use crate::services::ServiceSpec;
use crate::supervisor::{Info, SupervisorClient};

/// Everything a booting machine needs from [`B::start`], computed once for all its machines.
#[derive(Debug)]
pub(crate) struct BootPlan {
    pub(crate) services: Vec<ServiceSpec>,
    pub(crate) environ: Vec<String>,
    pub(crate) args: Option<Vec<String>>,
    /// The binary machines must run.
    pub(crate) binary: Binary,
    /// Whether the machine must exec even if it already runs `digest`.
    pub(crate) exec: bool,
    /// The driver, to find peers to fetch the binary from and to count uploads.
    pub(crate) b: B,
}

/// Whether a boot step's question is worth asking again: a temporary failure, or one question's
/// deadline (each has its own; the boot's bound is the keepalive timeout).
fn worth_asking_again(e: &Error) -> bool {
    e.is_temporary() || e.kind() == Kind::DeadlineExceeded
}

/// Pings `machine` until it answers, for up to the keepalive timeout; tells `failed` of every
/// ping that fails.
pub(crate) async fn reach(
    machine: &Machine,
    keepalive: KeepaliveConfig,
    failed: &(dyn Fn(SocketAddr) + Sync),
) -> Result<()> {
    let supervisor = machine.supervisor();
    let give_up = crate::deadline::from_now(keepalive.timeout);
    let mut wait = Duration::from_millis(5);
    let mut seq = 0u64;
    loop {
        seq += 1;
        let reply = supervisor
            .ping(&seq)
            .internal()
            .timeout(keepalive.rpc_timeout)
            .await;
        match reply {
            Ok(r) if r == seq => return Ok(()),
            Ok(r) => {
                return Err(Error::fatal(
                    Kind::Invalid,
                    format!("ping {seq} answered with {r}"),
                ))
            }
            Err(e) if worth_asking_again(&e) && Instant::now() + wait < give_up => {
                failed(machine.addr());
                tracing::debug!(machine = %machine.addr(), error = %e, "machine not reachable yet");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
            }
            Err(e) => {
                return Err(Error::new(
                    Kind::Unavailable,
                    format!("machine {} did not answer pings", machine.addr()),
                )
                .caused_by(e))
            }
        }
    }
}

/// Boots a machine that answers: makes it run the plan's binary (and environment, arguments),
/// then installs the plan's services.
pub(crate) async fn boot(
    machine: &Machine,
    plan: &BootPlan,
    keepalive: KeepaliveConfig,
) -> Result<()> {
    let supervisor = machine.supervisor();
    let rpc = keepalive.rpc_timeout;
    // The machine answered a ping; a busy one may still miss one call's deadline.
    let mut info = answer(machine, &supervisor, keepalive, |_| true, "did not answer").await?;
    let upload = info.digest != plan.binary.digest;
    // Held until this machine runs the binary, so that machines booted with it fetch it from
    // this one rather than from the driver.
    let mut upload_claim = None;
    if upload || plan.exec {
        if upload {
            let bound = plan.b.boot_timeouts().binary;
            upload_claim = tokio::time::timeout(
                bound,
                provide_binary(
                    machine,
                    &supervisor,
                    &plan.binary,
                    &plan.b,
                    keepalive,
                    bound,
                ),
            )
            .await
            .map_err(|_| {
                Error::deadline_exceeded(
                    &format!("machine {}: getting the binary onto it", machine.addr()),
                    Some(bound),
                )
            })??;
        }
        if !plan.environ.is_empty() {
            supervisor
                .setenv(&plan.environ)
                .internal()
                .timeout(rpc)
                .await?;
        }
        if let Some(args) = &plan.args {
            supervisor.setargs(args).internal().timeout(rpc).await?;
        }
        match supervisor.exec(&()).internal().timeout(rpc).await {
            Ok(()) => {}
            // The machine waits for this reply to be delivered before it closes its
            // connections and re-executes, but a reply can still be lost (a connection that
            // breaks meanwhile): whether the exec happened shows in its incarnation.
            Err(e) if e.kind() == Kind::Net => {
                tracing::debug!(machine = %machine.addr(), error = %e, "exec reply lost");
            }
            Err(e) => return Err(e),
        }
        tracing::debug!(machine = %machine.addr(), "machine re-executing");
        let old = info.incarnation;
        info = answer(
            machine,
            &supervisor,
            keepalive,
            |i| i.incarnation != old,
            "did not come back after exec",
        )
        .await?;
        if info.digest != plan.binary.digest {
            return Err(Error::fatal(
                Kind::Precondition,
                format!(
                    "machine {} runs binary {} after exec, expected {}",
                    machine.addr(),
                    info.digest,
                    plan.binary.digest
                ),
            ));
        }
    }
    machine.booted(info.maxprocs, info.digest);
    // Machines waiting for the binary fetch it from this one now (the claim's release tells
    // them; a machine that had the binary already tells them here).
    drop(upload_claim);
    plan.b.binary_news();
    let install = plan.b.boot_timeouts().install;
    for spec in &plan.services {
        // The deadline travels to the machine, which gives up on the service's init too.
        let call = supervisor.register(spec).internal().timeout(install);
        call.await.map_err(|e| {
            let kind = if e.is(Kind::DeadlineExceeded) {
                Kind::DeadlineExceeded
            } else {
                Kind::Unavailable
            };
            Error::new(
                kind,
                format!(
                    "machine {}: installing service {}",
                    machine.addr(),
                    spec.name
                ),
            )
            .caused_by(e)
        })?;
    }
    Ok(())
}

/// Asks the machine for its [`Info`] until it gives one that `wanted` accepts, through temporary
/// failures, for up to the keepalive timeout; then fails with "machine ADDR `failure`".
async fn answer(
    machine: &Machine,
    supervisor: &SupervisorClient,
    keepalive: KeepaliveConfig,
    wanted: impl Fn(&Info) -> bool,
    failure: &str,
) -> Result<Info> {
    let give_up = crate::deadline::from_now(keepalive.timeout);
    let mut wait = Duration::from_millis(5);
    let mut last = None;
    loop {
        let info = supervisor
            .info(&())
            .internal()
            .timeout(keepalive.rpc_timeout)
            .await;
        match info {
            Ok(info) if wanted(&info) => return Ok(info),
            Ok(_) => {}
            Err(e) if worth_asking_again(&e) && Instant::now() + wait < give_up => last = Some(e),
            Err(e) => return Err(e),
        }
        if Instant::now() + wait >= give_up {
            return Err(Error::new(
                Kind::Unavailable,
                format!("machine {} {failure}", machine.addr()),
            )
            .caused_by(last.unwrap_or_else(|| {
                Error::new(Kind::Unavailable, "it kept answering as its old process")
            })));
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(200));
    }
}
