//! What the criterion benches share: quick mode, and criterion groups whose every timed run is
//! also recorded, so each bench's summary table is printed from the same measurements criterion
//! analysed.

#![allow(dead_code)] // each bench uses part of it

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};

/// `BIGMACHINE_BENCH_QUICK=1`: few iterations and small sizes, so CI can run every bench.
pub(crate) fn quick() -> bool {
    std::env::var_os("BIGMACHINE_BENCH_QUICK").is_some()
}

/// Criterion configured for this run: short in quick mode.
pub(crate) fn criterion() -> Criterion {
    let c = Criterion::default().configure_from_args();
    if quick() {
        c.sample_size(10)
            .warm_up_time(Duration::from_millis(10))
            .measurement_time(Duration::from_millis(100))
            .without_plots()
    } else {
        c
    }
}

/// Makes a group of slow workloads (seconds each) take the fewest samples criterion allows.
pub(crate) fn slow(g: &mut BenchmarkGroup<'_, WallTime>) {
    g.sample_size(10);
    if !quick() {
        g.warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(5));
    }
}

/// Every duration each named workload took, across criterion's runs.
#[derive(Debug, Default)]
pub(crate) struct Record(RefCell<BTreeMap<String, Vec<Duration>>>);

impl Record {
    /// Benchmarks `name` in `g`: criterion runs `f` as often as it likes; each run returns the
    /// time of the part it measures (setup excluded), which is also recorded under `name`.
    pub(crate) fn bench<F, Fut>(
        &self,
        g: &mut BenchmarkGroup<'_, WallTime>,
        rt: &tokio::runtime::Runtime,
        name: &str,
        f: F,
    ) where
        F: Fn() -> Fut,
        Fut: Future<Output = Duration>,
    {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let d = rt.block_on(f());
                    self.0
                        .borrow_mut()
                        .entry(name.to_string())
                        .or_default()
                        .push(d);
                    total += d;
                }
                total
            })
        });
    }

    /// The median of what `name` recorded.
    pub(crate) fn median(&self, name: &str) -> Duration {
        let map = self.0.borrow();
        let mut xs = map.get(name).cloned().unwrap_or_default();
        xs.sort();
        xs.get(xs.len() / 2).copied().unwrap_or_default()
    }
}

/// Starts this binary again with `env` set and `creds` (if any) written to its stdin, never
/// to its environment, which others may read in `/proc`: the child prints the address it
/// serves on as its first line of stdout. Returns that address and the child (killed when
/// dropped).
pub(crate) async fn spawn_self(
    env: &[(&str, String)],
    creds: Option<&bigmachine_quic::Credentials>,
) -> (SocketAddr, tokio::process::Child) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current exe: {e}"));
    let mut child = tokio::process::Command::new(exe)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {env:?}: {e}"));
    let mut stdin = child.stdin.take().unwrap_or_else(|| panic!("no stdin"));
    if let Some(creds) = creds {
        stdin
            .write_all(creds.to_pem().as_bytes())
            .await
            .unwrap_or_else(|e| panic!("credentials to the child: {e}"));
    }
    drop(stdin);
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let mut line = String::new();
    tokio::io::BufReader::new(stdout)
        .read_line(&mut line)
        .await
        .unwrap_or_else(|e| panic!("child's address: {e}"));
    let addr = line
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("child's address {line:?}: {e}"));
    (addr, child)
}

/// The credentials the parent wrote to this process's stdin ([`spawn_self`]).
#[allow(dead_code)] // not every bench spawns children with credentials
pub(crate) fn credentials_from_stdin() -> bigmachine_quic::Credentials {
    use std::io::Read;
    let mut pem = Vec::new();
    std::io::stdin()
        .read_to_end(&mut pem)
        .unwrap_or_else(|e| panic!("credentials from stdin: {e}"));
    bigmachine_quic::Credentials::from_pem(&pem).unwrap_or_else(|e| panic!("credentials: {e}"))
}

/// CPU seconds (user and system) of this process, or of the process `pid` (a child of this
/// user: its CPU clock is readable).
pub(crate) fn cpu_seconds(pid: Option<u32>) -> f64 {
    let mut clock: libc::clockid_t = libc::CLOCK_PROCESS_CPUTIME_ID;
    if let Some(pid) = pid {
        // SAFETY: clock_getcpuclockid writes one clockid_t through a valid pointer.
        let got = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) };
        assert_eq!(got, 0, "no CPU clock for process {pid}");
    }
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let got = unsafe { libc::clock_gettime(clock, &mut t) };
    assert_eq!(got, 0, "clock_gettime of {pid:?}");
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}
