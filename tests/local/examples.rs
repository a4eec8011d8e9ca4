//! The examples, run as a user runs them.

use bigmachine::{Error, Result};

use crate::support::{check, fail, run_example, tests, Test};

pub(crate) fn tests() -> Vec<(&'static str, Test)> {
    #[allow(unused_mut)]
    let mut all = tests![
        bigpi_estimates_pi,
        bigpi_refuses_zero_machines_and_zero_samples,
        oom_machine_reports_memory_at_death,
        four_machines_shuffle_256_mib_to_each_other,
        four_gib_stream_keeps_the_receiver_small,
    ];
    #[cfg(feature = "jemalloc")]
    all.extend(tests![heap_profile_of_every_machine]);
    all
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

async fn bigpi_refuses_zero_machines_and_zero_samples() -> Result<()> {
    for (args, flag) in [(["--nmach", "0"], "--nmach"), (["-n", "0"], "-n")] {
        let out = tokio::process::Command::new(crate::support::example("bigpi")?)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        // clap's usage error: exit code 2, naming the flag; no panic, no NaN.
        check(
            out.status.code() == Some(2) && stderr.contains(flag) && !stderr.contains("panicked"),
            format!(
                "bigpi {args:?}: {}
{stderr}",
                out.status
            ),
        )?;
    }
    Ok(())
}

async fn oom_machine_reports_memory_at_death() -> Result<()> {
    // The memory limit: bigoom's machine limits its address space to 600 MiB.
    let (stdout, _) = run_example(
        "bigoom",
        &["--limit-mib", "600", "--bigm.keepalive-timeout=5s"],
    )
    .await?;
    check(
        stdout.contains("out of memory"),
        format!("no OOM error in {stdout:?}"),
    )?;
    // The memory it held when it died, read by its driver from the kernel: at least what its
    // last line says it held, at most its limit.
    let peak = stdout
        .split("peak resident memory was ")
        .nth(1)
        .and_then(|rest| rest.split(" MiB").next())
        .and_then(|mib| mib.parse::<f64>().ok())
        .ok_or_else(|| fail(format!("no peak memory in {stdout:?}")))?;
    let held = stdout
        .rsplit("INFO holding ")
        .next()
        .and_then(|rest| rest.split(" MiB").next())
        .and_then(|mib| mib.parse::<f64>().ok())
        .ok_or_else(|| fail(format!("no last line of what it held in {stdout:?}")))?;
    println!("    bigoom's machine died at a peak of {peak:.1} MiB, its last line saying {held} MiB (limit 600 MiB)");
    check(
        (held..=600.0).contains(&peak),
        format!(
            "a peak of {peak} MiB for a machine that held {held} MiB, limited to 600: {stdout:?}"
        ),
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

/// bigheap (with the `jemalloc` feature): each of 2 machines holds 48 MiB; the merged heap
/// profile of the cluster has the driver and both machines, each with about that much in use.
#[cfg(feature = "jemalloc")]
async fn heap_profile_of_every_machine() -> Result<()> {
    let out = std::env::temp_dir().join(format!("bigheap-{}.pb.gz", std::process::id()));
    let out_arg = out.display().to_string();
    let (stdout, _) = run_example(
        "bigheap",
        &[
            "--nmach",
            "2",
            "--mib",
            "48",
            "--out",
            &out_arg,
            "--bigm.keepalive-timeout=5s",
        ],
    )
    .await?;
    let written = std::fs::read(&out);
    let _ = std::fs::remove_file(&out);
    let profile = bigmachine::profile::decode(&written?)?;
    check(!profile.sample.is_empty(), "the profile has samples")?;
    // Lines of `MACHINE\tN MiB in use`.
    let in_use: Vec<(&str, f64)> = stdout
        .lines()
        .filter_map(|l| {
            let (machine, rest) = l.split_once('\t')?;
            Some((machine, rest.strip_suffix(" MiB in use")?.parse().ok()?))
        })
        .collect();
    check(
        in_use.len() == 3,
        format!("driver and 2 machines in {stdout:?}"),
    )?;
    check(
        in_use[0].0 == "driver",
        format!("the driver first: {stdout:?}"),
    )?;
    for (machine, mib) in &in_use[1..] {
        // Sampled every 512 KiB on average: within a few MiB of what the machine holds.
        check(
            (40.0..120.0).contains(mib),
            format!("{machine} holds 48 MiB, its profile says {mib} MiB"),
        )?;
    }
    Ok(())
}
