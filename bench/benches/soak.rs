//! Soak: nothing lost, nothing run twice, memory flat, over a long run with faults.
//!
//! - **Calls**: 1,000,000 exactly-once calls with retries, 1,024 in flight, to a machine process
//!   (the local system) that drops 1 % of its replies and cuts 1 % in half. Each call marks its
//!   id on the machine; at the end the machine tallies the ids: none may be missing, none marked
//!   twice, and every reply must be its call's. The driver's and the machine's resident memory
//!   are sampled every 100,000 calls.
//! - **Streams**: 1,000 reply streams of 8 MiB from the machine, a fifth of whose producers fail
//!   part way (half of those with an error, half by dropping their sink unfinished): every
//!   failure must reach the reader as an error, every success must arrive whole (checksums).
//!
//! `cargo bench --bench soak`; `BIGMACHINE_BENCH_QUICK=1` runs 50,000 calls and 50 streams (the
//! test command does). Exits non-zero if anything is lost, duplicated or misreported. This binary
//! is its own machine (it calls `driver::start` first).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bigmachine::local::LocalSystem;
use bigmachine::{
    driver, service, ByteStream, Context, Error, Kind, Machine, Result, RetryPolicy, Services,
    State, B,
};
use futures::StreamExt;

#[path = "../../examples/common/checksum.rs"]
mod checksum;
mod support;

use checksum::Checksum;

/// Ids marked on this machine: how many times each ran.
static MARKS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// What a producer of a stream does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
enum Fate {
    /// Sends every byte and finishes.
    Whole,
    /// Fails with an error after this many chunks.
    Fail(u32),
    /// Drops its sink unfinished after this many chunks.
    Abandon(u32),
}

/// A stream request: seed of the contents, chunks of 64 KiB, and what the producer does.
#[derive(Debug, Clone, Copy, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Produce {
    seed: u64,
    chunks: u32,
    fate: Fate,
}

const CHUNK: usize = 64 << 10;

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Soak;

#[service]
impl Soak {
    /// Marks `id` as run; returns its reply, `2 * id + 1`.
    async fn mark(&self, _ctx: &Context, id: u64) -> Result<u64> {
        let mut marks = MARKS.lock().unwrap_or_else(|e| e.into_inner());
        let i = usize::try_from(id).map_err(Error::other)?;
        if marks.len() <= i {
            marks.resize(i + 1, 0);
        }
        marks[i] = marks[i].saturating_add(1);
        Ok(2 * id + 1)
    }

    /// Over ids `0..n`: how many were never run, run once, run more than once.
    async fn tally(&self, _ctx: &Context, n: u64) -> Result<[u64; 3]> {
        let marks = MARKS.lock().unwrap_or_else(|e| e.into_inner());
        let mut tally = [0u64; 3];
        for i in 0..n as usize {
            let slot = match marks.get(i).copied().unwrap_or(0) {
                0 => 0,
                1 => 1,
                _ => 2,
            };
            tally[slot] += 1;
        }
        Ok(tally)
    }

    /// A stream of `chunks` chunks of seeded bytes, ended as `fate` says.
    async fn produce(&self, _ctx: &Context, p: Produce) -> Result<ByteStream> {
        let (sink, stream) = ByteStream::channel(8);
        tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(p.seed);
            for i in 0..p.chunks {
                match p.fate {
                    Fate::Fail(at) if at == i => {
                        sink.fail(Error::new(
                            Kind::Other,
                            format!("producer {} failed", p.seed),
                        ))
                        .await;
                        return;
                    }
                    Fate::Abandon(at) if at == i => return, // the sink is dropped unfinished
                    _ => {}
                }
                let mut chunk = vec![0u8; CHUNK];
                rng.fill(&mut chunk);
                if sink.send(chunk).await.is_err() {
                    return;
                }
            }
            sink.finish();
        });
        Ok(stream)
    }
}

/// Resident memory of process `pid`, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn expected_checksum(seed: u64, chunks: u32) -> u64 {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut sum = Checksum::new();
    let mut chunk = vec![0u8; CHUNK];
    for _ in 0..chunks {
        rng.fill(&mut chunk);
        sum.update(&chunk);
    }
    sum.finish()
}

/// Violations found, printed as they are.
#[derive(Default)]
struct Verdict {
    failures: Vec<String>,
}

impl Verdict {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let what = what();
            eprintln!("SOAK FAILURE: {what}");
            self.failures.push(what);
        }
    }
}

async fn call_soak(m: &Machine, pid: u32, calls: u64, verdict: &mut Verdict) -> Result<()> {
    let every = (calls / 10).max(1);
    let mut retry = RetryPolicy::default();
    retry.initial = Duration::from_millis(1);
    retry.max = Duration::from_millis(50);
    println!(
        "calls: {calls} exactly-once calls, 1024 in flight, 1 % of replies dropped and 1 % cut"
    );
    println!(
        "{:>10} {:>10} {:>12} {:>12}",
        "calls", "seconds", "driver MiB", "machine MiB"
    );
    let started = Instant::now();
    let mut results = futures::stream::iter(0..calls)
        .map(|id| async move {
            let reply: Result<u64> = m
                .call("Soak.mark", &id)
                .retry_with(retry)
                .exactly_once()
                .timeout(Duration::from_secs(120))
                .await;
            (id, reply)
        })
        .buffer_unordered(1024);
    let (mut done, mut lost, mut wrong) = (0u64, 0u64, 0u64);
    let mut samples = Vec::new();
    while let Some((id, reply)) = results.next().await {
        done += 1;
        match reply {
            Ok(r) if r == 2 * id + 1 => {}
            Ok(_) => wrong += 1,
            Err(e) => {
                if lost < 5 {
                    eprintln!("call {id} failed: {e}");
                }
                lost += 1;
            }
        }
        if done % every == 0 {
            let sample = (rss_mib(std::process::id()), rss_mib(pid));
            println!(
                "{done:>10} {:>10.1} {:>12.1} {:>12.1}",
                started.elapsed().as_secs_f64(),
                sample.0,
                sample.1
            );
            samples.push(sample);
        }
    }
    let took = started.elapsed();
    let [missing, once, twice] = m
        .call::<u64, [u64; 3]>("Soak.tally", &calls)
        .retry()
        .await?;
    let alive = m.info().await.is_ok();
    println!(
        "calls: {calls} in {took:.1?} ({:.0} calls/s): {lost} failed, {wrong} wrong replies; \
         machine: {missing} never run, {once} run once, {twice} run more than once",
        calls as f64 / took.as_secs_f64()
    );
    verdict.check(lost == 0, || format!("{lost} calls failed"));
    verdict.check(wrong == 0, || {
        format!("{wrong} calls got another call's reply")
    });
    verdict.check(missing == 0, || format!("{missing} calls never ran"));
    verdict.check(twice == 0, || format!("{twice} calls ran more than once"));
    verdict.check(alive, || "machine gone after the soak".to_string());
    // Flat after warm-up: the last sample within 25 % (and 64 MiB) of the second one.
    if let (Some(warm), Some(last)) = (samples.get(1), samples.last()) {
        for (who, w, l) in [("driver", warm.0, last.0), ("machine", warm.1, last.1)] {
            verdict.check(l <= w * 1.25 + 64.0, || {
                format!("{who} memory grew from {w:.1} MiB to {l:.1} MiB")
            });
        }
    }
    Ok(())
}

async fn stream_soak(m: &Machine, streams: u64, verdict: &mut Verdict) -> Result<()> {
    let chunks = (8 << 20) / CHUNK as u32;
    let mut rng = fastrand::Rng::with_seed(2026);
    let plans: Vec<Produce> = (0..streams)
        .map(|seed| {
            let at = rng.u32(0..chunks);
            let fate = match rng.u32(0..10) {
                0 => Fate::Fail(at),
                1 => Fate::Abandon(at),
                _ => Fate::Whole,
            };
            Produce { seed, chunks, fate }
        })
        .collect();
    let started = Instant::now();
    let outcomes = futures::stream::iter(plans.iter().copied())
        .map(|p| async move {
            let read = async {
                let mut stream: ByteStream = m.call("Soak.produce", &p).await?;
                let mut sum = Checksum::new();
                let mut bytes = 0usize;
                while let Some(chunk) = stream.next_chunk().await {
                    let chunk = chunk?;
                    bytes += chunk.len();
                    sum.update(&chunk);
                }
                Ok::<_, Error>((bytes, sum.finish()))
            };
            (p, read.await)
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let took = started.elapsed();
    let (mut whole, mut reported, mut bytes_total) = (0u64, 0u64, 0usize);
    for (p, outcome) in outcomes {
        match (p.fate, outcome) {
            (Fate::Whole, Ok((bytes, hash))) => {
                let complete =
                    bytes == chunks as usize * CHUNK && hash == expected_checksum(p.seed, chunks);
                verdict.check(complete, || format!("stream {} arrived damaged", p.seed));
                whole += u64::from(complete);
                bytes_total += bytes;
            }
            (Fate::Whole, Err(e)) => {
                verdict.check(false, || format!("stream {} failed: {e}", p.seed))
            }
            (fate, Ok((bytes, _))) => verdict.check(false, || {
                format!(
                    "stream {} ({fate:?}) ended well after {bytes} bytes",
                    p.seed
                )
            }),
            (_, Err(_)) => reported += 1,
        }
    }
    let failing = plans.iter().filter(|p| p.fate != Fate::Whole).count() as u64;
    println!(
        "streams: {streams} of 8 MiB in {took:.1?} ({:.0} MiB/s whole): {whole} whole and \
         checked, {reported} of {failing} producer failures reported to the reader",
        bytes_total as f64 / (1 << 20) as f64 / took.as_secs_f64()
    );
    verdict.check(reported == failing, || {
        format!("{reported} of {failing} producer failures reported")
    });
    Ok(())
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("runtime: {e}"));
    rt.block_on(async {
        let _driver = driver::start().await; // machines never return from here
    });
    let (calls, streams) = if support::quick() {
        (50_000, 50)
    } else {
        (1_000_000, 1_000)
    };
    let verdict = rt.block_on(async {
        let system = LocalSystem::builder()
            .maxprocs(2)
            .env("BIGMACHINE_REPLY_FAULTS", "0.01,0.01,2026")
            .build();
        let b = B::new(system)?;
        let mut machines = b.start(1, Services::new().with("Soak", Soak)).await?;
        let m = machines.pop().ok_or_else(|| Error::other("no machine"))?;
        if m.wait(State::Running).await != State::Running {
            return Err(m.err().unwrap_or_else(|| Error::other("machine stopped")));
        }
        let pid = m.info().await?.pid;
        let mut verdict = Verdict::default();
        call_soak(&m, pid, calls, &mut verdict).await?;
        stream_soak(&m, streams, &mut verdict).await?;
        b.shutdown().await;
        Ok::<_, Error>(verdict)
    });
    match verdict {
        Ok(v) if v.failures.is_empty() => println!("soak: nothing lost, nothing run twice"),
        Ok(v) => {
            eprintln!("soak failed: {}", v.failures.join("; "));
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("soak could not run: {e}");
            std::process::exit(1);
        }
    }
}
