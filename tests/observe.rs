//! Watching a cluster from its driver: one Prometheus scrape of every machine, the JSON vars,
//! and the status page as a browser (headless Chromium) shows it.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bigmachine::testsystem::TestSystem;
use bigmachine::{Error, Kind, Result, B};
use common::{echo_cluster, http_get};

/// A series of a scrape: its labels, by name.
type Labels = HashMap<String, String>;

/// A Prometheus text exposition, parsed strictly: every sample line is `name{labels} value`
/// with quoted label values, and every sample's family has a `# TYPE` line before it, once.
fn parse_scrape(text: &str) -> Result<Vec<(String, Labels, f64)>> {
    let bad = |line: &str, why: &str| Error::new(Kind::Invalid, format!("{why}: {line:?}"));
    let mut typed: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or_else(|| bad(line, "TYPE"))?;
            if typed.insert(name.to_string(), kind.to_string()).is_some() {
                return Err(bad(line, "a second TYPE line for one family"));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| bad(line, "no value"))?;
        let value: f64 = value.parse().map_err(|_| bad(line, "value"))?;
        let (name, labels) = match series.split_once('{') {
            None => (series, Labels::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').ok_or_else(|| bad(line, "labels"))?;
                let mut labels = Labels::new();
                // Values here never hold `",`: split on it.
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").ok_or_else(|| bad(line, "label"))?;
                    labels.insert(k.to_string(), v.trim_end_matches('"').to_string());
                }
                (name, labels)
            }
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains_key(*f)))
            .unwrap_or(name);
        if !typed.contains_key(family) {
            return Err(bad(line, "a sample without a TYPE line"));
        }
        samples.push((name.to_string(), labels, value));
    }
    Ok(samples)
}

/// The sum of the samples named `name` whose labels include `want`.
fn sum(samples: &[(String, Labels, f64)], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, labels, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

fn debug_server(b: &B) -> Result<SocketAddr> {
    bigmachine::debug::serve(b.clone(), "127.0.0.1:0".parse().map_err(Error::other)?)
}

async fn get(addr: SocketAddr, path: &'static str) -> Result<(String, String)> {
    tokio::task::spawn_blocking(move || http_get(addr, path))
        .await
        .map_err(Error::other)?
        .map_err(Error::other)
}

/// A scrape of the cluster's metrics once `ready` holds for its samples (a call's figures are
/// counted just after its reply leaves: a scrape may come a moment before), or the last one
/// after 10 s. A scrape with a machine left out is an error.
async fn scrape_when(
    addr: SocketAddr,
    ready: impl Fn(&[(String, Labels, f64)]) -> bool,
) -> Result<(String, Vec<(String, Labels, f64)>)> {
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (head, text) = get(addr, "/debug/bigmachine/metrics").await?;
        assert!(head.contains("200"), "{head}");
        assert!(!text.contains("# machine left out"), "{text}");
        let samples = parse_scrape(&text)?;
        if ready(&samples) || tokio::time::Instant::now() > until {
            return Ok((text, samples));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_scrape_counts_calls_and_errors() -> Result<()> {
    let (b, machines) = echo_cluster(TestSystem::new(), 2).await?;
    // Machine i: N calls that succeed, M that fail in the method.
    let counts = [(7, 3), (4, 2)];
    for (m, (n, errors)) in machines.iter().zip(counts) {
        for i in 0..n {
            let _: String = m.call("Echo.echo", &format!("call {i}")).await?;
        }
        for _ in 0..errors {
            let failed = m.call::<_, u64>("Echo.fail", &"no".to_string()).await;
            assert!(failed.is_err());
        }
    }
    // A keepalive answered by each, for its round trip.
    for m in &machines {
        let kept = common::eventually(Duration::from_secs(5), || {
            !m.keepalive_reply_times().is_empty()
        })
        .await;
        assert!(kept, "a keepalive of {} answered", m.addr());
    }
    let addr = debug_server(&b)?;
    let all_errors: f64 = counts.iter().map(|(_, e)| *e as f64).sum();
    let (text, samples) = scrape_when(addr, |s| {
        sum(
            s,
            "bigmachine_call_errors_total",
            &[("method", "Echo.fail")],
        ) >= all_errors
    })
    .await?;
    for (m, (n, errors)) in machines.iter().zip(counts) {
        let machine = m.addr().to_string();
        let on = |method: &'static str| [("machine", machine.clone()), ("method", method.into())];
        let with = |labels: &[(&'static str, String)]| {
            labels
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect::<Vec<_>>()
        };
        let got = |name: &str, labels: &[(&'static str, String)]| {
            let labels = with(labels);
            let refs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            sum(&samples, name, &refs)
        };
        assert_eq!(got("bigmachine_calls_total", &on("Echo.echo")), n as f64);
        assert_eq!(
            got("bigmachine_calls_total", &on("Echo.fail")),
            errors as f64
        );
        let mut method_errors = on("Echo.fail").to_vec();
        method_errors.push(("kind", "Precondition".into()));
        method_errors.push(("origin", "method".into()));
        assert_eq!(
            got("bigmachine_call_errors_total", &method_errors),
            errors as f64,
            "{text}"
        );
        assert_eq!(got("bigmachine_call_errors_total", &on("Echo.echo")), 0.0);
        assert_eq!(
            got("bigmachine_call_latency_seconds_count", &on("Echo.echo")),
            n as f64
        );
        assert_eq!(got("bigmachine_calls_in_flight", &on("Echo.echo")), 0.0);
        assert!(got("bigmachine_request_bytes_total", &on("Echo.echo")) > 0.0);
        assert!(got("bigmachine_uptime_seconds", &[("machine", machine.clone())]) > 0.0);
        // The driver's figure of this machine: named by the driver's series itself.
        let rtt = samples.iter().find(|(n, labels, _)| {
            n == "bigmachine_keepalive_round_trip_seconds"
                && labels.get("machine") == Some(&machine)
        });
        assert!(rtt.is_some_and(|(_, _, v)| *v > 0.0), "{text}");
    }
    assert_eq!(
        sum(
            &samples,
            "bigmachine_machines",
            &[("machine", "driver"), ("state", "running")]
        ),
        2.0,
        "{text}"
    );
    // The JSON vars carry the same figures.
    let (_, vars) = get(addr, "/debug/bigmachine/vars").await?;
    let vars: serde_json::Value = serde_json::from_str(&vars).map_err(Error::other)?;
    let first = machines[0].addr().to_string();
    assert_eq!(
        vars[&first]["bigmachine_calls{method=\"Echo.echo\"}"], counts[0].0 as f64,
        "{vars}"
    );
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_of_16_machines_has_every_machine() -> Result<()> {
    let (b, machines) = echo_cluster(TestSystem::new(), 16).await?;
    for m in &machines {
        let _: String = m.call("Echo.echo", &"x".to_string()).await?;
        assert!(m
            .call::<_, u64>("Echo.fail", &"x".to_string())
            .await
            .is_err());
    }
    let addr = debug_server(&b)?;
    let (text, samples) = scrape_when(addr, |s| {
        sum(
            s,
            "bigmachine_call_errors_total",
            &[("method", "Echo.fail")],
        ) >= 16.0
    })
    .await?;
    for m in &machines {
        let machine = m.addr().to_string();
        for method in ["Echo.echo", "Echo.fail"] {
            let on = [("machine", machine.as_str()), ("method", method)];
            assert_eq!(
                sum(&samples, "bigmachine_calls_total", &on),
                1.0,
                "{machine} {method}"
            );
        }
    }
    println!(
        "a scrape of 16 machines: {} bytes, {} samples",
        text.len(),
        samples.len()
    );
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_answer_clearly_when_they_cannot_be_taken() -> Result<()> {
    let (b, machines) = echo_cluster(TestSystem::new(), 1).await?;
    let addr = debug_server(&b)?;
    // No heap profiler installed in this program: 501, saying how to install one.
    let (head, body) = get(addr, "/debug/bigmachine/pprof/heap").await?;
    assert!(head.contains(" 501"), "{head}");
    assert!(body.contains("set_heap_profiler"), "{body}");
    for bad in [
        "/debug/bigmachine/pprof/profile?seconds=0",
        "/debug/bigmachine/pprof/profile?seconds=x",
        "/debug/bigmachine/pprof/profile?seconds=1&machine=nowhere",
        "/debug/bigmachine/pprof/profile?seconds=1&machine=127.0.0.1:1",
    ] {
        let (head, body) = get(addr, bad).await?;
        assert!(head.contains(" 400"), "{bad}: {head} {body}");
    }
    // A page asked for by a host name (as after DNS rebinding) is refused.
    let (head, _) = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(addr)?;
        write!(conn, "GET /debug/bigmachine/status HTTP/1.1\r\nHost: evil.example:3333\r\nConnection: close\r\n\r\n")?;
        let mut response = String::new();
        conn.read_to_string(&mut response)?;
        Ok::<_, std::io::Error>((response.lines().next().unwrap_or_default().to_string(), ()))
    })
    .await
    .map_err(Error::other)??;
    assert!(head.contains(" 403"), "{head}");
    // One machine's CPU profile (of this very process: a test system's machines share it),
    // while a thread of this process keeps a core busy.
    let busy = std::thread::spawn(|| {
        let until = std::time::Instant::now() + Duration::from_millis(1500);
        let mut n = 0u64;
        while std::time::Instant::now() < until {
            n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        n
    });
    let path = format!(
        "/debug/bigmachine/pprof/profile?seconds=1&machine={}",
        machines[0].addr()
    );
    let (head, body) = tokio::task::spawn_blocking(move || common::http_get_bytes(addr, &path))
        .await
        .map_err(Error::other)??;
    let _ = busy.join();
    assert!(head.contains(" 200"), "{head}");
    let p = bigmachine::profile::decode(&body)?;
    assert!(!p.sample.is_empty(), "a busy process's profile has samples");
    let machine = machines[0].addr().to_string();
    let labelled = p.sample.iter().all(|s| {
        s.label.iter().any(|l| {
            p.string_table[l.key as usize] == "machine" && p.string_table[l.str as usize] == machine
        })
    });
    assert!(labelled, "every sample labelled with the one machine");
    b.shutdown().await;
    Ok(())
}

/// Chromium, as Debian installs it (the test command installs it when missing).
const CHROMIUM: &str = "/usr/bin/chromium";
/// Set (by the test command) to make a missing Chromium a failure rather than a skip.
const REQUIRE_CHROMIUM: &str = "BIGMACHINE_REQUIRE_CHROMIUM";

/// Runs headless Chromium with `args` then `url`, as root may (no sandbox), with a profile of
/// its own and no background traffic; its stdout, or an error after 60 s.
async fn chromium(args: &[String], url: &str) -> Result<String> {
    if !std::path::Path::new(CHROMIUM).exists() {
        return Err(Error::new(
            Kind::Precondition,
            format!("{CHROMIUM} is missing: `apt-get install chromium` (scripts/test.sh does)"),
        ));
    }
    let profile = std::env::temp_dir().join(format!("bigmachine-chromium-{}", std::process::id()));
    let run = tokio::process::Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .map_err(|_| Error::new(Kind::DeadlineExceeded, "chromium took over 60 s"))??;
    let _ = std::fs::remove_dir_all(&profile);
    if !out.status.success() {
        return Err(Error::new(
            Kind::Other,
            format!(
                "chromium: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_headless_chromium() -> Result<()> {
    if !std::path::Path::new(CHROMIUM).exists() && std::env::var_os(REQUIRE_CHROMIUM).is_none() {
        eprintln!("SKIPPED: {CHROMIUM} is missing (scripts/test.sh installs it and requires it)");
        return Ok(());
    }
    let system = TestSystem::new();
    let (b, machines) = echo_cluster(system.clone(), 3).await?;
    for m in &machines[..2] {
        let _: String = m.call("Echo.echo", &"page".to_string()).await?;
    }
    // One machine dies, to show a stopped one and its error.
    assert!(system.kill(&machines[2]));
    let stopped = tokio::time::timeout(
        Duration::from_secs(10),
        machines[2].wait(bigmachine::State::Stopped),
    )
    .await
    .map_err(|_| Error::new(Kind::DeadlineExceeded, "killed machine not stopped in 10 s"))?;
    assert_eq!(stopped, bigmachine::State::Stopped);
    let addr = debug_server(&b)?;
    let url = format!("http://{addr}/debug/bigmachine/status");
    let dom = chromium(&["--dump-dom".to_string()], &url).await?;
    let rows: Vec<&str> = dom.split("<tr class=\"machine\"").skip(1).collect();
    assert_eq!(rows.len(), 3, "{dom}");
    for (m, state) in machines.iter().zip(["running", "running", "stopped"]) {
        let addr = m.addr().to_string();
        let row = rows
            .iter()
            .find(|r| r.contains(&format!("data-addr=\"{addr}\"")))
            .ok_or_else(|| Error::other(format!("no row for {addr} in {dom}")))?;
        assert!(row.contains(&format!("data-state=\"{state}\"")), "{row}");
    }
    assert!(
        dom.contains("machine killed"),
        "the dead machine's error: {dom}"
    );
    // A picture for a person to look at.
    let shot = common::profile_dir()?
        .parent()
        .map(|target| target.join("status-page.png"))
        .ok_or_else(|| Error::other("no target directory"))?;
    let _ = std::fs::remove_file(&shot);
    chromium(
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1400,500".to_string(),
        ],
        &url,
    )
    .await?;
    let png = std::fs::read(&shot)?;
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    b.shutdown().await;
    Ok(())
}
