//! Real processes on the local system: this test binary is its own driver and its own machines
//! (it calls `driver::start_with` first, like any bigmachine program), and it runs the examples.
//! Tests that need to kill or watch a driver start this binary again as a sub-driver with
//! `--role`.
//!
//! Runs without libtest (`harness = false`) because machines are re-runs of this binary.

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bigmachine::driver::{self, Flags};
use bigmachine::local::LocalSystem;
use bigmachine::{
    service, Context, Error, KeepaliveConfig, Kind, Params, Result, Services, State, B,
};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(ignore_errors = true)]
struct Args {
    /// Unset in the test runner; names what a sub-driver does.
    #[arg(long)]
    role: Option<String>,
    /// A flag of this program, to check that machines see the driver's arguments.
    #[arg(long)]
    user_flag: Option<String>,
    #[command(flatten)]
    bigm: Flags,
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Probe;

#[service]
impl Probe {
    async fn env(&self, _ctx: &Context, name: String) -> Result<Option<String>> {
        Ok(std::env::var(name).ok())
    }

    async fn args(&self, _ctx: &Context, _arg: ()) -> Result<Vec<String>> {
        Ok(std::env::args().collect())
    }

    async fn print(&self, _ctx: &Context, n: u64) -> Result<()> {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for i in 0..n {
            writeln!(out, "line {i}").map_err(Error::other)?;
        }
        Ok(())
    }

    async fn hang(&self, _ctx: &Context, _arg: ()) -> Result<()> {
        futures::future::pending::<()>().await;
        Ok(())
    }

    async fn echo(&self, _ctx: &Context, text: String) -> Result<String> {
        Ok(text)
    }

    /// Allocates (and touches) 16 MiB at a time until the process is killed.
    async fn hog(&self, _ctx: &Context, _arg: ()) -> Result<()> {
        let mut hoard = Vec::new();
        loop {
            hoard.push(vec![1u8; 16 << 20]);
            tokio::task::yield_now().await;
        }
    }
}

fn short_keepalive() -> KeepaliveConfig {
    KeepaliveConfig {
        period: Duration::from_millis(200),
        timeout: Duration::from_secs(2),
        rpc_timeout: Duration::from_secs(1),
    }
}

fn fail(message: impl Into<String>) -> Error {
    Error::new(Kind::Other, message)
}

fn check(cond: bool, message: impl Into<String>) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(fail(message))
    }
}

async fn running(b: &B, n: usize, params: impl Into<Params>) -> Result<Vec<bigmachine::Machine>> {
    let machines = b.start(n, params).await?;
    for m in &machines {
        let state = tokio::time::timeout(Duration::from_secs(60), m.wait(State::Running))
            .await
            .map_err(|_| fail("machine did not boot within 60 s"))?;
        if state != State::Running {
            return Err(m.err().unwrap_or_else(|| fail("machine stopped")));
        }
    }
    Ok(machines)
}

/// Whether a process is gone (exited, or a zombie nobody reaped yet).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn sigkill(pid: u32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
}

/// This binary again, as a sub-driver with `args`.
fn sub_driver(args: &[&str]) -> Result<Command> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(args)
        .env_remove("BIGMACHINE_MODE")
        .stdin(Stdio::null());
    Ok(cmd)
}

fn example(name: &str) -> Result<PathBuf> {
    // target/<profile>/deps/local-<hash> -> target/<profile>/examples/<name>
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| fail("no target directory"))?;
    let path = dir.join("examples").join(name);
    check(
        path.exists(),
        format!(
            "{} is not built (cargo test builds examples)",
            path.display()
        ),
    )?;
    Ok(path)
}

// ---- tests run by the runner --------------------------------------------------------------

/// Runs an example to completion; returns its stdout and stderr, or why it failed.
async fn run_example(name: &str, args: &[&str]) -> Result<(String, String)> {
    let out = tokio::process::Command::new(example(name)?)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    check(
        out.status.success(),
        format!("{name} failed: {}\n{stdout}\n{stderr}", out.status),
    )?;
    Ok((stdout, stderr))
}

async fn bigpi_estimates_pi() -> Result<()> {
    let args = [
        "-n",
        "20000000",
        "--nmach",
        "2",
        "--bigm.keepalive-timeout=5s",
    ];
    let (stdout, stderr) = run_example("bigpi", &args).await?;
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("π = "))
        .ok_or_else(|| fail(format!("no estimate in {stdout:?}")))?;
    let (pi, sigma) = line
        .split_once(" ± ")
        .ok_or_else(|| fail(format!("unparsable estimate {line:?}")))?;
    let pi: f64 = pi.parse().map_err(Error::other)?;
    let sigma: f64 = sigma.parse().map_err(Error::other)?;
    check(sigma > 0.0 && sigma < 1e-3, format!("σ = {sigma}"))?;
    check(
        (pi - std::f64::consts::PI).abs() < 6.0 * sigma + 1e-4,
        format!("π estimated as {pi} ± {sigma}"),
    )?;
    check(
        stderr.contains("samples/s"),
        "bigpi did not report its rate",
    )
}

async fn bigoom_reports_out_of_memory() -> Result<()> {
    // The memory limit: bigoom's machine limits its address space to 600 MiB.
    let (stdout, _) = run_example(
        "bigoom",
        &["--limit-mib", "600", "--bigm.keepalive-timeout=5s"],
    )
    .await?;
    check(
        stdout.contains("out of memory"),
        format!("no OOM error in {stdout:?}"),
    )
}

async fn four_machines_shuffle_256_mib_to_each_other() -> Result<()> {
    let args = [
        "--nmach",
        "4",
        "--mib",
        "256",
        "--bigm.keepalive-timeout=10s",
    ];
    let (stdout, _) = run_example("bigshuffle", &args).await?;
    check(
        stdout.contains("12 checksums verified, 0 mismatched"),
        format!("checksums not all verified: {stdout}"),
    )
}

async fn four_gib_stream_keeps_the_receiver_small() -> Result<()> {
    // The receiver checksums 4 GiB as it arrives; flow control must keep it from buffering.
    let args = [
        "--nmach",
        "2",
        "--mib",
        "4096",
        "--one-way",
        "--max-rss-mib",
        "256",
        "--bigm.keepalive-timeout=10s",
    ];
    let (stdout, _) = run_example("bigshuffle", &args).await?;
    check(
        stdout.contains("1 checksums verified, 0 mismatched"),
        format!("4 GiB transfer not verified: {stdout}"),
    )?;
    println!("    {}", stdout.lines().collect::<Vec<_>>().join("\n    "));
    Ok(())
}

async fn machine_sigkill_fails_its_call_and_says_how_it_died() -> Result<()> {
    let b = B::new(LocalSystem::new().with_keepalive(short_keepalive()))?;
    let machines = running(&b, 1, Services::new().with("Probe", Probe)).await?;
    let m = &machines[0];
    let pid = m.info().await?.pid;
    let call = m.call::<(), ()>("Probe.hang", &());
    let killer = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        sigkill(pid);
        Instant::now()
    };
    let (result, killed_at) = tokio::join!(call, killer);
    let latency = killed_at.elapsed();
    let kind = result.err().map(|e| e.kind());
    check(
        matches!(kind, Some(Kind::Unavailable | Kind::Net)),
        format!("call ended with {kind:?}"),
    )?;
    check(
        latency < Duration::from_secs(1),
        format!("call failed {latency:?} after the kill"),
    )?;
    check(m.state() == State::Stopped, "machine not stopped")?;
    let err = m.err().ok_or_else(|| fail("no machine error"))?;
    check(
        err.to_string().contains("SIGKILL"),
        format!("error does not say how: {err}"),
    )?;
    b.shutdown().await;
    Ok(())
}

async fn driver_sigkill_takes_its_machines_down() -> Result<()> {
    let mut driver = sub_driver(&[
        "--role=hold",
        "--bigm.keepalive-period=200ms",
        "--bigm.keepalive-timeout=2s",
    ])?
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()?;
    let stdout = driver.stdout.take().ok_or_else(|| fail("no stdout"))?;
    let pids = tokio::task::spawn_blocking(move || -> Vec<u32> {
        BufReader::new(stdout)
            .lines()
            .map_while(std::result::Result::ok)
            .filter_map(|l| l.strip_prefix("pid ").and_then(|p| p.parse().ok()))
            .take(2)
            .collect()
    });
    let pids = tokio::time::timeout(Duration::from_secs(60), pids)
        .await
        .map_err(|_| fail("sub-driver did not report its machines"))?
        .map_err(Error::other)?;
    check(pids.len() == 2, format!("machine pids: {pids:?}"))?;
    check(pids.iter().all(|&p| !gone(p)), "machines not running")?;
    sigkill(driver.id());
    let _ = driver.wait();
    let killed = Instant::now();
    while !pids.iter().all(|&p| gone(p)) && killed.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = killed.elapsed();
    for &p in &pids {
        if !gone(p) {
            sigkill(p);
        }
    }
    // Keepalive timeout 2 s, plus scheduling slack.
    check(
        after < Duration::from_secs(4),
        format!("machines outlived the driver by {after:?}"),
    )?;
    println!("    machines exited {after:.2?} after the driver was killed (keepalive timeout 2 s)");
    Ok(())
}

async fn lines_printed_before_shutdown_all_arrive_in_order() -> Result<()> {
    let out = sub_driver(&["--role=print", "--bigm.keepalive-timeout=5s"])?
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()?;
    check(
        out.status.success(),
        format!(
            "sub-driver failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let addr = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let prefix = format!("{addr}: line ");
    let numbers: Vec<u64> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|n| n.parse().ok())
        .collect();
    check(
        numbers.len() == 10_000,
        format!("{} of 10000 lines arrived", numbers.len()),
    )?;
    check(
        numbers.iter().copied().eq(0..10_000),
        "lines arrived out of order",
    )
}

async fn environ_and_user_flags_reach_the_machine() -> Result<()> {
    let out = sub_driver(&[
        "--role=probe",
        "--user-flag=marmalade",
        "--bigm.keepalive-timeout=5s",
    ])?
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    check(
        out.status.success(),
        format!(
            "sub-driver failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    )?;
    check(
        stdout.contains("env=jam"),
        format!("environment not seen: {stdout}"),
    )?;
    check(
        stdout.contains("--user-flag=marmalade"),
        format!("user flag not seen: {stdout}"),
    )
}

async fn other_binary_is_uploaded_and_executed() -> Result<()> {
    // A copy of this binary with one more byte: another digest, same program.
    let exe = std::env::current_exe()?;
    let copy = std::env::temp_dir().join(format!("bigmachine-upload-test-{}", std::process::id()));
    let mut bytes = std::fs::read(&exe)?;
    bytes.push(0);
    std::fs::write(&copy, &bytes)?;
    let expected = bigmachine::core::binary::digest_bytes(&bytes);
    let result = async {
        let b = B::new(LocalSystem::new().with_keepalive(short_keepalive()))?;
        let params = Params::new()
            .services(Services::new().with("Probe", Probe))
            .binary(&copy);
        let machines = running(&b, 1, params).await?;
        let info = machines[0].info().await?;
        check(
            info.digest == expected,
            format!("machine runs {}, not the upload", info.digest),
        )?;
        check(
            info.digest != bigmachine::core::binary::current_digest()?,
            "the upload has the driver's digest",
        )?;
        let reply: String = machines[0]
            .call("Probe.echo", &"after exec".to_string())
            .await?;
        check(reply == "after exec", "echo after exec")?;
        b.shutdown().await;
        Ok(())
    }
    .await;
    let _ = std::fs::remove_file(&copy);
    result
}

async fn binaries_come_from_the_store_or_a_peer() -> Result<()> {
    // A binary no machine has seen: this one with random bytes appended.
    let mut bytes = std::fs::read(std::env::current_exe()?)?;
    bytes.extend((0..16).map(|_| fastrand::u8(..)));
    let digest = bigmachine::core::binary::digest_bytes(&bytes);
    let dir = std::env::temp_dir().join(format!("bigmachine-dist-test-{}", &digest[..16]));
    std::fs::create_dir_all(&dir)?;
    let copy = dir.join("binary");
    std::fs::write(&copy, &bytes)?;
    let size = bytes.len() as u64;
    let params = || {
        Params::new()
            .services(Services::new().with("Probe", Probe))
            .binary(&copy)
    };
    let result = async {
        // One host, one store: the second machine finds the binary there.
        let b = B::new(LocalSystem::new().with_keepalive(short_keepalive()))?;
        running(&b, 1, params()).await?;
        check(
            b.binary_bytes_uploaded() == size,
            "first boot uploads the binary",
        )?;
        let second = running(&b, 1, params()).await?;
        check(
            second[0].info().await?.digest == digest,
            "second machine runs the binary",
        )?;
        check(
            b.binary_bytes_uploaded() == size,
            format!(
                "repeat boot uploaded {} bytes more",
                b.binary_bytes_uploaded() - size
            ),
        )?;
        b.shutdown().await;

        // A store per machine, as on separate hosts: the second fetches from the first.
        let system = LocalSystem::new()
            .with_keepalive(short_keepalive())
            .with_isolated_stores(dir.join("stores"));
        let b = B::new(system)?;
        running(&b, 1, params()).await?;
        check(
            b.binary_bytes_uploaded() == size,
            "first boot uploads the binary",
        )?;
        let second = running(&b, 1, params()).await?;
        check(
            second[0].info().await?.digest == digest,
            "fetched binary runs",
        )?;
        check(
            b.binary_bytes_uploaded() == size,
            "the second machine took the binary from the driver, not its peer",
        )?;
        b.shutdown().await;
        Ok(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn kernel_oom_kill_is_reported_as_oom() -> Result<()> {
    // A cgroup-v1 memory controller caps the machine at 256 MiB; the kernel's OOM killer ends
    // it, and the kernel log names its pid.
    let cgroup = PathBuf::from(format!(
        "/sys/fs/cgroup/memory/bigmachine-test-{}",
        std::process::id()
    ));
    if std::fs::create_dir(&cgroup).is_err() {
        println!("    skipped: no writable cgroup-v1 memory controller here");
        return Ok(());
    }
    let result = async {
        std::fs::write(
            cgroup.join("memory.limit_in_bytes"),
            (256u64 << 20).to_string(),
        )?;
        let b = B::new(LocalSystem::new().with_keepalive(short_keepalive()))?;
        let machines = running(&b, 1, Services::new().with("Probe", Probe)).await?;
        let m = &machines[0];
        let pid = m.info().await?.pid;
        std::fs::write(cgroup.join("cgroup.procs"), pid.to_string())?;
        let call = m.call::<(), ()>("Probe.hog", &()).await;
        check(call.is_err(), "the hog returned")?;
        m.wait(State::Stopped).await;
        let err = m.err().ok_or_else(|| fail("no machine error"))?;
        check(err.is(Kind::Oom), format!("not an OOM error: {err}"))?;
        check(
            err.to_string().contains("out-of-memory killer"),
            format!("{err}"),
        )?;
        b.shutdown().await;
        Ok(())
    }
    .await;
    // The cgroup is empty once its machine is gone.
    for _ in 0..50 {
        if std::fs::remove_dir(&cgroup).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    result
}

async fn machines_report_their_host() -> Result<()> {
    let b = B::new(
        LocalSystem::new()
            .with_keepalive(short_keepalive())
            .with_maxprocs(1),
    )?;
    let machines = running(&b, 1, Services::new().with("Probe", Probe)).await?;
    let m = &machines[0];
    check(m.maxprocs() == 1, format!("maxprocs {}", m.maxprocs()))?;
    let mem = m.mem_info().await?;
    check(mem.total > 0 && mem.process_rss > 0, format!("{mem:?}"))?;
    let disk = m.disk_info().await?;
    check(
        disk.total >= disk.available && disk.total > 0,
        format!("{disk:?}"),
    )?;
    m.load_info().await?;
    let info = m.info().await?;
    check(
        info.pid != std::process::id() && info.os == std::env::consts::OS,
        format!("{info:?}"),
    )?;
    let workers: Option<String> = m
        .call("Probe.env", &"TOKIO_WORKER_THREADS".to_string())
        .await?;
    check(
        workers.as_deref() == Some("1"),
        format!("worker threads {workers:?}"),
    )?;
    b.shutdown().await;
    Ok(())
}

// ---- sub-driver roles --------------------------------------------------------------------

async fn role(name: &str, b: B) -> Result<()> {
    match name {
        "hold" => {
            let machines = running(&b, 2, Services::new().with("Probe", Probe)).await?;
            for m in &machines {
                println!("pid {}", m.info().await?.pid);
            }
            use std::io::Write;
            std::io::stdout().flush()?;
            // Bounded, in case the runner never kills us.
            tokio::time::sleep(Duration::from_secs(120)).await;
            Ok(())
        }
        "print" => {
            let machines = running(&b, 1, Services::new().with("Probe", Probe)).await?;
            let (): () = machines[0].call("Probe.print", &10_000u64).await?;
            println!("{}", machines[0].addr());
            b.shutdown().await;
            Ok(())
        }
        "probe" => {
            let params = Params::new()
                .services(Services::new().with("Probe", Probe))
                .environ(["BIGM_TEST_VAR=jam"]);
            let machines = running(&b, 1, params).await?;
            let env: Option<String> = machines[0]
                .call("Probe.env", &"BIGM_TEST_VAR".to_string())
                .await?;
            let args: Vec<String> = machines[0].call("Probe.args", &()).await?;
            println!("env={}", env.unwrap_or_default());
            println!("args={}", args.join(" "));
            b.shutdown().await;
            Ok(())
        }
        other => Err(fail(format!("unknown role {other}"))),
    }
}

type Test = fn() -> Pin<Box<dyn Future<Output = Result<()>>>>;

macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        [$((stringify!($name), (|| Box::pin($name()) as Pin<Box<dyn Future<Output = Result<()>>>>) as Test)),*]
    };
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let code = rt.block_on(async {
        // On a machine, this never returns.
        let b = match driver::start_with(&args.bigm).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("driver: {e}");
                return 2;
            }
        };
        if let Some(name) = &args.role {
            return match role(name, b).await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("role {name}: {e}");
                    1
                }
            };
        }
        let tests = tests![
            bigpi_estimates_pi,
            bigoom_reports_out_of_memory,
            four_machines_shuffle_256_mib_to_each_other,
            four_gib_stream_keeps_the_receiver_small,
            machine_sigkill_fails_its_call_and_says_how_it_died,
            driver_sigkill_takes_its_machines_down,
            lines_printed_before_shutdown_all_arrive_in_order,
            environ_and_user_flags_reach_the_machine,
            other_binary_is_uploaded_and_executed,
            binaries_come_from_the_store_or_a_peer,
            kernel_oom_kill_is_reported_as_oom,
            machines_report_their_host,
        ];
        println!("\nrunning {} tests", tests.len());
        let started = Instant::now();
        let mut failed = Vec::new();
        for (name, test) in tests {
            let outcome = tokio::time::timeout(Duration::from_secs(120), test())
                .await
                .unwrap_or_else(|_| Err(fail("timed out after 120 s")));
            match outcome {
                Ok(()) => println!("test {name} ... ok"),
                Err(e) => {
                    println!("test {name} ... FAILED\n    {e}");
                    failed.push(name);
                }
            }
        }
        let passed = tests.len() - failed.len();
        println!(
            "\ntest result: {}. {passed} passed; {} failed; 0 ignored; 0 measured; 0 filtered out; finished in {:.2}s\n",
            if failed.is_empty() { "ok" } else { "FAILED" },
            failed.len(),
            started.elapsed().as_secs_f64()
        );
        i32::from(!failed.is_empty())
    });
    std::process::exit(code);
}
