//! [`Machine`]: one machine of the cluster, its lifecycle, and the calls made to it.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bigmachine_quic::Pool;
use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use bytes::Bytes;

use crate::b::BootPlan;
use crate::call::{Call, Reply, Response};
use crate::error::{Error, Kind, Result};
use crate::keepalive::{KeepaliveConfig, KeepaliveTracker};
use crate::stream::{self, AbortOnDrop, ByteStream};
use crate::supervisor_api::{
    self as api, DiskInfo, FetchBinary, Info, KeepaliveReply, LoadInfo, MemInfo, SUPERVISOR,
};
use crate::wire::{self, decode_error, RequestHeader, Status};

/// The life of a machine. States only move forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    /// Created, not yet booting.
    Unstarted,
    /// Booting: reaching the supervisor, installing services.
    Starting,
    /// Serving calls.
    Running,
    /// Gone; [`Machine::err`] says why.
    Stopped,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unstarted => "unstarted",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopped => "stopped",
        })
    }
}

struct Inner {
    addr: SocketAddr,
    owned: bool,
    maxprocs: AtomicUsize,
    pool: Pool,
    max_reply: u64,
    state: watch::Sender<State>,
    err: Mutex<Option<Error>>,
    stopped: CancellationToken,
    cancel: CancellationToken,
    keepalive_times: Mutex<Vec<Duration>>,
    next_keepalive: Mutex<Option<Instant>>,
    digest: Mutex<Option<String>>,
}

/// A machine of the cluster: a handle, cheap to clone, for calling its services and watching its
/// state.
///
/// Machines come from [`crate::B::start`] (owned: booted and kept alive by this driver) or
/// [`crate::B::dial`] (not owned: someone else's machine, reached by address).
#[derive(Clone)]
pub struct Machine {
    inner: Arc<Inner>,
}

impl fmt::Debug for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Machine")
            .field("addr", &self.inner.addr)
            .field("state", &self.state())
            .field("owned", &self.inner.owned)
            .finish()
    }
}

impl Machine {
    pub(crate) fn new(
        addr: SocketAddr,
        owned: bool,
        maxprocs: usize,
        pool: Pool,
        max_reply: u64,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                addr,
                owned,
                maxprocs: AtomicUsize::new(maxprocs),
                pool,
                max_reply,
                state: watch::Sender::new(State::Unstarted),
                err: Mutex::new(None),
                stopped: CancellationToken::new(),
                cancel: CancellationToken::new(),
                keepalive_times: Mutex::new(Vec::new()),
                next_keepalive: Mutex::new(None),
                digest: Mutex::new(None),
            }),
        }
    }

    /// The address of the machine; other machines reach it with [`crate::B::dial`].
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Whether this driver started the machine (and keeps it alive).
    pub fn owned(&self) -> bool {
        self.inner.owned
    }

    /// Processors available on the machine (0 until it reports them).
    pub fn maxprocs(&self) -> usize {
        self.inner.maxprocs.load(Ordering::Relaxed)
    }

    /// The current state.
    pub fn state(&self) -> State {
        *self.inner.state.borrow()
    }

    /// Waits until the machine reaches `state` or a later one, and returns the state reached.
    /// Waiting for [`State::Running`] returns [`State::Stopped`] if the machine failed to boot.
    pub async fn wait(&self, state: State) -> State {
        let mut rx = self.inner.state.subscribe();
        let reached = rx.wait_for(|s| *s >= state).await.map(|s| *s);
        reached.unwrap_or(State::Stopped)
    }

    /// Why the machine stopped; `None` while it runs (a machine being shut down may report its
    /// reason just before it is Stopped).
    pub fn err(&self) -> Option<Error> {
        lock(&self.inner.err).clone()
    }

    /// Cancels the machine: it is Stopped with a [`Kind::Canceled`] error and its pending calls
    /// fail at once.
    pub fn cancel(&self) {
        self.inner.cancel.cancel();
        self.stop(Error::canceled(format!(
            "machine {} canceled",
            self.inner.addr
        )));
    }

    /// Latencies of the latest keepalive replies, most recent first.
    pub fn keepalive_reply_times(&self) -> Vec<Duration> {
        lock(&self.inner.keepalive_times).clone()
    }

    /// Digest of the binary the machine runs, once it has booted.
    pub fn digest(&self) -> Option<String> {
        lock(&self.inner.digest).clone()
    }

    /// When the next keepalive is due, if the machine is kept alive.
    pub fn next_keepalive(&self) -> Option<Instant> {
        *lock(&self.inner.next_keepalive)
    }

    /// Calls `method` (`"Service.method"`) with `arg`; `.await` the returned [`Call`] for the
    /// reply. The call waits until the machine is Running and fails at once, with
    /// [`Kind::Unavailable`], if it is or becomes Stopped.
    pub fn call<'a, A, R>(&'a self, method: &'a str, arg: &'a A) -> Call<'a, A, R> {
        let (service, method) = method.split_once('.').unwrap_or((method, ""));
        Call::new(self, service, method, arg)
    }

    /// Like [`Machine::call`], retrying temporary failures with back-off (see [`Call::retry`]).
    pub fn retry_call<'a, A, R>(&'a self, method: &'a str, arg: &'a A) -> Call<'a, A, R> {
        self.call(method, arg).retry()
    }

    /// Calls `method` of the service installed as `service` (what generated clients use).
    pub fn call_service<'a, A, R>(
        &'a self,
        service: &'a str,
        method: &'a str,
        arg: &'a A,
    ) -> Call<'a, A, R> {
        Call::new(self, service, method, arg)
    }

    /// Asks the machine to exit and stops it. Pending calls fail.
    pub async fn shutdown(&self) {
        let reason = Error::new(
            Kind::Canceled,
            format!("machine {} shut down", self.inner.addr),
        );
        // Recorded first: the machine's exit may be noticed before the reply arrives.
        self.record(reason.clone());
        if self.state() < State::Stopped && self.inner.owned {
            let shutdown: Result<()> = self
                .call_service(SUPERVISOR, api::SHUTDOWN, &0u64)
                .internal()
                .timeout(Duration::from_secs(2))
                .await;
            if let Err(e) = shutdown {
                tracing::debug!(machine = %self.inner.addr, error = %e, "shutdown call failed");
            }
        }
        self.stop(Error::new(
            Kind::Canceled,
            format!("machine {} shut down", self.inner.addr),
        ));
    }

    /// Moves to Stopped with `err` (the first error recorded wins) and fails pending calls.
    pub(crate) fn stop(&self, err: Error) {
        self.record(err);
        self.inner.state.send_replace(State::Stopped);
        self.inner.stopped.cancel();
        self.inner.pool.close("machine stopped");
    }

    /// Records why the machine stops, unless a reason was recorded before.
    fn record(&self, err: Error) {
        {
            let mut slot = lock(&self.inner.err);
            if slot.is_none() {
                if err.kind() == Kind::Canceled {
                    tracing::debug!(machine = %self.inner.addr, error = %err, "machine stopped");
                } else {
                    tracing::warn!(machine = %self.inner.addr, error = %err, "machine stopped");
                }
                *slot = Some(err);
            }
        }
    }

    fn advance(&self, state: State) {
        self.inner.state.send_if_modified(|s| {
            let forward = *s < state;
            if forward {
                *s = state;
            }
            forward
        });
    }

    fn unavailable(&self) -> Error {
        let e = Error::new(
            Kind::Unavailable,
            format!("machine {} is stopped", self.inner.addr),
        );
        match self.err() {
            Some(cause) => e.caused_by(cause),
            None => e,
        }
    }

    /// Runs one call: waits for Running (unless `internal`), then exchanges request and reply on
    /// a new stream, failing at once if the machine stops meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn invoke(
        &self,
        service: &str,
        method: &str,
        arg: &Bytes,
        types: (u64, u64),
        deadline: Option<Instant>,
        internal: bool,
        body: Option<ByteStream>,
    ) -> Result<Response> {
        if !internal && self.wait(State::Running).await == State::Stopped {
            return Err(self.unavailable());
        }
        tokio::select! {
            biased;
            _ = self.inner.stopped.cancelled() => Err(self.unavailable()),
            reply = self.exchange(service, method, arg, types, deadline, body) => reply,
        }
    }

    async fn exchange(
        &self,
        service: &str,
        method: &str,
        arg: &Bytes,
        (arg_type, reply_type): (u64, u64),
        deadline: Option<Instant>,
        body: Option<ByteStream>,
    ) -> Result<Response> {
        /// Payloads up to this size are sent in the header's write.
        const INLINE: usize = 16 << 10;
        let timeout_us = deadline.map_or(0, |d| {
            (d.saturating_duration_since(Instant::now()).as_micros() as u64).max(1)
        });
        let method_len = service.len() + 1 + method.len();
        let header = RequestHeader {
            flags: if body.is_some() {
                wire::FLAG_STREAM_ARG
            } else {
                0
            },
            method_len: u16::try_from(method_len)
                .ok()
                .filter(|n| usize::from(*n) <= wire::MAX_METHOD_LEN)
                .ok_or_else(|| Error::fatal(Kind::Invalid, "method name too long"))?,
            timeout_us,
            arg_type,
            reply_type,
            payload_len: arg.len() as u64,
        };
        let inline = arg.len() <= INLINE;
        let mut head = Vec::with_capacity(
            wire::REQUEST_HEADER_LEN + method_len + if inline { arg.len() } else { 0 },
        );
        header.encode_into(&mut head);
        head.extend_from_slice(service.as_bytes());
        head.push(b'.');
        head.extend_from_slice(method.as_bytes());

        let conn = self.inner.pool.get().await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        if inline {
            head.extend_from_slice(arg);
            send.write_chunk(head.into()).await?;
        } else {
            send.write_all_chunks(&mut [head.into(), arg.clone()])
                .await?;
        }
        let writer = match body {
            Some(body) => Some(AbortOnDrop(tokio::spawn(stream::write_raw(send, body)))),
            None => {
                send.finish()?;
                None
            }
        };
        let (status, payload) = wire::read_reply(&mut recv, self.inner.max_reply).await?;
        match status {
            Status::Ok | Status::Stream => Ok(Response {
                status,
                payload,
                recv,
                writer,
            }),
            Status::MethodError => Err(Error::new(
                Kind::Remote,
                format!("{service}.{method} on {}", self.inner.addr),
            )
            .caused_by(decode_error(&payload))),
            Status::ServerError => Err(decode_error(&payload)),
        }
    }

    async fn supervisor<A, R>(&self, method: &str, arg: &A, timeout: Option<Duration>) -> Result<R>
    where
        A: crate::codec::Encode + Sync,
        R: Reply,
    {
        let call = self.call_service(SUPERVISOR, method, arg).internal();
        match timeout {
            Some(t) => call.timeout(t).await,
            None => call.await,
        }
    }

    /// Boots an owned machine and keeps it alive until it stops: the driver's side of a
    /// machine's life. `exited` completes when the system sees the machine die.
    pub(crate) async fn run_owned(
        self,
        plan: Arc<BootPlan>,
        keepalive: KeepaliveConfig,
        exited: BoxFuture<'static, Error>,
    ) {
        self.advance(State::Starting);
        let life = async {
            if let Err(e) = self.reach(keepalive).await {
                return e;
            }
            // Keepalives start as soon as the machine answers and run beside the boot, which
            // may take long (a binary upload, a service's init).
            let boot = async {
                match self.boot(&plan, keepalive).await {
                    Ok(()) => {
                        self.advance(State::Running);
                        tracing::debug!(machine = %self.inner.addr, "machine running");
                        futures::future::pending().await
                    }
                    Err(e) => e,
                }
            };
            tokio::select! {
                e = boot => e,
                e = self.keep_alive(keepalive, true) => e,
            }
        };
        let err = tokio::select! {
            biased;
            _ = self.inner.cancel.cancelled() => Error::canceled("machine canceled"),
            e = exited => e,
            e = life => e,
        };
        self.stop(err);
    }

    /// Watches a machine this driver does not own: Running once it answers a ping, Stopped once
    /// it stops answering for the keepalive timeout.
    pub(crate) async fn run_dialed(self, keepalive: KeepaliveConfig) {
        self.advance(State::Starting);
        let life = async {
            if let Err(e) = self.reach(keepalive).await {
                return e;
            }
            self.advance(State::Running);
            self.keep_alive(keepalive, false).await
        };
        let err = tokio::select! {
            biased;
            _ = self.inner.cancel.cancelled() => Error::canceled("machine canceled"),
            e = life => e,
        };
        self.stop(err);
    }

    /// Pings until the machine answers, for up to the keepalive timeout.
    async fn reach(&self, keepalive: KeepaliveConfig) -> Result<()> {
        let give_up = Instant::now() + keepalive.timeout;
        let mut wait = Duration::from_millis(5);
        let mut seq = 0u64;
        loop {
            seq += 1;
            let reply = self
                .supervisor::<u64, u64>(api::PING, &seq, Some(keepalive.rpc_timeout))
                .await;
            match reply {
                Ok(r) if r == seq => return Ok(()),
                Ok(r) => {
                    return Err(Error::fatal(
                        Kind::Invalid,
                        format!("ping {seq} answered with {r}"),
                    ))
                }
                Err(e) if e.is_temporary() && Instant::now() + wait < give_up => {
                    tracing::debug!(machine = %self.inner.addr, error = %e, "machine not reachable yet");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    return Err(Error::new(
                        Kind::Unavailable,
                        format!("machine {} did not answer pings", self.inner.addr),
                    )
                    .caused_by(e))
                }
            }
        }
    }

    async fn boot(&self, plan: &BootPlan, keepalive: KeepaliveConfig) -> Result<()> {
        let rpc = Some(keepalive.rpc_timeout);
        let mut info: Info = self.supervisor(api::INFO, &(), rpc).await?;
        let upload = info.digest != plan.digest;
        if upload || plan.exec {
            if upload {
                self.provide_binary(plan, keepalive).await?;
            }
            if !plan.environ.is_empty() {
                let (): () = self.supervisor(api::SETENV, &plan.environ, rpc).await?;
            }
            if let Some(args) = &plan.args {
                let (): () = self.supervisor(api::SETARGS, args, rpc).await?;
            }
            match self.supervisor::<(), ()>(api::EXEC, &(), rpc).await {
                Ok(()) => {}
                // The machine closes its connections as it re-executes, and the reply can be
                // lost with them: whether the exec happened shows in its incarnation.
                Err(e) if e.kind() == Kind::Net => {
                    tracing::debug!(machine = %self.inner.addr, error = %e, "exec reply lost");
                }
                Err(e) => return Err(e),
            }
            tracing::debug!(machine = %self.inner.addr, "machine re-executing");
            info = self.reexecuted(info.incarnation, keepalive).await?;
            if info.digest != plan.digest {
                return Err(Error::fatal(
                    Kind::Precondition,
                    format!(
                        "machine {} runs binary {} after exec, expected {}",
                        self.inner.addr, info.digest, plan.digest
                    ),
                ));
            }
        }
        self.inner
            .maxprocs
            .store(info.maxprocs as usize, Ordering::Relaxed);
        *lock(&self.inner.digest) = Some(info.digest.clone());
        for spec in &plan.services {
            let installed: Result<()> = self.supervisor(api::REGISTER, spec, None).await;
            installed.map_err(|e| {
                Error::new(
                    Kind::Unavailable,
                    format!(
                        "machine {}: installing service {}",
                        self.inner.addr, spec.name
                    ),
                )
                .caused_by(e)
            })?;
        }
        Ok(())
    }

    /// Waits until the machine answers as a new incarnation (its process re-executed).
    async fn reexecuted(&self, old: u64, keepalive: KeepaliveConfig) -> Result<Info> {
        let give_up = Instant::now() + keepalive.timeout;
        let mut wait = Duration::from_millis(5);
        let mut last = None;
        loop {
            match self
                .supervisor::<(), Info>(api::INFO, &(), Some(keepalive.rpc_timeout))
                .await
            {
                Ok(info) if info.incarnation != old => return Ok(info),
                Ok(_) => {}
                Err(e) if e.is_temporary() && Instant::now() + wait < give_up => last = Some(e),
                Err(e) => return Err(e),
            }
            if Instant::now() + wait >= give_up {
                return Err(Error::new(
                    Kind::Unavailable,
                    format!("machine {} did not come back after exec", self.inner.addr),
                )
                .caused_by(last.unwrap_or_else(|| {
                    Error::new(Kind::Unavailable, "it kept answering as its old process")
                })));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(200));
        }
    }

    /// Gets the plan's binary onto the machine for its next exec: from the machine's own store
    /// if it has it, else from a running peer that runs it, else from the driver.
    async fn provide_binary(&self, plan: &BootPlan, keepalive: KeepaliveConfig) -> Result<()> {
        let rpc = Some(keepalive.rpc_timeout);
        let stored: bool = self.supervisor(api::USEBINARY, &plan.digest, rpc).await?;
        if stored {
            tracing::debug!(machine = %self.inner.addr, "binary found in the machine's store");
            return Ok(());
        }
        if let Some(peer) = plan.b.peer_running(&plan.digest, self.inner.addr) {
            let fetch = FetchBinary {
                peer: peer.to_string(),
                digest: plan.digest.clone(),
            };
            let fetched: Result<()> = self.supervisor(api::FETCHBINARY, &fetch, None).await;
            match fetched {
                Ok(()) => {
                    tracing::info!(machine = %self.inner.addr, %peer, "binary fetched from a peer");
                    return Ok(());
                }
                Err(e) => tracing::warn!(
                    machine = %self.inner.addr, %peer, error = %e,
                    "fetching the binary from a peer failed; uploading it"
                ),
            }
        }
        self.upload(plan).await
    }

    /// Streams the plan's binary from the driver to the machine.
    async fn upload(&self, plan: &BootPlan) -> Result<()> {
        let started = Instant::now();
        let total = tokio::fs::metadata(&plan.binary)
            .await
            .map_err(|e| Error::new(Kind::Other, format!("{}: {e}", plan.binary.display())))?
            .len();
        tracing::info!(
            machine = %self.inner.addr, bytes = total,
            "machine runs another binary; uploading {}", plan.binary.display()
        );
        let path = plan.binary.clone();
        let (): () = self
            .call_service(SUPERVISOR, api::SETBINARY, &plan.digest)
            .internal()
            .body(move || crate::stream::file_stream(path.clone()))
            .await?;
        plan.b.count_upload(total);
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(
            machine = %self.inner.addr,
            "binary uploaded: {:.1} MiB in {secs:.2} s ({:.0} MiB/s)",
            total as f64 / 1048576.0,
            total as f64 / 1048576.0 / secs.max(1e-9)
        );
        Ok(())
    }

    /// The machine's description (OS, architecture, pid, processors, binary digest).
    pub async fn info(&self) -> Result<Info> {
        self.call_service(SUPERVISOR, api::INFO, &()).await
    }

    /// Memory of the machine's host and process.
    pub async fn mem_info(&self) -> Result<MemInfo> {
        self.call_service(SUPERVISOR, api::MEM_INFO, &()).await
    }

    /// Space on the machine's temporary file system.
    pub async fn disk_info(&self) -> Result<DiskInfo> {
        self.call_service(SUPERVISOR, api::DISK_INFO, &()).await
    }

    /// Load averages of the machine's host.
    pub async fn load_info(&self) -> Result<LoadInfo> {
        self.call_service(SUPERVISOR, api::LOAD_INFO, &()).await
    }

    /// Sends keepalives (owned machines) or pings (dialed ones) every period; returns the error
    /// that ends the machine once it has been silent for the timeout.
    async fn keep_alive(&self, cfg: KeepaliveConfig, owned: bool) -> Error {
        let mut tracker = KeepaliveTracker::new(cfg.timeout, Instant::now());
        loop {
            let sent = Instant::now();
            let reply = if owned {
                self.supervisor::<u64, KeepaliveReply>(
                    api::KEEPALIVE,
                    &(cfg.timeout.as_millis() as u64),
                    Some(cfg.rpc_timeout),
                )
                .await
                .map(drop)
            } else {
                self.supervisor::<u64, u64>(api::PING, &0, Some(cfg.rpc_timeout))
                    .await
                    .map(drop)
            };
            let now = Instant::now();
            match reply {
                Ok(()) => {
                    tracker.on_reply(sent, now);
                    *lock(&self.inner.keepalive_times) = tracker.reply_times();
                }
                // Stopped meanwhile (shut down, or lost): its reason is recorded; nothing to report.
                Err(e) if self.inner.stopped.is_cancelled() => return e,
                Err(e) => match tracker.expired(now) {
                    Some(silent) => {
                        return Error::new(
                            Kind::Unavailable,
                            format!(
                                "machine {} failed keepalives for {silent:?}",
                                self.inner.addr
                            ),
                        )
                        .caused_by(e)
                    }
                    None => {
                        tracing::warn!(machine = %self.inner.addr, error = %e, "keepalive failed")
                    }
                },
            }
            let next = sent + cfg.period;
            *lock(&self.inner.next_keepalive) = Some(next);
            tokio::time::sleep_until(next).await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
