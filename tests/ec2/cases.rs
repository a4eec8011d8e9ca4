//! The EC2 tests, each on a fresh emulated account with its own player.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bigmachine::binary::digest_bytes;
use bigmachine::ec2::testing::{EmulatedInstance, Emulator, APP};
use bigmachine::ec2::{Ec2Config, Ec2System};
use bigmachine::{Error, Kind, Machine, Result, Services, State, B};

use crate::common::{self, eventually, Echo};
use crate::moto::Moto;
use crate::pi::{shares, CirclePi, CirclePiClient};
use crate::player::{cloud_config, Player};
use crate::{http, REGION};

/// A test: an async function of the emulator.
pub(crate) type Test = fn(Arc<Moto>) -> Pin<Box<dyn Future<Output = Result<()>>>>;

macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        vec![$((
            stringify!($name),
            (|moto| Box::pin($name(moto)) as Pin<Box<dyn Future<Output = Result<()>>>>) as Test,
        )),*]
    };
}

pub(crate) fn tests() -> Vec<(&'static str, Test)> {
    tests![
        ec2_bigpi_end_to_end,
        ec2_spot_shortfall_falls_back_to_on_demand,
        ec2_spot_only_reports_the_shortfall,
        ec2_terminated_instance_stops_its_machine_before_keepalive_timeout,
        ec2_rate_limit_holds_under_a_burst_of_keepalive_failures,
        ec2_unknown_instance_type_fails_before_launch,
        ec2_launch_data_carries_no_ca_key,
        ec2_bootstrap_with_wrong_digest_is_refused,
        ec2_shutdown_during_a_launch_leaves_nothing_running,
    ]
}

fn fail(message: impl Into<String>) -> Error {
    Error::other(message.into())
}

fn check(cond: bool, message: impl Into<String>) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(fail(message))
    }
}

/// Builds the bootstrap (the `ec2boot` example) the instances fetch, with the `ec2` feature of
/// this build (so that nothing else is rebuilt).
pub(crate) fn build_examples() -> Result<()> {
    common::build_examples(&["ec2boot"], &["ec2"])
}

fn example(name: &str) -> Result<PathBuf> {
    common::example_path(name)
}

/// One test's world: a fresh emulated account with a VPC on loopback, a bootstrap server, and a
/// player for its instances.
struct World {
    emulator: Emulator,
    player: Arc<Player>,
    subnet: String,
    port: u16,
    bootstrap: SocketAddr,
    sha256: String,
    root: PathBuf,
}

impl Drop for World {
    fn drop(&mut self) {
        self.player.stop();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl World {
    async fn new(moto: &Moto) -> Result<Self> {
        moto.reset().await?;
        let emulator = Emulator::new(&moto.endpoint(), REGION).await?;
        let subnet = emulator.subnet("127.77.0.0/16", "127.77.1.0/24").await?;
        let port = std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let ec2boot = std::fs::read(example("ec2boot")?)?;
        let sha256 = digest_bytes(&ec2boot);
        let files = HashMap::from([
            ("/ec2boot".to_string(), ec2boot),
            // Not the bootstrap: were it run, it would leave a mark.
            (
                "/impostor".to_string(),
                b"#!/bin/sh\ntouch \"$BIGMACHINE_HOME/impostor-ran\"\n".to_vec(),
            ),
        ]);
        let bootstrap = http::serve(files).await?;
        let root = std::env::temp_dir().join(format!(
            "bigmachine-ec2-test-{}-{}",
            std::process::id(),
            port
        ));
        let player = Player::start(emulator.clone(), root.clone());
        Ok(Self {
            emulator,
            player,
            subnet,
            port,
            bootstrap,
            sha256,
            root,
        })
    }

    /// The settings of a driver on this world: c5.large instances of an Amazon Linux image
    /// found by name, in the loopback subnet, reached at their private addresses.
    fn config(&self) -> Ec2Config {
        let mut c = Ec2Config::default();
        c.instance_type = "c5.large".into();
        c.ami_name = "amzn2-ami-hvm-*-{arch}-gp2".into();
        c.region = Some(REGION.into());
        c.subnet = Some(self.subnet.clone());
        c.private_addresses = true;
        c.port = self.port;
        c.bootstrap_url = format!("http://{}/ec2boot", self.bootstrap);
        c.bootstrap_sha256 = self.sha256.clone();
        c.api_rate = 50.0;
        c.api_burst = 50;
        c.keepalive.period = Duration::from_millis(200);
        c.keepalive.timeout = Duration::from_secs(60);
        c.keepalive.rpc_timeout = Duration::from_secs(5);
        c
    }

    async fn instances(&self) -> Result<Vec<EmulatedInstance>> {
        self.emulator.instances().await
    }

    /// Waits (at most `limit`) until every instance is terminated and no machine process runs.
    async fn all_gone(&self, limit: Duration) -> Result<bool> {
        let until = Instant::now() + limit;
        loop {
            let instances = self.instances().await?;
            if instances.iter().all(|i| i.state == "terminated") && self.player.alive() == 0 {
                return Ok(true);
            }
            if Instant::now() > until {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn echo() -> Services {
    Services::new().with(
        "Echo",
        Echo {
            greeting: "hi ".into(),
        },
    )
}

/// Starts `n` machines and waits (at most 120 s) for them to be Running; returns them and the
/// time it took.
async fn running(b: &B, n: usize) -> Result<(Vec<Machine>, Duration)> {
    let started = Instant::now();
    let machines = b.start(n, echo()).await?;
    for m in &machines {
        let state = tokio::time::timeout(Duration::from_secs(120), m.wait(State::Running))
            .await
            .map_err(|_| fail("machine did not boot within 120 s"))?;
        if state != State::Running {
            return Err(m.err().unwrap_or_else(|| fail("machine stopped")));
        }
    }
    Ok((machines, started.elapsed()))
}

/// bigpi on EC2, as its `main` runs it: the driver made from the command line's flags (so
/// the `--bigm.ec2-*` flags are under test too), 4 machines, π sampled on every core.
async fn ec2_bigpi_end_to_end(moto: Arc<Moto>) -> Result<()> {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bigm: bigmachine::driver::Flags,
    }
    let world = World::new(&moto).await?;
    let c = world.config();
    let cli = Cli::try_parse_from([
        "bigpi".to_string(),
        "--bigm.system=ec2".into(),
        format!("--bigm.ec2-instance-type={}", c.instance_type),
        format!("--bigm.ec2-ami-name={}", c.ami_name),
        format!("--bigm.ec2-subnet={}", world.subnet),
        "--bigm.ec2-private-addresses".into(),
        format!("--bigm.ec2-port={}", world.port),
        format!("--bigm.ec2-bootstrap-url={}", c.bootstrap_url),
        format!("--bigm.ec2-bootstrap-sha256={}", c.bootstrap_sha256),
        "--bigm.keepalive-period=500ms".into(),
        "--bigm.keepalive-timeout=60s".into(),
    ])
    .map_err(|e| fail(e.to_string()))?;
    let b = bigmachine::driver::start_with(&cli.bigm).await?;
    check(
        b.system().name() == "ec2",
        "the flags did not make an EC2 driver",
    )?;
    let started = Instant::now();
    let machines = b.start(4, Services::new().with("PI", CirclePi)).await?;
    for m in &machines {
        let state = tokio::time::timeout(Duration::from_secs(120), m.wait(State::Running))
            .await
            .map_err(|_| fail("machine did not boot within 120 s"))?;
        if state != State::Running {
            return Err(m.err().unwrap_or_else(|| fail("machine stopped")));
        }
    }
    println!(
        "    4 EC2 machines (played) Running {:.2?} after start(4)",
        started.elapsed()
    );
    let n = 20_000_000u64;
    let cores: usize = machines.iter().map(|m| m.maxprocs().max(1)).sum();
    check(
        cores == 8,
        format!("4 c5.large machines report {cores} cores, not 8"),
    )?;
    let mut per_core = shares(n, cores).into_iter();
    let mut calls = Vec::new();
    for m in &machines {
        for share in per_core.by_ref().take(m.maxprocs().max(1)) {
            calls.push(async move { CirclePiClient::new(m, "PI").sample(&share).await });
        }
    }
    let inside: u64 = futures::future::try_join_all(calls)
        .await?
        .into_iter()
        .sum();
    let p = inside as f64 / n as f64;
    let (pi, sigma) = (4.0 * p, 4.0 * (p * (1.0 - p) / n as f64).sqrt());
    check(
        (pi - std::f64::consts::PI).abs() < 6.0 * sigma + 1e-4,
        format!("π estimated as {pi} ± {sigma}"),
    )?;
    let instances = world.instances().await?;
    check(
        instances.len() == 4 && instances.iter().all(|i| i.spot),
        format!("expected 4 spot instances: {instances:?}"),
    )?;
    b.shutdown().await;
    check(
        world.all_gone(Duration::from_secs(10)).await?,
        format!(
            "after shutdown: {:?}, {} machine processes alive",
            world.instances().await?,
            world.player.alive()
        ),
    )
}

async fn ec2_spot_shortfall_falls_back_to_on_demand(moto: Arc<Moto>) -> Result<()> {
    let world = World::new(&moto).await?;
    let mut config = world.config();
    config.spot_capacity = Some(2);
    let system = Ec2System::new(config).await?;
    let b = B::new(system.clone())?;
    let (machines, took) = running(&b, 4).await?;
    println!("    4 machines (2 spot, 2 on demand) Running {took:.2?} after start");
    let instances = world.instances().await?;
    let spot = instances.iter().filter(|i| i.spot).count();
    check(
        instances.len() == 4 && spot == 2,
        format!("expected 2 spot and 2 on-demand instances: {instances:?}"),
    )?;
    for m in &machines {
        let reply: String = m.call("Echo.echo", &"there".to_string()).await?;
        check(reply == "hi there", "echo")?;
    }
    b.shutdown().await;
    check(
        world.all_gone(Duration::from_secs(10)).await?,
        "instances left after shutdown",
    )
}

async fn ec2_spot_only_reports_the_shortfall(moto: Arc<Moto>) -> Result<()> {
    let world = World::new(&moto).await?;
    let mut config = world.config();
    config.spot_capacity = Some(2);
    config.spot_only = true;
    let b = B::new(Ec2System::new(config).await?)?;
    let err = b
        .start(4, echo())
        .await
        .err()
        .ok_or_else(|| fail("spot-only start(4) with room for 2 succeeded"))?;
    let text = err.to_string();
    check(
        err.kind() == Kind::Unavailable && text.contains("spot-only") && text.contains("2 of 4"),
        format!("the error does not report the shortfall: {text}"),
    )?;
    let instances = world.instances().await?;
    check(
        instances.len() == 2 && instances.iter().all(|i| i.state == "terminated"),
        format!("the two launched instances were not terminated: {instances:?}"),
    )?;
    b.shutdown().await;
    Ok(())
}

async fn ec2_terminated_instance_stops_its_machine_before_keepalive_timeout(
    moto: Arc<Moto>,
) -> Result<()> {
    let world = World::new(&moto).await?;
    let mut config = world.config();
    // A keepalive to the killed machine fails within a second.
    config.keepalive.rpc_timeout = Duration::from_secs(1);
    let timeout = config.keepalive.timeout;
    let b = B::new(Ec2System::new(config).await?)?;
    let (machines, took) = running(&b, 3).await?;
    println!("    3 machines Running {took:.2?} after start");
    let victim = &machines[0];
    let name = victim
        .name()
        .ok_or_else(|| fail("an EC2 machine without a name"))?
        .to_string();
    let instance = world
        .instances()
        .await?
        .into_iter()
        .find(|i| {
            i.tags
                .iter()
                .any(|(k, v)| k == "bigmachine:machine" && *v == name)
        })
        .ok_or_else(|| fail(format!("no instance tagged with machine {name}")))?;
    // The instance goes away under the machine (an operator, a spot interruption).
    world.emulator.terminate(&instance.id).await?;
    world.player.kill(&instance.id);
    let killed = Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(20), victim.wait(State::Stopped)).await;
    let after = killed.elapsed();
    check(
        stopped.is_ok(),
        "the machine was not Stopped within 20 s of its instance's termination",
    )?;
    let err = victim.err().ok_or_else(|| fail("no error"))?;
    check(
        err.to_string().contains("terminated") && err.to_string().contains(&instance.id),
        format!("the error does not name the instance's state: {err}"),
    )?;
    println!(
        "    machine Stopped {after:.2?} after its instance was terminated (keepalive timeout {timeout:?}): {err}"
    );
    for m in &machines[1..] {
        let reply: String = m.call("Echo.echo", &"still".to_string()).await?;
        check(reply == "hi still", "the others serve on")?;
        check(m.state() == State::Running, "another machine stopped")?;
    }
    b.shutdown().await;
    Ok(())
}

async fn ec2_rate_limit_holds_under_a_burst_of_keepalive_failures(moto: Arc<Moto>) -> Result<()> {
    let world = World::new(&moto).await?;
    let mut config = world.config();
    // The original's limit: one request a second, two at once; each machine may be asked
    // about every 100 ms.
    let (rate, burst) = (1.0, 2u32);
    config.api_rate = rate;
    config.api_burst = burst;
    config.keepalive.period = Duration::from_millis(100);
    let system = Ec2System::new(config).await?;
    let b = B::new(system.clone())?;
    let (machines, _) = running(&b, 2).await?;
    let addrs: Vec<SocketAddr> = machines.iter().map(Machine::addr).collect();
    moto.record().await?;
    let window = Duration::from_secs(3);
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < window {
        let addr = addrs[fastrand::usize(..addrs.len())];
        bigmachine::System::keepalive_failed(&system, addr);
        n += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let recorded = moto.recorded().await?;
    // The driver's DescribeInstances (the player's own requests say who they are in their
    // user agent), by the second their signature dates them.
    let mut per_second: HashMap<String, u32> = HashMap::new();
    for r in &recorded {
        let r: serde_json::Value = serde_json::from_str(r).map_err(Error::other)?;
        let headers = r["headers"].as_object().cloned().unwrap_or_default();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        if header("User-Agent").contains(APP) {
            continue;
        }
        let body = r["body"].as_str().unwrap_or_default();
        let body = if r["body_encoded"].as_bool() == Some(true) {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(body)
                .map_err(Error::other)?;
            String::from_utf8_lossy(&bytes).into_owned()
        } else {
            body.to_string()
        };
        if !body.contains("Action=DescribeInstances") {
            continue;
        }
        let date = header("X-Amz-Date");
        *per_second.entry(date).or_default() += 1;
    }
    let total: u32 = per_second.values().sum();
    let most = per_second.values().copied().max().unwrap_or(0);
    println!(
        "    {n} keepalive failures in {window:?}: {total} DescribeInstances at the emulator, at most {most} in one second ({per_second:?})"
    );
    let bound = burst + (window.as_secs_f64() * rate).ceil() as u32 + 1;
    check(
        total >= 1,
        "the monitor never asked about the failing machines",
    )?;
    check(
        total <= bound,
        format!("{total} DescribeInstances in {window:?} (limit {rate}/s, burst {burst})"),
    )?;
    check(
        most <= burst + 1,
        format!("{most} DescribeInstances in one second"),
    )?;
    b.shutdown().await;
    Ok(())
}

async fn ec2_unknown_instance_type_fails_before_launch(moto: Arc<Moto>) -> Result<()> {
    let world = World::new(&moto).await?;
    let mut config = world.config();
    config.instance_type = "zz9.plural".into();
    let b = B::new(Ec2System::new(config).await?)?;
    let err = b
        .start(2, echo())
        .await
        .err()
        .ok_or_else(|| fail("an unknown instance type launched"))?;
    check(
        err.kind() == Kind::Precondition && err.to_string().contains("zz9.plural"),
        format!("{err}"),
    )?;
    let instances = world.instances().await?;
    check(
        instances.is_empty(),
        format!("instances launched: {instances:?}"),
    )?;
    b.shutdown().await;
    Ok(())
}

async fn ec2_launch_data_carries_no_ca_key(moto: Arc<Moto>) -> Result<()> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let world = World::new(&moto).await?;
    let b = B::new(Ec2System::new(world.config()).await?)?;
    let (machines, _) = running(&b, 2).await?;
    let ca = b
        .authority()
        .ok_or_else(|| fail("no authority"))?
        .certificate()
        .clone();
    let provider = rustls::crypto::ring::default_provider();
    let mut keys = Vec::new();
    for instance in world.instances().await? {
        let user_data = world.emulator.user_data(&instance.id).await?;
        check(
            user_data.matches("PRIVATE KEY-----").count() == 2,
            "one private key (BEGIN and END) in the launch data",
        )?;
        let files = cloud_config(&user_data)?.files;
        let credentials = files
            .iter()
            .find(|f| f.path.ends_with("credentials.pem"))
            .ok_or_else(|| fail("no credentials in the launch data"))?;
        let (mode, pem) = (credentials.mode, &credentials.content);
        check(
            mode == 0o600,
            format!("credentials readable by others: {mode:o}"),
        )?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<std::result::Result<_, _>>()
            .map_err(Error::other)?;
        let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(Error::other)?;
        check(certs.len() == 2, "the instance's certificate and the CA's")?;
        check(certs[1] == ca, "the second certificate is the cluster CA's")?;
        check(certs[0] != ca, "the instance's certificate is not the CA's")?;
        // The one key is the instance's own: it matches the instance's certificate, so it
        // cannot be the CA's.
        rustls::sign::CertifiedKey::from_der(vec![certs[0].clone()], key.clone_key(), &provider)
            .map_err(|e| fail(format!("the key is not the instance's: {e}")))?;
        keys.push(key.secret_der().to_vec());
    }
    check(
        keys.len() == machines.len() && keys[0] != keys[1],
        "each instance has its own key",
    )?;
    b.shutdown().await;
    Ok(())
}

async fn ec2_bootstrap_with_wrong_digest_is_refused(moto: Arc<Moto>) -> Result<()> {
    let world = World::new(&moto).await?;
    let mut config = world.config();
    // The URL serves something else than the bootstrap whose digest the driver gave.
    config.bootstrap_url = format!("http://{}/impostor", world.bootstrap);
    let b = B::new(Ec2System::new(config).await?)?;
    let machines = b.start(1, echo()).await?;
    let m = &machines[0];
    let state = tokio::time::timeout(Duration::from_secs(30), m.wait(State::Running))
        .await
        .map_err(|_| fail("the machine neither booted nor stopped in 30 s"))?;
    check(
        state == State::Stopped,
        "a machine booted from a bootstrap of another digest",
    )?;
    let err = m.err().ok_or_else(|| fail("no error"))?;
    check(
        err.to_string().contains("terminated"),
        format!("the error does not say the instance is gone: {err}"),
    )?;
    let instance = world
        .player
        .instances()
        .into_iter()
        .next()
        .ok_or_else(|| fail("no instance played"))?;
    let played = world
        .player
        .played(&instance)
        .ok_or_else(|| fail("nothing played"))?;
    check(
        played.exit.is_some_and(|c| c != 0),
        format!("the boot script did not fail: {played:?}"),
    )?;
    check(
        played.output.iter().any(|l| l.contains("FAILED")),
        format!(
            "the digest check did not report a mismatch: {:?}",
            played.output
        ),
    )?;
    let ran = world
        .root
        .join(&instance)
        .join("var/lib/bigmachine/impostor-ran");
    check(!ran.exists(), "the impostor bootstrap ran")?;
    check(
        eventually(Duration::from_secs(5), || world.player.alive() == 0).await,
        "a machine process is left",
    )?;
    b.shutdown().await;
    Ok(())
}

/// Shutdown while `start` is still launching: the launch ends with an error, and every instance
/// it made is terminated, whether shutdown saw it or the launch found itself shut out.
async fn ec2_shutdown_during_a_launch_leaves_nothing_running(moto: Arc<Moto>) -> Result<()> {
    let world = World::new(&moto).await?;
    let mut config = world.config();
    // Launches spaced out (4 requests a second): shutdown lands among them.
    config.api_rate = 4.0;
    config.api_burst = 1;
    let system = Ec2System::new(config).await?;
    let b = B::new(system.clone())?;
    let start = tokio::spawn({
        let b = b.clone();
        async move { b.start(8, echo()).await.map(|m| m.len()) }
    });
    check(
        eventually(Duration::from_secs(30), || !system.instances().is_empty()).await,
        "no instance launched within 30 s",
    )?;
    b.shutdown().await;
    let outcome = tokio::time::timeout(Duration::from_secs(60), start)
        .await
        .map_err(|_| fail("start did not end within 60 s of shutdown"))?
        .map_err(|e| fail(format!("start task: {e}")))?;
    check(
        outcome.is_err(),
        format!("start(8) succeeded across a shutdown: {outcome:?}"),
    )?;
    check(
        world.all_gone(Duration::from_secs(30)).await?,
        format!(
            "instances left after shutdown: {:?}",
            world.instances().await?
        ),
    )?;
    let launched = world.instances().await?.len();
    check(
        (1..8).contains(&launched),
        format!("{launched} instances launched: shutdown did not land mid-launch"),
    )?;
    Ok(())
}
