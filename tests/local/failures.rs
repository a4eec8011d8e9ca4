//! How machines die, and what the driver says about it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bigmachine::local::LocalSystem;
use bigmachine::{Error, Kind, Result, Services, State, B};

use crate::common::eventually;
use crate::support::{
    check, fail, gone, running, short_keepalive, sigkill, sub_driver, tests, Probe, ProbeClient,
    Test,
};

pub(crate) fn tests() -> Vec<(&'static str, Test)> {
    tests![
        machine_sigkill_fails_its_call_and_says_how_it_died,
        driver_sigkill_local_machines_gone_within_1s,
        kernel_oom_kill_is_reported_as_oom,
        panicking_machine_reports_panic_and_log_tail,
        a_panic_reaches_the_driver_while_the_machine_lives,
    ]
}

fn local() -> LocalSystem {
    LocalSystem::builder().keepalive(short_keepalive()).build()
}

async fn machine_sigkill_fails_its_call_and_says_how_it_died() -> Result<()> {
    let b = B::new(local())?;
    let machines = running(&b, 1, Services::new().with("Probe", Probe)).await?;
    let m = &machines[0];
    let probe = ProbeClient::new(m, "Probe");
    let pid = m.info().await?.pid;
    let call = probe.hang(&());
    let killer = async {
        // Once the call is running on the machine.
        while probe.hanging(&()).await? == 0 {
            tokio::task::yield_now().await;
        }
        sigkill(pid);
        Ok::<_, Error>(Instant::now())
    };
    let (result, killed_at) = tokio::join!(call, killer);
    let latency = killed_at?.elapsed();
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

/// A local machine watches its driver's process: it goes as soon as the driver does, long before
/// the keepalive timeout (30 s here) would end it.
async fn driver_sigkill_local_machines_gone_within_1s() -> Result<()> {
    let mut driver = sub_driver(
        "hold",
        &[
            "--bigm.keepalive-period=200ms",
            "--bigm.keepalive-timeout=30s",
        ],
    )?
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
    let all_gone = eventually(Duration::from_secs(1), || pids.iter().all(|&p| gone(p))).await;
    let after = killed.elapsed();
    for &p in &pids {
        if !gone(p) {
            sigkill(p);
        }
    }
    check(
        all_gone,
        format!("machines outlived their driver by more than 1 s ({after:?})"),
    )?;
    println!(
        "    machines exited {after:.2?} after the driver was killed (keepalive timeout 30 s)"
    );
    Ok(())
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
        let b = B::new(local())?;
        let machines = running(&b, 1, Services::new().with("Probe", Probe)).await?;
        let m = &machines[0];
        let pid = m.info().await?.pid;
        std::fs::write(cgroup.join("cgroup.procs"), pid.to_string())?;
        let call = m.call::<(), ()>("Probe.hog", &()).await;
        check(call.is_err(), "the hog returned")?;
        m.wait(State::Stopped).await;
        let err = m.err().ok_or_else(|| fail("no machine error"))?;
        check(err.is(Kind::Oom), format!("not an OOM error: {err}"))?;
        // With the kernel's figures, and the peak its driver read when it died.
        for want in [
            "out-of-memory killer",
            "anon-rss:",
            "peak resident memory was",
        ] {
            check(
                err.to_string().contains(want),
                format!("no {want:?} in {err}"),
            )?;
        }
        b.shutdown().await;
        Ok(())
    }
    .await;
    // The cgroup can be removed once its machine is gone.
    eventually(Duration::from_secs(5), || {
        std::fs::remove_dir(&cgroup).is_ok()
    })
    .await;
    result
}

async fn panicking_machine_reports_panic_and_log_tail() -> Result<()> {
    // Without the default hook's backtrace, so the last lines stay the machine's own.
    let system = LocalSystem::builder()
        .keepalive(short_keepalive())
        .env("RUST_BACKTRACE", "0")
        .build();
    let b = B::new(system)?;
    let machines = running(&b, 1, Services::new().with("Probe", Probe)).await?;
    let m = &machines[0];
    let words = "the widget count is 7 and falling".to_string();
    let message = "no more widgets".to_string();
    let call = m
        .call::<(String, String), ()>("Probe.die", &(words.clone(), message.clone()))
        .await;
    check(call.is_err(), "the dying call returned")?;
    m.wait(State::Stopped).await;
    let err = m.err().ok_or_else(|| fail("no machine error"))?;
    let text = err.to_string();
    println!("    the machine's error: {text}");
    // The panic, from the record its hook handed over (the default report names the thread
    // with its id: "thread 'doomed' (1234) panicked").
    let panicked = "it panicked: thread 'doomed' panicked at tests/local/support.rs:";
    for (what, want) in [
        ("how it died", "SIGABRT"),
        ("the panic, its thread and location", panicked),
        ("the panic's message", message.as_str()),
        ("its last line before the panic", words.as_str()),
    ] {
        check(
            err.message().contains(want),
            format!("{what} ({want:?}) is not in the machine's error: {text}"),
        )?;
    }
    let backtrace = err.cause().map(ToString::to_string).unwrap_or_default();
    check(
        backtrace.contains("backtrace") && backtrace.contains("Probe::die"),
        format!("no backtrace through the panicking method in the error's cause: {backtrace}"),
    )?;
    b.shutdown().await;
    Ok(())
}

/// A panic that does not end the machine (a thread of its own panics) reaches the driver over
/// the Supervisor with the next keepalive, as for a machine whose output the driver never sees
/// (EC2); once the machine is lost (its process stopped: keepalives fail), its error names it.
async fn a_panic_reaches_the_driver_while_the_machine_lives() -> Result<()> {
    let b = B::new(local())?;
    let machines = running(&b, 1, Services::new().with("Probe", Probe)).await?;
    let m = &machines[0];
    let message = "a gear slipped".to_string();
    ProbeClient::new(m, "Probe").stumble(&message).await?;
    let heard = eventually(Duration::from_secs(10), || m.last_panic().is_some()).await;
    check(heard, "the driver heard of the panic within 10 s")?;
    let panic = m.last_panic().ok_or_else(|| fail("no panic"))?;
    check(
        panic.message == message
            && panic.thread == "stumbling"
            && panic.location.starts_with("tests/local/support.rs:")
            && panic.count >= 1,
        format!("the panic as recorded: {panic:?}"),
    )?;
    check(m.state() == State::Running, "the machine lives on")?;
    // The process stops (SIGSTOP): keepalives fail and the machine is lost.
    let pid = m.info().await?.pid;
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
    let stopped = tokio::time::timeout(Duration::from_secs(10), m.wait(State::Stopped)).await;
    sigkill(pid);
    check(stopped.is_ok(), "the stopped machine was lost within 10 s")?;
    let err = m.err().ok_or_else(|| fail("no machine error"))?;
    check(
        err.message().contains("failed keepalives")
            && err.message().contains(
                "the last panic it recorded: thread 'stumbling' panicked at tests/local/support.rs:",
            )
            && err.message().contains(&message),
        format!("the lost machine's error names its panic: {err}"),
    )?;
    b.shutdown().await;
    Ok(())
}
