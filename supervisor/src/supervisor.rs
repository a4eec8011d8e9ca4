//! The machine's implementation of the Supervisor service (declared in `bigmachine-core`).

use std::time::{Duration, Instant};

use bigmachine_core::__internal::{
    install, Expvar, FetchBinary, KeepaliveReply, ServiceSpec, ServiceTable, Supervisor,
    SupervisorClient, SUPERVISOR,
};
use bigmachine_core::{
    current_digest, running_binary, ByteStream, Context, DiskInfo, Error, Info, Kind, LoadInfo,
    MachinePanic, MemInfo, MetricFamily, MetricKind, Metrics, Result, B,
};

use crate::exec::Exec;
use crate::handle::MachineHandle;
use crate::host;
use crate::store::Store;
use crate::watchdog::Watchdog;

/// The service through which the driver manages a machine: this machine's implementation of
/// the Supervisor trait.
#[derive(Debug)]
pub(crate) struct MachineSupervisor {
    b: B,
    table: ServiceTable,
    watchdog: Watchdog,
    handle: MachineHandle,
    maxprocs: usize,
    exec: Option<Exec>,
    store: Store,
    started: Instant,
    incarnation: u64,
    /// The counters of the calls this machine serves.
    metrics: Metrics,
}

impl MachineSupervisor {
    /// A supervisor installing services into `table`, with `b` as their handle on the cluster.
    /// Without `exec`, the machine cannot re-execute itself (it runs inside another process).
    pub(crate) fn new(
        b: B,
        table: ServiceTable,
        watchdog: Watchdog,
        handle: MachineHandle,
        maxprocs: usize,
        exec: Option<Exec>,
        metrics: Metrics,
    ) -> Self {
        Self {
            b,
            table,
            watchdog,
            handle,
            maxprocs,
            exec,
            store: Store::from_env(),
            started: Instant::now(),
            incarnation: {
                use std::hash::{BuildHasher, RandomState};
                RandomState::new().hash_one((std::process::id(), std::time::SystemTime::now()))
            },
            metrics,
        }
    }

    /// Whether the machine is a process of its own: only then are the process's panics its own
    /// (a machine inside another process, the test system's, reports none).
    fn own_process(&self) -> bool {
        self.exec.is_some()
    }

    fn exec_support(&self) -> Result<&Exec> {
        self.exec.as_ref().ok_or_else(|| {
            Error::fatal(
                Kind::NotSupported,
                "this machine runs inside another process and cannot re-execute itself",
            )
        })
    }
}

impl Supervisor for MachineSupervisor {
    /// Answers `seq`.
    async fn ping(&self, _ctx: &Context, seq: u64) -> Result<u64> {
        Ok(seq)
    }

    /// What the machine is.
    async fn info(&self, _ctx: &Context, _arg: ()) -> Result<Info> {
        let digest = tokio::task::spawn_blocking(current_digest)
            .await
            .map_err(|e| Error::new(Kind::Other, format!("digest task: {e}")))??;
        Ok(Info {
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            pid: std::process::id(),
            maxprocs: u32::try_from(self.maxprocs).unwrap_or(u32::MAX),
            digest: digest.to_string(),
            incarnation: self.incarnation,
        })
    }

    /// The process id.
    async fn getpid(&self, _ctx: &Context, _arg: ()) -> Result<u32> {
        Ok(std::process::id())
    }

    /// Memory of the host and of this process.
    async fn mem_info(&self, _ctx: &Context, _arg: ()) -> Result<MemInfo> {
        host::mem_info()
    }

    /// Space on the temporary file system.
    async fn disk_info(&self, _ctx: &Context, _arg: ()) -> Result<DiskInfo> {
        host::disk_info(&std::env::temp_dir())
    }

    /// Load averages.
    async fn load_info(&self, _ctx: &Context, _arg: ()) -> Result<LoadInfo> {
        host::load_info()
    }

    /// Rebuilds a service from its archive, runs its `init`, and installs it.
    async fn register(&self, _ctx: &Context, spec: ServiceSpec) -> Result<()> {
        tracing::debug!(service = %spec.name, type_name = %spec.type_name, "installing service");
        install(&self.table, &spec, self.b.clone()).await
    }

    /// Keeps the machine alive for `next_ms` more milliseconds.
    async fn keepalive(&self, _ctx: &Context, next_ms: u64) -> Result<KeepaliveReply> {
        self.watchdog.keepalive(Duration::from_millis(next_ms));
        Ok(KeepaliveReply {
            next_ms,
            panics: if self.own_process() {
                crate::panic::panics()
            } else {
                0
            },
        })
    }

    /// Exits the machine once the reply is delivered and `delay_ms` more milliseconds passed.
    async fn shutdown(&self, ctx: &Context, delay_ms: u64) -> Result<()> {
        let handle = self.handle.clone();
        let delivered = ctx.reply_delivered();
        tokio::spawn(async move {
            delivered.await;
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            handle.exit(Error::new(Kind::Canceled, "shut down by the driver"));
        });
        Ok(())
    }

    /// Adds `KEY=VALUE` variables to the environment of the next exec.
    async fn setenv(&self, _ctx: &Context, vars: Vec<String>) -> Result<()> {
        self.exec_support()?.setenv(&vars)
    }

    /// Sets the arguments of the next exec.
    async fn setargs(&self, _ctx: &Context, args: Vec<String>) -> Result<()> {
        self.exec_support()?.setargs(args);
        Ok(())
    }

    /// Receives a binary into the store, for the next exec.
    async fn setbinary(&self, _ctx: &Context, digest: String, body: ByteStream) -> Result<()> {
        let exec = self.exec_support()?;
        let stored = self.store.put(&digest, body).await?;
        exec.setbinary(stored);
        Ok(())
    }

    /// Uses the stored binary of `digest` for the next exec, if the store has it.
    async fn usebinary(&self, _ctx: &Context, digest: String) -> Result<bool> {
        let exec = self.exec_support()?;
        match self.store.get(&digest).await? {
            Some(stored) => {
                exec.setbinary(stored);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Fetches a binary from a peer machine into the store, for the next exec.
    async fn fetchbinary(&self, ctx: &Context, fetch: FetchBinary) -> Result<()> {
        let exec = self.exec_support()?;
        let addr = fetch
            .peer
            .parse()
            .map_err(|e| Error::fatal(Kind::Invalid, format!("peer {:?}: {e}", fetch.peer)))?;
        let peer = self.b.dial(addr);
        let body = SupervisorClient::new(&peer, SUPERVISOR)
            .getbinary(&fetch.digest)
            .context(ctx)
            .await?;
        let stored = self.store.put(&fetch.digest, body).await?;
        tracing::info!(peer = %fetch.peer, "binary fetched from a peer");
        exec.setbinary(stored);
        Ok(())
    }

    /// Streams the binary of `digest`: the running one, or one from the store.
    async fn getbinary(&self, _ctx: &Context, digest: String) -> Result<ByteStream> {
        let running = tokio::task::spawn_blocking(current_digest)
            .await
            .map_err(|e| Error::new(Kind::Other, format!("digest task: {e}")))??;
        let path = if running == digest {
            // Not current_exe(): once the store evicted the file this process runs from, its
            // path ends in " (deleted)", while /proc/self/exe still opens the running binary.
            running_binary()?
        } else {
            let stored = self.store.get(&digest).await?.ok_or_else(|| {
                Error::fatal(
                    Kind::NotSupported,
                    format!("no binary with digest {digest} here"),
                )
            })?;
            // The peer checks the digest of what it receives.
            stored.path
        };
        Ok(ByteStream::from_file(path))
    }

    /// Replies, then replaces this process with the binary, arguments and environment set so
    /// far. The new process serves at the same address with the same credentials.
    async fn exec(&self, ctx: &Context, _arg: ()) -> Result<()> {
        let exec = self.exec_support()?.prepare()?;
        let handle = self.handle.clone();
        let delivered = ctx.reply_delivered();
        tokio::spawn(async move {
            // Once the driver has the reply (or will never have it), tell every peer the
            // connections are over.
            delivered.await;
            handle.quiesce().await;
            let err = exec.run();
            handle.exit(err);
        });
        Ok(())
    }

    /// A snapshot of the machine's counters.
    async fn expvars(&self, _ctx: &Context, _arg: ()) -> Result<Vec<Expvar>> {
        let mem = host::mem_info()?;
        let var = |name: &str, value: String| Expvar {
            name: name.to_string(),
            value,
        };
        Ok(vec![
            var("pid", std::process::id().to_string()),
            var("uptime_ms", self.started.elapsed().as_millis().to_string()),
            var("rss_bytes", mem.process_rss.to_string()),
            var("maxprocs", self.maxprocs.to_string()),
            var(
                "keepalive_deadline_in_ms",
                self.watchdog
                    .deadline()
                    .saturating_duration_since(tokio::time::Instant::now())
                    .as_millis()
                    .to_string(),
            ),
        ])
    }

    /// The calls this machine served, per method, and its process and host.
    async fn metrics(&self, _ctx: &Context, _arg: ()) -> Result<Vec<MetricFamily>> {
        let mut families = self.metrics.snapshot();
        let gauge = |name: &str, help: &str, value: f64| {
            MetricFamily::single(name, help, MetricKind::Gauge, value)
        };
        families.push(gauge(
            "bigmachine_uptime_seconds",
            "Time since the machine's process started.",
            self.started.elapsed().as_secs_f64(),
        ));
        families.push(gauge(
            "bigmachine_processors",
            "Processors available to the machine.",
            self.maxprocs as f64,
        ));
        // Host figures (read off the runtime's workers: a disk may be slow to answer) that
        // cannot be read are left out rather than failing the scrape.
        let (mem, disk, load) = tokio::task::spawn_blocking(|| {
            (
                host::mem_info(),
                host::disk_info(&std::env::temp_dir()),
                host::load_info(),
            )
        })
        .await
        .map_err(|e| Error::new(Kind::Other, format!("host figures: {e}")))?;
        if let Ok(mem) = mem {
            families.push(gauge(
                "bigmachine_process_resident_bytes",
                "Resident memory of the machine's process.",
                mem.process_rss as f64,
            ));
            families.push(gauge(
                "bigmachine_host_memory_bytes",
                "Memory of the machine's host.",
                mem.total as f64,
            ));
            families.push(gauge(
                "bigmachine_host_memory_available_bytes",
                "Memory of the machine's host available without swapping.",
                mem.available as f64,
            ));
        }
        if let Ok(disk) = disk {
            families.push(gauge(
                "bigmachine_disk_bytes",
                "Size of the file system of the machine's temporary directory.",
                disk.total as f64,
            ));
            families.push(gauge(
                "bigmachine_disk_available_bytes",
                "Space available on the file system of the machine's temporary directory.",
                disk.available as f64,
            ));
        }
        if let Ok(load) = load {
            families.push(gauge(
                "bigmachine_load1",
                "Load average of the machine's host over one minute.",
                load.one,
            ));
        }
        Ok(families)
    }

    /// A CPU profile of this process over the next `millis` milliseconds.
    async fn cpu_profile(&self, _ctx: &Context, millis: u64) -> Result<Vec<u8>> {
        crate::profile::cpu_profile(Duration::from_millis(millis)).await
    }

    /// A heap profile of this process, from the program's heap profiler.
    async fn heap_profile(&self, _ctx: &Context, _arg: ()) -> Result<Vec<u8>> {
        crate::profile::heap_profile().await
    }

    /// The last panic this process recorded.
    async fn last_panic(&self, _ctx: &Context, _arg: ()) -> Result<Option<MachinePanic>> {
        if !self.own_process() {
            return Ok(None);
        }
        Ok(crate::panic::last_panic().map(|(count, p)| MachinePanic {
            count,
            thread: p.thread,
            location: p.location,
            message: p.message,
            backtrace: p.backtrace,
        }))
    }
}
