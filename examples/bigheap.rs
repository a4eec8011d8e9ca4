//! bigheap shows heap profiles of a whole cluster: the program runs on jemalloc with heap
//! profiling, installs jemalloc's profiler in the driver and in every machine, has each
//! machine hold some memory, then writes one merged heap profile:
//! `cargo run --release --features jemalloc --example bigheap -- --out heap.pb.gz`, then
//! `go tool pprof -tagroot=machine -top heap.pb.gz` (or `pprof`), or the running driver's
//! `/debug/bigmachine/pprof/heap` with `--bigm.debug-addr`.
//!
//! What it takes (the cargo feature `jemalloc` of this crate brings the two crates):
//! `tikv-jemallocator` (feature `profiling`, and `unprefixed_malloc_on_supported_platforms` so
//! that jemalloc reads the `malloc_conf` below) as the global allocator, and `jemalloc_pprof`
//! to turn jemalloc's dump into pprof.

use std::time::Duration;

use bigmachine::driver::{self, Flags};
use bigmachine::profile::{self, Scope};
use bigmachine::{service, Context, Error, Kind, Result, Services, State};
use clap::Parser;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's configuration, read when it starts: profiling on, a sample every 512 KiB of
/// allocation on average.
#[allow(non_upper_case_globals)]
#[export_name = "malloc_conf"]
pub static malloc_conf: &[u8] = b"prof:true,prof_active:true,lg_prof_sample:19\0";

/// Write a merged heap profile of a cluster.
#[derive(Parser)]
struct Args {
    /// Machines to start.
    #[arg(long, default_value_t = 2)]
    nmach: usize,
    /// MiB each machine holds while the profile is taken.
    #[arg(long, default_value_t = 64)]
    mib: u64,
    /// Where to write the profile (pprof protobuf, gzip-compressed).
    #[arg(long, default_value = "heap.pb.gz")]
    out: std::path::PathBuf,
    #[command(flatten)]
    bigm: Flags,
}

/// Holds memory on a machine.
#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Hoard;

/// What the machine holds.
static HELD: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

#[service]
impl Hoard {
    /// Allocates and keeps `mib` MiB.
    async fn hold(&self, _ctx: &Context, mib: u64) -> Result<u64> {
        let held = hold_memory_for_profile(mib);
        Ok(held)
    }
}

/// Allocates `mib` MiB in 1 MiB blocks and keeps them: the function heap profiles show.
#[inline(never)]
fn hold_memory_for_profile(mib: u64) -> u64 {
    let mut held = HELD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for _ in 0..mib {
        held.push(vec![1u8; 1 << 20]);
    }
    held.len() as u64
}

/// jemalloc's heap profile of this process, as pprof (gzip-compressed).
fn jemalloc_heap_profile() -> Result<Vec<u8>> {
    let ctl = jemalloc_pprof::PROF_CTL
        .as_ref()
        .ok_or_else(|| Error::new(Kind::NotSupported, "jemalloc was started without profiling"))?;
    let mut ctl = ctl.blocking_lock();
    ctl.dump_pprof()
        .map_err(|e| Error::new(Kind::Other, format!("jemalloc heap profile: {e}")))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // In the driver and, since machines run this same main, in every machine.
    profile::set_heap_profiler(Box::new(jemalloc_heap_profile));
    let args = Args::parse();
    let b = driver::start_with(&args.bigm).await?; // on a machine, this never returns
    let machines = b
        .start(args.nmach, Services::new().with("Hoard", Hoard))
        .await?;
    for m in &machines {
        if m.wait(State::Running).await != State::Running {
            anyhow::bail!("machine {} failed: {:?}", m.addr(), m.err());
        }
        let held: u64 = m.call("Hoard.hold", &args.mib).await?;
        tracing::info!("machine {} holds {held} MiB", m.addr());
    }
    let bytes =
        tokio::time::timeout(Duration::from_secs(60), profile::heap(&b, Scope::Cluster)).await??;
    std::fs::write(&args.out, &bytes)?;
    // What each process holds, as the profile says.
    let p = profile::decode(&bytes)?;
    let text = |i: i64| p.string_table.get(i as usize).map_or("", String::as_str);
    let mut by_machine: Vec<(String, i64)> = Vec::new();
    for s in &p.sample {
        let machine = s
            .label
            .iter()
            .find(|l| text(l.key) == "machine")
            .map_or("", |l| text(l.str));
        // The last value is the space in use.
        let bytes = s.value.last().copied().unwrap_or(0);
        match by_machine.iter_mut().find(|(m, _)| m == machine) {
            Some((_, total)) => *total += bytes,
            None => by_machine.push((machine.to_string(), bytes)),
        }
    }
    for (machine, bytes) in &by_machine {
        println!(
            "{machine}\t{:.1} MiB in use",
            *bytes as f64 / (1 << 20) as f64
        );
    }
    println!(
        "heap profile of {} processes written to {}",
        by_machine.len(),
        args.out.display()
    );
    b.shutdown().await;
    Ok(())
}
