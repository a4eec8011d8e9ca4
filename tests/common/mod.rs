//! Services and helpers shared by the behaviour tests.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::watch;

use bigmachine::testsystem::TestSystem;
use bigmachine::{service, Context, Error, Kind, Machine, Result, Services, State, B};

/// A service with one method per behaviour under test.
#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Echo {
    pub greeting: String,
}

/// Ids of `hang` calls that started, and of those whose handler future was dropped; what
/// `deliver` calls learnt of their replies.
#[derive(Debug, Default)]
pub struct Hangs {
    pub started: HashSet<u64>,
    pub dropped: HashSet<u64>,
    pub delivered: std::collections::HashMap<u64, bool>,
}

/// The `hang` calls of this process, watched.
pub fn hangs() -> &'static watch::Sender<Hangs> {
    static HANGS: OnceLock<watch::Sender<Hangs>> = OnceLock::new();
    HANGS.get_or_init(Default::default)
}

struct DropFlag(u64);

impl Drop for DropFlag {
    fn drop(&mut self) {
        hangs().send_modify(|h| {
            h.dropped.insert(self.0);
        });
    }
}

/// Waits (at most `limit`) until the `hang` calls satisfy `cond`; returns whether they did.
async fn hang_reaches(limit: Duration, cond: impl Fn(&Hangs) -> bool) -> bool {
    let mut rx = hangs().subscribe();
    tokio::time::timeout(limit, rx.wait_for(|h| cond(h)))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// Waits (at most `limit`) for the handler of `hang(id)` to start.
pub async fn handler_started(id: u64, limit: Duration) -> bool {
    hang_reaches(limit, |h| h.started.contains(&id)).await
}

/// Polls `cond` every 10 ms for at most `limit`; returns whether it became true.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = tokio::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (at most `limit`) for `deliver(id)` to learn the fate of its reply; returns it.
pub async fn reply_fate(id: u64, limit: Duration) -> Option<bool> {
    let mut rx = hangs().subscribe();
    let seen = tokio::time::timeout(limit, rx.wait_for(|h| h.delivered.contains_key(&id))).await;
    match seen {
        Ok(Ok(h)) => h.delivered.get(&id).copied(),
        _ => None,
    }
}

/// Waits (at most `limit`) for the handler of `hang(id)` to be dropped.
pub async fn handler_dropped(id: u64, limit: Duration) -> bool {
    hang_reaches(limit, |h| h.dropped.contains(&id)).await
}

#[service]
impl Echo {
    /// Returns the greeting and the argument.
    async fn echo(&self, _ctx: &Context, text: String) -> Result<String> {
        Ok(format!("{}{text}", self.greeting))
    }

    /// Fails with a Precondition error carrying `message`.
    async fn fail(&self, _ctx: &Context, message: String) -> Result<u64> {
        Err(Error::fatal(Kind::Precondition, message))
    }

    /// Returns nothing.
    async fn unit(&self, _ctx: &Context, _arg: ()) -> Result<()> {
        Ok(())
    }

    /// Never returns; records when it starts and when its future is dropped.
    async fn hang(&self, _ctx: &Context, id: u64) -> Result<()> {
        let _flag = DropFlag(id);
        hangs().send_modify(|h| {
            h.started.insert(id);
        });
        futures::future::pending::<()>().await;
        Ok(())
    }

    /// Asks to learn whether its reply reaches the caller, and records it under `id`; hangs
    /// first when `hang` is set (so the caller can go away before any reply).
    async fn deliver(&self, ctx: &Context, (id, hang): (u64, bool)) -> Result<()> {
        let delivered = ctx.reply_delivered();
        tokio::spawn(async move {
            let fate = delivered.await;
            hangs().send_modify(|h| {
                h.delivered.insert(id, fate);
            });
        });
        if hang {
            hangs().send_modify(|h| {
                h.started.insert(id);
            });
            futures::future::pending::<()>().await;
        }
        Ok(())
    }

    /// Panics with `message`.
    async fn panic(&self, _ctx: &Context, message: String) -> Result<()> {
        panic!("{message}")
    }

    /// Sleeps `ms` then returns it.
    async fn sleep(&self, _ctx: &Context, ms: u64) -> Result<u64> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(ms)
    }

    /// Returns the length of `bytes`.
    async fn len(&self, _ctx: &Context, bytes: Vec<u8>) -> Result<u64> {
        Ok(bytes.len() as u64)
    }
}

/// Calls `Echo.echo` on the machine at `addr`, dialed from this machine: a machine-to-machine
/// call.
#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Relay {
    #[rkyv(with = rkyv::with::Skip)]
    b: Option<B>,
}

impl Relay {
    pub fn new() -> Self {
        Self { b: None }
    }
}

#[service]
impl Relay {
    async fn init(&mut self, b: &B) -> Result<()> {
        self.b = Some(b.clone());
        Ok(())
    }

    /// Calls `Echo.echo(text)` on the machine at `addr`, within this call's context.
    async fn relay(&self, ctx: &Context, arg: (String, String)) -> Result<String> {
        let (addr, text) = arg;
        let addr = addr.parse().map_err(Error::other)?;
        let b = self
            .b
            .as_ref()
            .ok_or_else(|| Error::fatal(Kind::Precondition, "not initialized"))?;
        let peer = b.dial(addr);
        peer.call("Echo.echo", &text).context(ctx).await
    }
}

/// Starts `n` machines running Echo (greeting "hello, ") and waits for them to be Running.
pub async fn echo_cluster(system: TestSystem, n: usize) -> Result<(B, Vec<Machine>)> {
    let b = B::new(system)?;
    let machines = b
        .start(
            n,
            Services::new().with(
                "Echo",
                Echo {
                    greeting: "hello, ".into(),
                },
            ),
        )
        .await?;
    for m in &machines {
        let state = tokio::time::timeout(Duration::from_secs(10), m.wait(State::Running))
            .await
            .map_err(|_| Error::new(Kind::DeadlineExceeded, "machine did not boot in 10 s"))?;
        if state != State::Running {
            return Err(m.err().unwrap_or_else(|| Error::other("machine stopped")));
        }
    }
    Ok((b, machines))
}

/// Logs to the test's output when RUST_LOG is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The environment variable that says the examples were built by the `cargo test` running
/// these tests (`cargo test` without a target filter builds them; the test command does so).
pub const EXAMPLES_BUILT: &str = "BIGMACHINE_EXAMPLES_BUILT";

/// This build's profile directory (`target/debug` when the test binary is
/// `target/debug/deps/<test>-<hash>`).
pub fn profile_dir() -> Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    exe.parent()
        .and_then(std::path::Path::parent)
        .map(std::path::Path::to_path_buf)
        .ok_or_else(|| Error::other("no target directory"))
}

/// The example `name` of this build.
pub fn example_path(name: &str) -> Result<std::path::PathBuf> {
    Ok(profile_dir()?.join("examples").join(name))
}

/// Builds the examples `names` with `features` in this build's profile and target directory
/// (so that a test never runs a stale example, as `cargo test --test X` alone would), unless
/// `BIGMACHINE_EXAMPLES_BUILT` says the running `cargo test` built them.
pub fn build_examples(names: &[&str], features: &[&str]) -> Result<()> {
    let profile = profile_dir()?;
    if std::env::var_os(EXAMPLES_BUILT).is_some() {
        return match names
            .iter()
            .find(|n| !profile.join("examples").join(n).exists())
        {
            Some(missing) => Err(Error::other(format!(
                "{EXAMPLES_BUILT} is set, yet the {missing} example is not built"
            ))),
            None => Ok(()),
        };
    }
    let target = profile
        .parent()
        .ok_or_else(|| Error::other("no target directory"))?;
    let mut cargo = std::process::Command::new(env!("CARGO"));
    cargo.args(["build", "--quiet"]);
    if !features.is_empty() {
        cargo.arg("--features").arg(features.join(","));
    }
    for name in names {
        cargo.arg("--example").arg(name);
    }
    cargo
        .arg("--manifest-path")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target);
    // The profile this test was built with: `target/debug` is `dev`, any other directory is
    // the profile of its name.
    match profile.file_name().and_then(|p| p.to_str()) {
        Some("debug") | None => {}
        Some(name) => {
            cargo.arg("--profile").arg(name);
        }
    }
    let status = cargo.status()?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::other(format!(
            "cargo build of the examples: {status}"
        )))
    }
}

/// GETs `path` of the HTTP server at `addr` (HTTP/1.0, so the server closes the connection);
/// returns the status line and the body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(String, String)> {
    let (status, body) = http_get_bytes(addr, path)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// [`http_get`], the body as bytes.
pub fn http_get_bytes(
    addr: std::net::SocketAddr,
    path: &str,
) -> std::io::Result<(String, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = Vec::new();
    conn.read_to_end(&mut response)?;
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(response.len(), |i| i + 4);
    let head = String::from_utf8_lossy(&response[..end]);
    let status = head.lines().next().unwrap_or_default().to_string();
    Ok((status, response[end..].to_vec()))
}
