//! Files streamed between machines, io_uring against tokio::fs in the same run: a file read on
//! one machine (`ByteStream::from_file_with`), streamed to another, and written to its disk
//! (`FileWriter`, not synced: the page cache's speed, not the disk's), plus the two ends alone
//! in this process (a file read and discarded; bytes in memory written to a file). Each row is
//! the median of its repetitions, with the CPU seconds per GB of the processes involved (both
//! machines for the machine-to-machine row, this process for the others).
//!
//! `cargo bench --bench files` (a 4 GiB file, 3 repetitions; needs ~8 GiB of free disk in the
//! temporary directory); `BIGMACHINE_BENCH_QUICK=1` for 64 MiB once. This binary is its own
//! machine.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bigmachine::driver;
use bigmachine::files::{FileIo, FileWriter};
use bigmachine::local::LocalSystem;
use bigmachine::{service, ByteStream, Context, Error, Machine, Result, Services, State, B};
use bytes::Bytes;

mod support;

use support::{cpu_seconds, quick};

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Files {
    #[rkyv(with = rkyv::with::Skip)]
    b: Option<B>,
}

fn file_io(name: &str) -> Result<FileIo> {
    name.parse()
}

#[service]
impl Files {
    async fn init(&mut self, b: &B) -> Result<()> {
        self.b = Some(b.clone());
        Ok(())
    }

    /// Writes the stream to the file `dst` with `io`; returns the bytes written.
    async fn store(&self, _ctx: &Context, arg: (String, String), body: ByteStream) -> Result<u64> {
        let (dst, io) = arg;
        let mut file = FileWriter::create(&dst, file_io(&io)?).await?;
        let mut body = body;
        while let Some(chunk) = body.next_chunk().await {
            file.write(chunk?).await?;
        }
        file.finish(false).await
    }

    /// Streams the file `src`, read with `io`, to the machine at `peer`, which writes it to
    /// `dst` with `io`; returns the seconds it took.
    async fn send(&self, ctx: &Context, arg: (String, String, String, String)) -> Result<f64> {
        let (peer, src, dst, io) = arg;
        let b = self.b.as_ref().ok_or_else(|| Error::other("no B"))?;
        let peer = b.dial(peer.parse().map_err(Error::other)?);
        peer.wait(State::Running).await;
        let read = file_io(&io)?;
        let started = Instant::now();
        let src2 = src.clone();
        let n: u64 = peer
            .call("Files.store", &(dst, io))
            .context(ctx)
            .body(move || ByteStream::from_file_with(&src2, read))
            .await?;
        let want = std::fs::metadata(&src).map_err(Error::other)?.len();
        if n != want {
            return Err(Error::other(format!("{n} bytes stored of {want}")));
        }
        Ok(started.elapsed().as_secs_f64())
    }
}

/// One timed run: its duration and the CPU seconds of the processes measured.
#[derive(Clone, Copy)]
struct Run {
    time: Duration,
    cpu: f64,
}

fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by_key(|r| r.time);
    let time = runs[runs.len() / 2].time;
    let mut cpu: Vec<f64> = runs.iter().map(|r| r.cpu).collect();
    cpu.sort_by(f64::total_cmp);
    Run {
        time,
        cpu: cpu[cpu.len() / 2],
    }
}

/// Runs `f`, measuring its time and the CPU of `pids` (this process if empty).
async fn timed<F: std::future::Future<Output = Duration>>(pids: &[u32], f: F) -> Run {
    let cpu = || -> f64 {
        if pids.is_empty() {
            cpu_seconds(None)
        } else {
            pids.iter().map(|&p| cpu_seconds(Some(p))).sum()
        }
    };
    let before = cpu();
    let time = f.await;
    Run {
        time,
        cpu: cpu() - before,
    }
}

/// Writes `n` bytes of a pattern to `path` (outside the timings).
fn make_file(path: &Path, n: u64) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let block: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let mut left = n;
    while left > 0 {
        let k = left.min(block.len() as u64) as usize;
        f.write_all(&block[..k])
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        left -= k as u64;
    }
}

async fn read_alone(path: &Path, io: FileIo) -> Duration {
    let started = Instant::now();
    let mut s = ByteStream::from_file_with(path, io);
    let mut n = 0u64;
    while let Some(chunk) = s.next_chunk().await {
        n += chunk.unwrap_or_else(|e| panic!("read: {e}")).len() as u64;
    }
    assert!(n > 0);
    started.elapsed()
}

async fn write_alone(path: &Path, n: u64, io: FileIo) -> Duration {
    let chunk = Bytes::from(vec![0x5au8; 1 << 20]);
    let started = Instant::now();
    let mut w = FileWriter::create(path, io)
        .await
        .unwrap_or_else(|e| panic!("create: {e}"));
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        w.write(chunk.slice(..k))
            .await
            .unwrap_or_else(|e| panic!("write: {e}"));
        left -= k as u64;
    }
    assert_eq!(w.finish(false).await.unwrap_or_else(|e| panic!("{e}")), n);
    started.elapsed()
}

async fn machine_to_machine(
    a: &Machine,
    z: &Machine,
    src: &Path,
    dst: &Path,
    io: FileIo,
) -> Duration {
    let secs: f64 = a
        .call(
            "Files.send",
            &(
                z.addr().to_string(),
                src.display().to_string(),
                dst.display().to_string(),
                format!("{io:?}"),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("send: {e}"));
    Duration::from_secs_f64(secs)
}

async fn pid(m: &Machine) -> u32 {
    m.info().await.unwrap_or_else(|e| panic!("info: {e}")).pid
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("runtime: {e}"));
    let (n, reps): (u64, usize) = if quick() { (64 << 20, 1) } else { (4 << 30, 3) };
    rt.block_on(async {
        let _driver = driver::start().await; // machines never return from here
        if !bigmachine::files::uring_available() {
            println!("io_uring is not available on this host: only tokio::fs can be measured");
        }
        let ways: Vec<FileIo> = [FileIo::Uring, FileIo::Tokio]
            .into_iter()
            .filter(|&io| io != FileIo::Uring || bigmachine::files::uring_available())
            .collect();
        let dir: PathBuf = std::env::temp_dir().join(format!("bigmachine-files-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let src = dir.join("src");
        make_file(&src, n);

        let b = B::new(LocalSystem::new()).unwrap_or_else(|e| panic!("driver: {e}"));
        let machines = b
            .start(2, Services::new().with("Files", Files { b: None }))
            .await
            .unwrap_or_else(|e| panic!("start: {e}"));
        for m in &machines {
            let state = m.wait(State::Running).await;
            assert_eq!(state, State::Running, "{:?}", m.err());
        }
        let (a, z) = (&machines[0], &machines[1]);
        let pids = [pid(a).await, pid(z).await];

        let mut rows: Vec<(String, FileIo, Vec<Run>)> = Vec::new();
        for &io in &ways {
            for what in ["read", "write", "machine to machine"] {
                rows.push((what.to_string(), io, Vec::new()));
            }
        }
        // Interleaved: every way once per repetition, so the host's noise falls on all.
        for _ in 0..reps {
            for row in rows.iter_mut() {
                let (what, io) = (row.0.as_str(), row.1);
                let dst = dir.join(format!("dst-{io:?}"));
                let run = match what {
                    "read" => timed(&[], read_alone(&src, io)).await,
                    "write" => timed(&[], write_alone(&dst, n, io)).await,
                    _ => timed(&pids, machine_to_machine(a, z, &src, &dst, io)).await,
                };
                let _ = std::fs::remove_file(&dst);
                row.2.push(run);
            }
        }
        b.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);

        println!(
            "\nfiles, {} MiB, median of {reps} (tokio::fs ÷ io_uring in brackets: above 1 means io_uring wins)",
            n >> 20
        );
        println!("{:<22} {:<8} {:>8} {:>10}", "", "", "GB/s", "CPU s/GB");
        let gb = n as f64 / 1e9;
        let medians: Vec<(String, FileIo, Run)> = rows
            .into_iter()
            .map(|(w, io, runs)| (w, io, median(runs)))
            .collect();
        for (what, io, run) in &medians {
            let other = medians
                .iter()
                .find(|(w, o, _)| w == what && o != io)
                .map(|(_, _, r)| *r);
            let ratio = match (io, other) {
                (FileIo::Uring, Some(t)) => format!(
                    "  (time {:.2}x, CPU {:.2}x)",
                    t.time.as_secs_f64() / run.time.as_secs_f64(),
                    t.cpu / run.cpu
                ),
                _ => String::new(),
            };
            println!(
                "{what:<22} {:<8} {:>8.2} {:>10.2}{ratio}",
                format!("{io:?}"),
                gb / run.time.as_secs_f64(),
                run.cpu / gb
            );
        }
    });
}
