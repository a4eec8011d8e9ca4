//! bigmachine's local system: every machine is a process of the driver's own binary, run with
//! the driver's arguments, on this host.
//!
//! Starting a machine: the driver issues the machine's credentials and writes them to the
//! machine's stdin, a pipe (nothing on disk; the CA key never leaves the driver); it starts
//! the very binary it runs (`running_binary()`, named as the driver is) with the machine
//! environment (see [`bigmachine_supervisor::run`]) and reads
//! the machine's address from its first line of the handshake on stdout. From then on every
//! line the machine writes to stdout or stderr reaches the driver's stderr, prefixed with the
//! machine's address, in order; shutting the system down waits until the last line is out.
//! One thread of its own writes those lines: a slow stderr holds back the machines' output,
//! never the runtime's worker threads.
//!
//! When a machine's process ends, the driver stops the machine with an error that says how:
//! its exit status, the signal that killed it, or [`Kind::Oom`] when it ran out of memory (an
//! allocation failure reported on its stderr, or the kernel's OOM killer naming its pid).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod forward;
mod oom;

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bigmachine_core::{
    running_binary, Authority, Error, KeepaliveConfig, Kind, Launched, Result, System,
};
use bigmachine_supervisor::{
    ADDR_MARKER, CREDENTIALS_ON_STDIN, ENV_CREDENTIALS, ENV_DRIVER_PID, ENV_KEEPALIVE_MS,
    ENV_MAXPROCS, ENV_MODE, ENV_STORE, ENV_SYSTEM,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// How long a new machine may take to report its address.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for machines to exit and their output to drain before killing them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Running {
    pid: u32,
    watcher: JoinHandle<()>,
    /// Asks the watcher to kill the process through its handle (never by a pid that may have
    /// been reused).
    kill: oneshot::Sender<()>,
}

impl Running {
    /// Kills the process (if it still runs) and waits for its watcher to finish.
    async fn kill(self) {
        let _ = self.kill.send(());
        let _ = self.watcher.await;
    }
}

#[derive(Debug)]
struct Inner {
    settings: LocalSystemBuilder,
    running: Mutex<Vec<Running>>,
    /// Numbers machines, each once, however many `start`s run at once.
    next: std::sync::atomic::AtomicUsize,
}

/// Machines as local processes. Cheap to clone; clones share the machines.
#[derive(Debug, Clone)]
pub struct LocalSystem {
    inner: Arc<Inner>,
}

impl Default for LocalSystem {
    fn default() -> Self {
        Self::new()
    }
}

/// The settings of a [`LocalSystem`]; [`LocalSystemBuilder::build`] makes it.
#[derive(Debug, Clone)]
pub struct LocalSystemBuilder {
    keepalive: KeepaliveConfig,
    maxprocs: usize,
    stores: Option<PathBuf>,
    env: Vec<(String, String)>,
}

impl LocalSystemBuilder {
    /// Keepalive settings. Default: a keepalive every second; a machine is lost (and exits)
    /// after 10 s without them; 5 s allowed to each keepalive call.
    pub fn keepalive(mut self, keepalive: KeepaliveConfig) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// Processors per machine: what machines report, and the worker threads of a machine's
    /// tokio runtime (`TOKIO_WORKER_THREADS`); at least 1. Default: every processor of the host.
    pub fn maxprocs(mut self, maxprocs: usize) -> Self {
        self.maxprocs = maxprocs.max(1);
        self
    }

    /// Gives every machine a binary store of its own under `dir`, as if each ran on a host of
    /// its own: a machine that needs another binary then fetches it from a peer rather than
    /// finding it in the store. Default: the machines of a host share one store.
    pub fn isolated_stores(mut self, dir: impl Into<PathBuf>) -> Self {
        self.stores = Some(dir.into());
        self
    }

    /// Sets `key` to `value` in every machine's environment (machines otherwise inherit the
    /// driver's), e.g. `BIGMACHINE_CONGESTION=bbr` or `RUST_LOG`.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The local system.
    pub fn build(self) -> LocalSystem {
        LocalSystem {
            inner: Arc::new(Inner {
                settings: self,
                running: Mutex::new(Vec::new()),
                next: std::sync::atomic::AtomicUsize::new(0),
            }),
        }
    }
}

impl LocalSystem {
    /// A local system with the default settings (see [`LocalSystemBuilder`]).
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// The settings of a new local system, at their defaults.
    pub fn builder() -> LocalSystemBuilder {
        let mut keepalive = KeepaliveConfig::default();
        keepalive.period = Duration::from_secs(1);
        keepalive.timeout = Duration::from_secs(10);
        keepalive.rpc_timeout = Duration::from_secs(5);
        LocalSystemBuilder {
            keepalive,
            maxprocs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            stores: None,
            env: Vec::new(),
        }
    }

    /// Process ids of the machines started whose processes have not been seen to end.
    pub fn pids(&self) -> Vec<u32> {
        self.lock()
            .iter()
            .filter(|r| !r.watcher.is_finished())
            .map(|r| r.pid)
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Running>> {
        self.inner.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts machine `index`; returns it and its process id.
    async fn launch(&self, authority: &Authority, index: usize) -> Result<(Launched, u32)> {
        let settings = &self.inner.settings;
        let name = format!("local-{index}");
        let creds = authority.issue(&name)?.to_pem();
        // The very file this driver runs (and hashed), named as the driver is named.
        let exe = running_binary()?;
        let mut command = Command::new(&exe);
        if let Some(arg0) = std::env::args_os().next() {
            command.arg0(arg0);
        }
        command.envs(settings.env.iter().map(|(k, v)| (k, v)));
        if let Some(stores) = &settings.stores {
            command.env(ENV_STORE, stores.join(format!("machine-{index}")));
        }
        let spawned = command
            .args(std::env::args_os().skip(1))
            .env(ENV_MODE, "machine")
            .env(ENV_SYSTEM, "local")
            // The machine ends with this process, not a keepalive timeout later.
            .env(ENV_DRIVER_PID, std::process::id().to_string())
            // Written to the process's stdin below: nothing on disk.
            .env(ENV_CREDENTIALS, CREDENTIALS_ON_STDIN)
            .env(ENV_MAXPROCS, settings.maxprocs.to_string())
            .env("TOKIO_WORKER_THREADS", settings.maxprocs.to_string())
            .env(
                ENV_KEEPALIVE_MS,
                settings.keepalive.timeout.as_millis().to_string(),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                return Err(Error::new(
                    Kind::Unavailable,
                    format!("spawn {}: {e}", exe.display()),
                ));
            }
        };
        let pid = child.id().unwrap_or(0);
        // A few KiB into a fresh pipe, then closed: the machine reads them to their end.
        let handed = match child.stdin.take() {
            Some(mut stdin) => stdin.write_all(creds.as_bytes()).await,
            None => Err(std::io::Error::other("stdin is not piped")),
        };
        if let Err(e) = handed {
            // The process died first (or cannot read its stdin and will fail for want of
            // credentials): the handshake reports how it ended.
            tracing::debug!(pid, error = %e, "credentials not handed over");
        }
        // What the kernel logs from now on, to tell an out-of-memory kill of this process.
        let kernel_log = oom::KernelLog::from_now();
        let (stdout, stderr) = match (child.stdout.take(), child.stderr.take()) {
            (Some(o), Some(e)) => (BufReader::new(o), BufReader::new(e)),
            _ => return Err(Error::new(Kind::Other, "machine output is not piped")),
        };
        // stderr is read from the start, so a machine that logs much before it reports its
        // address never blocks on a full pipe.
        let (addr_tx, addr_rx) = watch::channel(None);
        let stderr = tokio::spawn(pump(stderr, pid, addr_rx.clone()));
        let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(stdout))
            .await
            .unwrap_or_else(|_| {
                Err(Error::new(
                    Kind::DeadlineExceeded,
                    format!("no address within {HANDSHAKE_TIMEOUT:?}"),
                ))
            });
        let (addr, early, stdout) = match handshake {
            Ok(found) => found,
            Err(why) => {
                let _ = child.start_kill();
                let status = child.wait().await.ok();
                return Err(Error::new(
                    Kind::Unavailable,
                    format!("machine process {pid} did not start (status {status:?})"),
                )
                .caused_by(why));
            }
        };
        for line in early {
            forward::line(addr, &line).await;
        }
        addr_tx.send_replace(Some(addr));
        let (exit_tx, exit_rx) = watch::channel(None::<Error>);
        let (kill, killed) = oneshot::channel();
        let watch = Watch {
            pid,
            kernel_log,
            addr: addr_rx,
            stdout,
            stderr,
            exit: exit_tx,
            killed,
        };
        let watcher = tokio::spawn(watch_child(child, watch));
        let mut running = self.lock();
        // Machines that ended are forgotten.
        running.retain(|r| !r.watcher.is_finished());
        running.push(Running { pid, watcher, kill });
        drop(running);
        tracing::debug!(%addr, pid, "machine process started");
        let launched = Launched {
            addr,
            name,
            maxprocs: settings.maxprocs,
            exited: Box::pin(exited(exit_rx.clone())),
            // The end is reported once the output is written.
            drained: Some(Box::pin(exited(exit_rx).map(drop))),
        };
        Ok((launched, pid))
    }
}

/// Reads stdout until the address line; returns the address, the lines printed before it, and
/// the rest of the stream.
async fn handshake(
    mut stdout: BufReader<ChildStdout>,
) -> Result<(SocketAddr, Vec<String>, BufReader<ChildStdout>)> {
    let mut early = Vec::new();
    loop {
        let Some(line) = next_line(&mut stdout).await? else {
            return Err(Error::new(
                Kind::Unavailable,
                "machine exited before reporting its address",
            ));
        };
        if let Some(addr) = line.strip_prefix(ADDR_MARKER) {
            let addr = addr.trim().parse().map_err(|e| {
                Error::fatal(
                    Kind::Invalid,
                    format!("machine reported address {addr:?}: {e}"),
                )
            })?;
            return Ok((addr, early, stdout));
        }
        early.push(line);
    }
}

/// The longest line forwarded as one; longer output is forwarded in pieces of this size, so a
/// machine printing without newlines cannot make the driver buffer without bound.
const MAX_LINE: u64 = 64 << 10;

async fn next_line(reader: &mut (impl AsyncBufRead + Unpin)) -> Result<Option<String>> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    if reader.take(MAX_LINE).read_until(b'\n', &mut buf).await? == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// Forwards `reader` line by line until it ends; returns whether a line reported a failed
/// allocation.
/// Lines are prefixed with the machine's address once `addr` holds it, with its pid before.
async fn pump(
    mut reader: impl AsyncBufRead + Unpin,
    pid: u32,
    addr: watch::Receiver<Option<SocketAddr>>,
) -> bool {
    let mut alloc_failed = false;
    loop {
        match next_line(&mut reader).await {
            Ok(Some(line)) if line.starts_with(ADDR_MARKER) => {} // a re-executed machine's handshake
            Ok(Some(line)) => {
                alloc_failed |= oom::is_allocation_failure(&line);
                let prefix = *addr.borrow();
                match prefix {
                    Some(a) => forward::line(a, &line).await,
                    None => forward::line(format!("machine pid {pid}"), &line).await,
                }
            }
            Ok(None) => return alloc_failed,
            Err(e) => {
                tracing::debug!(pid, error = %e, "machine output unreadable");
                return alloc_failed;
            }
        }
    }
}

/// What the watcher of a machine's process needs.
struct Watch {
    pid: u32,
    /// The kernel log since the process started.
    kernel_log: Option<oom::KernelLog>,
    addr: watch::Receiver<Option<SocketAddr>>,
    stdout: BufReader<ChildStdout>,
    stderr: JoinHandle<bool>,
    exit: watch::Sender<Option<Error>>,
    /// Kill the process.
    killed: oneshot::Receiver<()>,
}

async fn watch_child(mut child: Child, watch: Watch) {
    let Watch {
        pid,
        kernel_log,
        addr,
        stdout,
        stderr: err,
        exit,
        killed,
    } = watch;
    let alloc_failed = Arc::new(AtomicBool::new(false));
    let out = tokio::spawn(pump(stdout, pid, addr.clone()));
    let flag = alloc_failed.clone();
    let err = async move {
        if err.await.unwrap_or(false) {
            flag.store(true, Ordering::Relaxed);
        }
    };
    let mut ours = false;
    let status = tokio::select! {
        status = child.wait() => status,
        Ok(()) = killed => {
            // Not yet waited for, the child still holds its pid: the kill cannot hit another.
            ours = true;
            let _ = child.start_kill();
            child.wait().await
        }
    };
    // The output ends when the process does (unless it left children holding the pipes).
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        let _ = out.await;
        let _ = err.await;
        // Written before the machine's end is reported (and before shutdown returns).
        forward::flush().await;
    })
    .await;
    let oom_killed = match (&status, kernel_log) {
        (Ok(status), Some(log)) if status.signal() == Some(libc::SIGKILL) && !ours => {
            tokio::task::spawn_blocking(move || log.killed(pid))
                .await
                .unwrap_or(false)
        }
        _ => false,
    };
    let reason = match status {
        Ok(status) => exit_error(
            pid,
            status,
            alloc_failed.load(Ordering::Relaxed),
            oom_killed,
        ),
        Err(e) => Error::new(
            Kind::Unavailable,
            format!("machine process {pid}: wait: {e}"),
        ),
    };
    tracing::debug!(addr = ?*addr.borrow(), pid, %reason, "machine process ended");
    exit.send_replace(Some(reason));
}

async fn exited(mut rx: watch::Receiver<Option<Error>>) -> Error {
    match rx.wait_for(Option::is_some).await {
        Ok(reason) => reason
            .clone()
            .unwrap_or_else(|| Error::new(Kind::Unavailable, "machine process ended")),
        Err(_) => Error::new(Kind::Unavailable, "machine process watcher ended"),
    }
}

/// How a machine's process ended, as an error.
fn exit_error(pid: u32, status: ExitStatus, alloc_failed: bool, oom_killed: bool) -> Error {
    match status.signal() {
        Some(libc::SIGKILL) if oom_killed => Error::fatal(
            Kind::Oom,
            format!("machine process {pid} was killed by the kernel's out-of-memory killer"),
        ),
        Some(libc::SIGABRT) if alloc_failed => Error::fatal(
            Kind::Oom,
            format!("machine process {pid} ran out of memory (an allocation failed)"),
        ),
        Some(signal) => Error::new(
            Kind::Unavailable,
            format!(
                "machine process {pid} was killed by signal {signal} ({})",
                signal_name(signal)
            ),
        ),
        None => match status.code() {
            Some(0) => Error::new(Kind::Unavailable, format!("machine process {pid} exited")),
            code => Error::new(
                Kind::Unavailable,
                format!(
                    "machine process {pid} exited with status {}",
                    code.unwrap_or(-1)
                ),
            ),
        },
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGINT => "SIGINT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGHUP => "SIGHUP",
        _ => "signal",
    }
}

impl System for LocalSystem {
    fn name(&self) -> &str {
        "local"
    }

    fn keepalive(&self) -> KeepaliveConfig {
        self.inner.settings.keepalive
    }

    fn maxprocs(&self) -> usize {
        self.inner.settings.maxprocs
    }

    fn start<'a>(
        &'a self,
        authority: &'a Authority,
        n: usize,
    ) -> BoxFuture<'a, Result<Vec<Launched>>> {
        Box::pin(async move {
            let base = self
                .inner
                .next
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            let launches = (0..n).map(|i| self.launch(authority, base + i));
            let outcomes = futures::future::join_all(launches).await;
            if outcomes.iter().all(Result::is_ok) {
                return outcomes.into_iter().map(|o| o.map(|(l, _)| l)).collect();
            }
            // One failed: the start fails, and the machines it did launch go at once rather
            // than at their keepalive timeout.
            let pids: Vec<u32> = outcomes
                .iter()
                .filter_map(|o| o.as_ref().ok().map(|(_, pid)| *pid))
                .collect();
            let doomed: Vec<Running> = {
                let mut running = self.lock();
                let (doomed, kept) = std::mem::take(&mut *running)
                    .into_iter()
                    .partition(|r| pids.contains(&r.pid));
                *running = kept;
                doomed
            };
            futures::future::join_all(doomed.into_iter().map(Running::kill)).await;
            let failed = outcomes.iter().filter(|o| o.is_err()).count();
            let first = outcomes
                .into_iter()
                .find_map(Result::err)
                .unwrap_or_else(|| Error::new(Kind::Other, "a launch failed"));
            Err(Error::new(
                first.kind(),
                format!("{failed} of {n} machines did not start (the others were stopped)"),
            )
            .caused_by(first))
        })
    }

    /// Waits for every machine process to exit and its output to drain (machines exit once
    /// the driver shuts them down), killing those still running after a while.
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let running: Vec<Running> = std::mem::take(&mut *self.lock());
            let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
            for mut r in running {
                if tokio::time::timeout_at(deadline, &mut r.watcher)
                    .await
                    .is_err()
                {
                    tracing::warn!(pid = r.pid, "machine still running at shutdown; killing it");
                    r.kill().await;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reasons_name_how_the_process_died() {
        let killed = exit_error(42, ExitStatus::from_raw(libc::SIGKILL), false, false);
        assert_eq!(killed.kind(), Kind::Unavailable);
        assert!(killed.message().contains("SIGKILL"), "{killed}");
        let aborted_oom = exit_error(42, ExitStatus::from_raw(libc::SIGABRT), true, false);
        assert_eq!(aborted_oom.kind(), Kind::Oom);
        let code = exit_error(42, ExitStatus::from_raw(3 << 8), false, false);
        assert!(code.message().contains("status 3"), "{code}");
    }
}
