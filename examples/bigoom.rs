//! bigoom: a machine allocates memory until it dies; the driver reports its out-of-memory
//! error. The machine limits its own address space first (`--limit-mib`), so the example is safe
//! to run anywhere.

use bigmachine::driver::{self, Flags};
use bigmachine::{service, Context, Error, Kind, Result, Services, State};
use clap::Parser;

/// Run a machine out of memory.
#[derive(Parser)]
struct Args {
    /// The machine's address-space limit, in MiB (0: no limit, so the kernel's OOM killer
    /// ends it).
    #[arg(long, default_value_t = 1024)]
    limit_mib: u64,
    #[command(flatten)]
    bigm: Flags,
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Hog;

#[service]
impl Hog {
    /// Limits this process's address space to `limit_mib` MiB, then allocates (and touches)
    /// 64 MiB at a time until the process dies.
    async fn allocate(&self, _ctx: &Context, limit_mib: u64) -> Result<u64> {
        if limit_mib > 0 {
            let limit = libc::rlimit {
                rlim_cur: limit_mib << 20,
                rlim_max: libc::RLIM_INFINITY,
            };
            // SAFETY: setrlimit reads the struct we pass; no other memory is involved.
            if unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) } != 0 {
                return Err(Error::new(
                    Kind::Other,
                    std::io::Error::last_os_error().to_string(),
                ));
            }
        }
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![1u8; 64 << 20]);
            tracing::info!("holding {} MiB", hoard.len() * 64);
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let b = driver::start_with(&args.bigm).await?;
    let machines = b.start(1, Services::new().with("Hog", Hog)).await?;
    let m = &machines[0];
    if m.wait(State::Running).await != State::Running {
        anyhow::bail!("machine failed to start: {:?}", m.err());
    }
    let call = m.call::<u64, u64>("Hog.allocate", &args.limit_mib).await;
    tracing::info!("allocate returned: {call:?}");
    m.wait(State::Stopped).await;
    let err = m
        .err()
        .ok_or_else(|| anyhow::anyhow!("machine stopped without an error"))?;
    println!("machine {} stopped: {err}", m.addr());
    b.shutdown().await;
    if !err.is(Kind::Oom) {
        anyhow::bail!("expected an out-of-memory error, got: {err}");
    }
    Ok(())
}
