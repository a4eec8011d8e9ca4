//! A machine as a process: its output, environment, arguments and host.

use std::time::Duration;

use bigmachine::local::LocalSystem;
use bigmachine::{Params, Result, Services, B};

use crate::support::{check, running, short_keepalive, sub_driver, tests, Probe, Test, PRINTED};

pub(crate) fn tests() -> Vec<(&'static str, Test)> {
    tests![
        lines_printed_before_shutdown_all_arrive_in_order,
        lines_printed_before_a_machine_shutdown_all_arrive_before_it_returns,
        environ_and_user_flags_reach_the_machine,
        machines_report_their_host,
        credentials_leave_nothing_on_disk,
        inflight_request_bytes_are_bounded,
    ]
}

async fn lines_printed_before_shutdown_all_arrive_in_order() -> Result<()> {
    printed_lines_all_arrive("print")
}

async fn lines_printed_before_a_machine_shutdown_all_arrive_before_it_returns() -> Result<()> {
    printed_lines_all_arrive("print-machine-shutdown")
}

/// Runs a sub-driver in `role`, whose machine prints [`PRINTED`] numbered lines before it is
/// shut down; checks they all reached the sub-driver's stderr, in order.
fn printed_lines_all_arrive(role: &str) -> Result<()> {
    let out = sub_driver(role, &["--bigm.keepalive-timeout=5s"])?
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
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
        numbers.len() as u64 == PRINTED,
        format!("{} of {PRINTED} lines arrived", numbers.len()),
    )?;
    check(
        numbers.iter().copied().eq(0..PRINTED),
        "lines arrived out of order",
    )
}

async fn environ_and_user_flags_reach_the_machine() -> Result<()> {
    let out = sub_driver(
        "probe",
        &["--user-flag=marmalade", "--bigm.keepalive-timeout=5s"],
    )?
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
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

async fn machines_report_their_host() -> Result<()> {
    let system = LocalSystem::builder()
        .keepalive(short_keepalive())
        .maxprocs(1)
        .build();
    let b = B::new(system)?;
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
    // Started through /proc/self/exe, the machine still goes by the program's name.
    let comm = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/comm"));
    let (ours, its) = (comm("self")?, comm(&info.pid.to_string())?);
    check(
        ours == its,
        format!("the machine is named {its:?}, not {ours:?}"),
    )?;
    let workers: Option<String> = m
        .call("Probe.env", &"TOKIO_WORKER_THREADS".to_string())
        .timeout(Duration::from_secs(10))
        .await?;
    check(
        workers.as_deref() == Some("1"),
        format!("worker threads {workers:?}"),
    )?;
    b.shutdown().await;
    Ok(())
}

/// The `.pem` files in the temporary directory, where credentials files were written.
fn pem_files() -> Result<Vec<std::path::PathBuf>> {
    Ok(std::fs::read_dir(std::env::temp_dir())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pem"))
        .collect())
}

async fn credentials_leave_nothing_on_disk() -> Result<()> {
    let before = pem_files()?;
    // Watches the temporary directory while the machines start, for a file that lives even
    // a few milliseconds (bounded: the flag ends it, else 60 s).
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (done, before) = (done.clone(), before.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let until = std::time::Instant::now() + Duration::from_secs(60);
            while !done.load(std::sync::atomic::Ordering::Relaxed)
                && std::time::Instant::now() < until
            {
                for p in pem_files().unwrap_or_default() {
                    if !before.contains(&p) && !seen.contains(&p) {
                        seen.push(p);
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            seen
        })
    };
    let b = B::new(LocalSystem::builder().keepalive(short_keepalive()).build())?;
    // An environment makes each machine re-execute itself: credentials are handed over twice.
    let params = Params::new()
        .services(Services::new().with("Probe", Probe))
        .environ(["BIGM_CREDENTIALS_TEST=1"]);
    let machines = running(&b, 2, params).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = watcher
        .join()
        .map_err(|_| bigmachine::Error::other("the watcher panicked"))?;
    let machines = machines?;
    check(
        seen.is_empty(),
        format!("credentials written to disk: {seen:?}"),
    )?;
    for m in &machines {
        let from: Option<String> = m
            .call("Probe.env", &"BIGMACHINE_CREDENTIALS".to_string())
            .await?;
        check(
            from.as_deref() == Some("-"),
            format!("the machine read its credentials from {from:?}, not its stdin"),
        )?;
        let exec: Option<String> = m
            .call("Probe.env", &"BIGM_CREDENTIALS_TEST".to_string())
            .await?;
        check(exec.is_some(), "the machine did not re-execute")?;
    }
    b.shutdown().await;
    Ok(())
}

/// The peak resident memory of process `pid`, in bytes (its VmHWM).
fn peak_rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib << 10)
        .ok_or_else(|| bigmachine::Error::other(format!("no VmHWM for {pid}")))
}

async fn inflight_request_bytes_are_bounded() -> Result<()> {
    const MIB: u64 = 1 << 20;
    let budget = 128 * MIB;
    let system = LocalSystem::builder()
        .keepalive(short_keepalive())
        .env("BIGMACHINE_INFLIGHT_BYTES", budget.to_string())
        .build();
    let b = B::new(system)?;
    let machines = running(&b, 1, Services::new().with("Probe", Probe)).await?;
    let m = &machines[0];
    let pid = m.info().await?.pid;
    let before = peak_rss(pid)?;
    // 16 calls of 64 MiB at once (1 GiB), each holding its argument for 100 ms.
    let arg = vec![3u8; (64 * MIB) as usize];
    let calls = (0..16).map(|_| async {
        m.call::<Vec<u8>, u64>("Probe.hold", &arg)
            .timeout(Duration::from_secs(600))
            .await
    });
    for len in futures::future::join_all(calls).await {
        check(len? == 64 * MIB, "a call saw another length")?;
    }
    let grew = peak_rss(pid)?.saturating_sub(before);
    eprintln!(
        "machine peak RSS grew by {} MiB for 1 GiB of arguments at once, budget {} MiB",
        grew / MIB,
        budget / MIB
    );
    check(
        grew < budget + 96 * MIB,
        format!(
            "the machine's peak RSS grew by {} MiB, over its budget of {} MiB plus 96",
            grew / MIB,
            budget / MIB
        ),
    )?;
    b.shutdown().await;
    Ok(())
}
