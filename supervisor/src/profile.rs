//! Profiles of this process, in pprof's protobuf format: CPU profiles sampled with pprof-rs
//! (SIGPROF at 100 Hz), and heap profiles from whatever the program installed with
//! [`set_heap_profiler`] (jemalloc's, typically).
//!
//! A process has one CPU profiler: a request while it runs is refused (a temporary
//! [`Kind::Unavailable`]), as Go's profiler does. Machines of the test system live in their
//! driver's process, so only one of them (or the driver) profiles it at a time.

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock, TryLockError};
use std::time::Duration;

use bigmachine_core::{Error, Kind, Result};
use pprof::protos::Message;

/// Samples per second.
const FREQUENCY: i32 = 100;
/// The longest CPU profile served.
pub const MAX_CPU_PROFILE: Duration = Duration::from_secs(300);
/// Libraries whose frames are never unwound from the signal handler: unwinding through them
/// can deadlock (the handler interrupting the unwinder or the loader).
const BLOCKLIST: [&str; 4] = ["libc", "libgcc", "pthread", "vdso"];

/// The one CPU profiler of this process.
static CPU: Mutex<()> = Mutex::new(());

/// A CPU profile of this process over `duration` (at most [`MAX_CPU_PROFILE`]): pprof's
/// protobuf, not compressed. Refused with a temporary [`Kind::Unavailable`] while another
/// runs. Dropping the future ends the profile early (its samples are thrown away).
pub async fn cpu_profile(duration: Duration) -> Result<Vec<u8>> {
    if duration.is_zero() || duration > MAX_CPU_PROFILE {
        return Err(Error::fatal(
            Kind::Invalid,
            format!("a CPU profile lasts from 1 ms to {MAX_CPU_PROFILE:?}, not {duration:?}"),
        ));
    }
    // Dropped with this future: the profiling thread then stops at once.
    let (_running, stop) = mpsc::channel::<()>();
    let busy = || {
        Error::temporary(
            Kind::Unavailable,
            "a CPU profile of this process is running",
        )
    };
    tokio::task::spawn_blocking(move || {
        let _one = match CPU.try_lock() {
            Ok(one) => one,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(busy()),
        };
        let failed = |what: &str, e: pprof::Error| {
            Error::new(Kind::Other, format!("CPU profile: {what}: {e}"))
        };
        let guard = pprof::ProfilerGuardBuilder::default()
            .frequency(FREQUENCY)
            .blocklist(&BLOCKLIST)
            .build()
            .map_err(|e| match e {
                // Another profiler of this process (not ours) runs.
                pprof::Error::Running => busy(),
                e => failed("starting the profiler", e),
            })?;
        if let Err(mpsc::RecvTimeoutError::Disconnected) = stop.recv_timeout(duration) {
            return Err(Error::new(
                Kind::Canceled,
                "CPU profile: nobody waits for it",
            ));
        }
        let report = guard
            .report()
            .build()
            .map_err(|e| failed("reading the samples", e))?;
        drop(guard);
        let profile = report
            .pprof()
            .map_err(|e| failed("encoding the profile", e))?;
        Ok(profile.encode_to_vec())
    })
    .await
    .map_err(|e| Error::new(Kind::Other, format!("CPU profile task: {e}")))?
}

/// What makes a heap profile: pprof's protobuf, compressed with gzip or not.
pub type HeapProfiler = Box<dyn Fn() -> Result<Vec<u8>> + Send + Sync>;

static HEAP: OnceLock<HeapProfiler> = OnceLock::new();

/// Installs this program's heap profiler, in the driver and in every machine (call it from
/// `main`, before `driver::start`, so that machines install it too: they run the same code).
/// Returns `false` if one was installed already (the first stays).
///
/// With jemalloc: `tikv-jemallocator` (features `profiling` and
/// `unprefixed_malloc_on_supported_platforms`) as the global allocator, a `malloc_conf` static
/// that turns profiling on (`prof:true,prof_active:true,lg_prof_sample:19`), and
/// `jemalloc_pprof`'s `PROF_CTL.dump_pprof()` as the profiler. The `bigheap` example of the
/// `bigmachine` crate does exactly this (`--features jemalloc`).
pub fn set_heap_profiler(profiler: HeapProfiler) -> bool {
    HEAP.set(profiler).is_ok()
}

/// A heap profile of this process from the installed heap profiler; a
/// [`Kind::NotSupported`] error saying how to enable one when there is none.
pub async fn heap_profile() -> Result<Vec<u8>> {
    if HEAP.get().is_none() {
        return Err(Error::fatal(
            Kind::NotSupported,
            "heap profiling is not enabled in this program: install a heap profiler with \
             bigmachine::profile::set_heap_profiler (jemalloc's, for instance)",
        ));
    }
    tokio::task::spawn_blocking(|| match HEAP.get() {
        Some(profiler) => profiler(),
        None => Err(Error::new(Kind::Other, "heap profiler vanished")),
    })
    .await
    .map_err(|e| Error::new(Kind::Other, format!("heap profile task: {e}")))?
}
