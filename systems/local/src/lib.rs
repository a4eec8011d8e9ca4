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
//! allocation failure reported on its stderr, or the kernel's OOM killer naming its pid), with
//! its peak memory, its last lines and the panic that killed it.
//!
//! # Layout
//!
//! - `forward`: machine output on its way to the driver's stderr.
//! - `tail`: a machine's last lines and last panic record, taken from its output.
//! - `reap`: seeing a machine's process end before it is reaped, to read its peak memory.
//! - `oom`: recognizing a machine that ran out of memory.
#![deny(missing_docs)]
// `unsafe` lives in `reap` alone (system calls, a descriptor handed to the runtime), each block
// saying why it is sound.
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod forward;
mod oom;
mod reap;
mod tail;

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bigmachine_core::{
    running_binary, Authority, Error, KeepaliveConfig, Kind, Launched, Result, Severity, System,
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

use tail::{Remains, Tail};

/// How long a new machine may take to report its address.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for machines to exit and their output to drain before killing them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Running {
    pid: u32,
    addr: SocketAddr,
    /// The machine's last lines.
    tail: Tail,
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
        let tail = Tail::default();
        let stderr = tokio::spawn(pump(stderr, pid, addr_rx.clone(), tail.clone(), true));
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
                // What it printed (a panic, say) says why, once its stderr has drained.
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, stderr).await;
                let remains = tail.remains();
                let panic = remains
                    .panic
                    .as_ref()
                    .map_or_else(String::new, |p| format!("; it panicked: {}", p.summary()));
                return Err(Error::new(
                    Kind::Unavailable,
                    format!(
                        "machine process {pid} did not start (status {status:?}){panic}{}",
                        remains.quoted_lines()
                    ),
                )
                .caused_by(why));
            }
        };
        for line in early {
            if tail.line(&line, false) {
                forward::line(addr, &line).await;
            }
        }
        addr_tx.send_replace(Some(addr));
        let (exit_tx, exit_rx) = watch::channel(None::<Error>);
        let (kill, killed) = oneshot::channel();
        let kept = tail.clone();
        let watch = Watch {
            pid,
            kernel_log,
            addr: addr_rx,
            tail,
            stdout,
            stderr,
            exit: exit_tx,
            killed,
        };
        let watcher = tokio::spawn(watch_child(child, watch));
        let mut running = self.lock();
        // Machines that ended are forgotten.
        running.retain(|r| !r.watcher.is_finished());
        running.push(Running {
            pid,
            addr,
            tail: kept,
            watcher,
            kill,
        });
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

/// Forwards `reader` line by line until it ends, noting each in `tail` (and taking panic
/// records out of it if it is the machine's stderr); returns whether a line reported a failed
/// allocation. Lines are prefixed with the machine's address once `addr` holds it, with its pid before.
async fn pump(
    mut reader: impl AsyncBufRead + Unpin,
    pid: u32,
    addr: watch::Receiver<Option<SocketAddr>>,
    tail: Tail,
    from_stderr: bool,
) -> bool {
    let mut alloc_failed = false;
    loop {
        match next_line(&mut reader).await {
            Ok(Some(line)) if line.starts_with(ADDR_MARKER) => {} // a re-executed machine's handshake
            Ok(Some(line)) if !tail.line(&line, from_stderr) => {} // a panic's record, kept
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
    /// Its last lines, last panic and memory.
    tail: Tail,
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
        tail,
        stdout,
        stderr: err,
        exit,
        killed,
    } = watch;
    let alloc_failed = Arc::new(AtomicBool::new(false));
    let out = tokio::spawn(pump(stdout, pid, addr.clone(), tail.clone(), false));
    let flag = alloc_failed.clone();
    let err = async move {
        if err.await.unwrap_or(false) {
            flag.store(true, Ordering::Relaxed);
        }
    };
    let mut ours = false;
    // Seen to end before it is reaped where pidfds exist, so that its peak memory can be read.
    let mut peak_rss = None;
    let status = match reap::ExitWatch::open(pid) {
        Some(watch) => {
            let exited = watch.exited();
            tokio::pin!(exited);
            peak_rss = tokio::select! {
                peak = &mut exited => peak,
                Ok(()) = killed => {
                    // Not yet reaped, the child still holds its pid: the kill cannot hit another.
                    ours = true;
                    let _ = child.start_kill();
                    exited.await
                }
            };
            child.wait().await
        }
        None => tokio::select! {
            status = child.wait() => status,
            Ok(()) = killed => {
                ours = true;
                let _ = child.start_kill();
                child.wait().await
            }
        },
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
                .unwrap_or(None)
        }
        _ => None,
    };
    let reason = match status {
        Ok(status) => exit_error(
            pid,
            Death {
                status,
                alloc_failed: alloc_failed.load(Ordering::Relaxed),
                oom_killed,
                peak_rss,
                remains: tail.remains(),
            },
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

/// What is known of the end of a machine's process.
struct Death {
    status: ExitStatus,
    /// A line of its output reported a failed allocation.
    alloc_failed: bool,
    /// The kernel's report of its out-of-memory kill, if it was one.
    oom_killed: Option<String>,
    /// Its peak resident size in bytes, if known.
    peak_rss: Option<u64>,
    /// Its last lines and last panic.
    remains: Remains,
}

/// How a machine's process ended, as an error. One that did not exit cleanly also carries its
/// peak memory (when it died of a signal), its last lines, and, when it died of a panic (an
/// abort, or exit status 101), that panic, with the panic's backtrace as the error's cause.
fn exit_error(pid: u32, death: Death) -> Error {
    let Death {
        status,
        alloc_failed,
        oom_killed,
        peak_rss,
        remains,
    } = death;
    let peak = match (status.signal(), peak_rss) {
        (Some(_), Some(bytes)) => format!(
            "; its peak resident memory was {:.1} MiB",
            bytes as f64 / f64::from(1u32 << 20)
        ),
        _ => String::new(),
    };
    let (kind, severity, how) = match (status.signal(), oom_killed) {
        (Some(libc::SIGKILL), Some(report)) => (
            Kind::Oom,
            Severity::Fatal,
            format!("was killed by the kernel's out-of-memory killer ({report})"),
        ),
        (Some(libc::SIGABRT), _) if alloc_failed => (
            Kind::Oom,
            Severity::Fatal,
            "ran out of memory (an allocation failed)".to_string(),
        ),
        (Some(signal), _) => (
            Kind::Unavailable,
            Severity::Unknown,
            format!("was killed by signal {signal} ({})", signal_name(signal)),
        ),
        (None, _) if status.code() == Some(0) => {
            // A clean exit (the driver shut it down): nothing more to say.
            return Error::new(Kind::Unavailable, format!("machine process {pid} exited"));
        }
        (None, _) => (
            Kind::Unavailable,
            Severity::Unknown,
            format!("exited with status {}", status.code().unwrap_or(-1)),
        ),
    };
    // A panic recorded earlier (one a handler's call caught, say) is no cause of another death.
    let died_of_panic = status.signal() == Some(libc::SIGABRT) || status.code() == Some(101);
    let panic = remains
        .panic
        .clone()
        .filter(|_| died_of_panic && !alloc_failed);
    let panicked = panic
        .as_ref()
        .map_or_else(String::new, |p| format!("; it panicked: {}", p.summary()));
    let lines = if remains.lines.is_empty() {
        String::new()
    } else {
        format!("; its last lines:{}", remains.quoted_lines())
    };
    let error = Error::new(
        kind,
        format!("machine process {pid} {how}{peak}{panicked}{lines}"),
    )
    .with_severity(severity);
    match panic {
        Some(panic) => error.caused_by(Error::new(
            Kind::Other,
            format!(
                "the panic's backtrace:\n{}",
                panic.backtrace_head(BACKTRACE_BYTES)
            ),
        )),
        None => error,
    }
}

/// The most bytes of a panic's backtrace a machine's death error carries (such errors are
/// kept, logged, and copied into the errors of calls to the machine).
const BACKTRACE_BYTES: usize = 4 << 10;

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

    fn recent_lines(&self, addr: SocketAddr) -> Option<Vec<String>> {
        let running = self.lock();
        let machine = running.iter().find(|r| r.addr == addr)?;
        Some(machine.tail.remains().lines)
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
    use bigmachine_supervisor::PanicRecord;

    #[test]
    fn exit_reasons_name_how_the_process_died() {
        let death = |status: i32, alloc_failed, oom_killed: Option<&str>| Death {
            status: ExitStatus::from_raw(status),
            alloc_failed,
            oom_killed: oom_killed.map(str::to_string),
            peak_rss: None,
            remains: Remains::default(),
        };
        let killed = exit_error(42, death(libc::SIGKILL, false, None));
        assert_eq!(killed.kind(), Kind::Unavailable);
        assert!(killed.message().contains("SIGKILL"), "{killed}");
        let aborted_oom = exit_error(42, death(libc::SIGABRT, true, None));
        assert_eq!(aborted_oom.kind(), Kind::Oom);
        let kernel_oom = exit_error(42, death(libc::SIGKILL, false, Some("Killed process 42")));
        assert_eq!(kernel_oom.kind(), Kind::Oom);
        assert!(
            kernel_oom.message().contains("(Killed process 42)"),
            "{kernel_oom}"
        );
        let code = exit_error(42, death(3 << 8, false, None));
        assert!(code.message().contains("status 3"), "{code}");
    }

    #[test]
    fn a_death_carries_the_last_lines_the_panic_and_the_memory() {
        let panic = PanicRecord {
            thread: "worker".into(),
            location: "src/work.rs:7:9".into(),
            message: "no more widgets".into(),
            backtrace: "   0: work::run".into(),
        };
        let death = |signal: i32| Death {
            status: ExitStatus::from_raw(signal),
            alloc_failed: false,
            oom_killed: None,
            peak_rss: Some(300 << 20),
            remains: Remains {
                lines: vec!["first".into(), "last words".into()],
                panic: Some(panic.clone()),
            },
        };
        let aborted = exit_error(7, death(libc::SIGABRT));
        let text = aborted.to_string();
        for want in [
            "SIGABRT",
            "300.0 MiB",
            "it panicked: thread 'worker' panicked at src/work.rs:7:9: no more widgets",
            "| last words",
        ] {
            assert!(text.contains(want), "{want:?} not in {text}");
        }
        let cause = aborted.cause().map(ToString::to_string).unwrap_or_default();
        assert!(cause.contains("work::run"), "{cause}");
        // Killed otherwise: an earlier panic (one a call caught) is not blamed.
        let killed = exit_error(7, death(libc::SIGKILL)).to_string();
        assert!(!killed.contains("no more widgets"), "{killed}");
        assert!(killed.contains("| last words"), "{killed}");
        // A clean exit says nothing more.
        let clean = Death {
            status: ExitStatus::from_raw(0),
            ..death(0)
        };
        assert!(!exit_error(7, clean).to_string().contains("last words"));
    }
}
