//! What the local tests share: the Probe service their machines run, process helpers, and the
//! roles of sub-drivers.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bigmachine::{
    service, Archived, ByteStream, Context, Error, KeepaliveConfig, Kind, Machine, Params, Result,
    Services, State, B,
};

/// The environment variable that makes this binary a sub-driver playing a role.
pub(crate) const ROLE: &str = "BIGMACHINE_TEST_ROLE";

/// A test: an async function run on a runtime of its own.
pub(crate) type Test = fn() -> Pin<Box<dyn Future<Output = Result<()>>>>;

/// `(name, test)` pairs for the harness.
macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        vec![$((
            stringify!($name),
            (|| Box::pin($name()) as std::pin::Pin<Box<dyn std::future::Future<Output = bigmachine::Result<()>>>>)
                as crate::support::Test,
        )),*]
    };
}
pub(crate) use tests;

/// How many `hang` calls have started on this machine.
static HANGING: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct Probe;

#[service(vis = pub(crate))]
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

    /// Never returns.
    async fn hang(&self, _ctx: &Context, _arg: ()) -> Result<()> {
        HANGING.fetch_add(1, Ordering::SeqCst);
        futures::future::pending::<()>().await;
        Ok(())
    }

    /// How many `hang` calls have started.
    async fn hanging(&self, _ctx: &Context, _arg: ()) -> Result<u64> {
        Ok(HANGING.load(Ordering::SeqCst))
    }

    async fn echo(&self, _ctx: &Context, text: String) -> Result<String> {
        Ok(text)
    }

    /// Holds its argument (without a copy) for 100 ms; returns its length.
    async fn hold(&self, _ctx: &Context, bytes: Archived<Vec<u8>>) -> Result<u64> {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(bytes.get().len() as u64)
    }

    /// An endless reply stream of 64 KiB chunks.
    async fn flow(&self, _ctx: &Context, _arg: ()) -> Result<ByteStream> {
        let (sink, stream) = ByteStream::channel(4);
        tokio::spawn(async move {
            let chunk = bytes::Bytes::from(vec![7u8; 64 << 10]);
            while sink.send(chunk.clone()).await.is_ok() {}
        });
        Ok(stream)
    }

    /// Prints `words` on stderr, then panics with `message` in a thread of its own and
    /// aborts the process.
    async fn die(&self, _ctx: &Context, (words, message): (String, String)) -> Result<()> {
        {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "{words}");
        }
        let doomed = std::thread::Builder::new()
            .name("doomed".into())
            .spawn(move || std::panic::panic_any(message))
            .map_err(Error::other)?;
        let _ = doomed.join();
        std::process::abort()
    }

    /// Samples points for the estimate of pi for `ms` milliseconds, on a thread of the
    /// blocking pool; returns how many fell inside the circle.
    async fn pi(&self, _ctx: &Context, ms: u64) -> Result<u64> {
        tokio::task::spawn_blocking(move || {
            let until = std::time::Instant::now() + Duration::from_millis(ms);
            let mut inside = 0;
            let mut seed = 0x9e37_79b9_7f4a_7c15;
            while std::time::Instant::now() < until {
                inside += sample_pi_for_profile(&mut seed, 100_000);
            }
            inside
        })
        .await
        .map_err(Error::other)
    }

    /// Panics with `message` in a thread named `stumbling`, which ends; the process lives on.
    async fn stumble(&self, _ctx: &Context, message: String) -> Result<()> {
        let thread = std::thread::Builder::new()
            .name("stumbling".into())
            .spawn(move || std::panic::panic_any(message))
            .map_err(Error::other)?;
        let _ = thread.join();
        Ok(())
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

/// Draws `n` points of the unit square (xorshift from `seed`); how many fall inside the
/// quarter circle. Never inlined: profiles find it by name.
#[inline(never)]
pub(crate) fn sample_pi_for_profile(seed: &mut u64, n: u64) -> u64 {
    let mut next = || {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        (*seed >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut inside = 0;
    for _ in 0..n {
        let (x, y) = (next(), next());
        inside += u64::from(x * x + y * y <= 1.0);
    }
    std::hint::black_box(inside)
}

pub(crate) fn short_keepalive() -> KeepaliveConfig {
    let mut k = KeepaliveConfig::default();
    k.period = Duration::from_millis(200);
    k.timeout = Duration::from_secs(2);
    k.rpc_timeout = Duration::from_secs(1);
    k
}

pub(crate) fn fail(message: impl Into<String>) -> Error {
    Error::new(Kind::Other, message)
}

pub(crate) fn check(cond: bool, message: impl Into<String>) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(fail(message))
    }
}

/// Starts `n` machines and waits (at most 60 s) for them to be Running.
pub(crate) async fn running(b: &B, n: usize, params: impl Into<Params>) -> Result<Vec<Machine>> {
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
pub(crate) fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

pub(crate) fn sigkill(pid: u32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
}

/// This binary again, as a sub-driver playing `role` with `args`.
pub(crate) fn sub_driver(role: &str, args: &[&str]) -> Result<Command> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(args)
        .env(ROLE, role)
        .env_remove("BIGMACHINE_MODE")
        .stdin(Stdio::null());
    Ok(cmd)
}

pub(crate) fn example(name: &str) -> Result<PathBuf> {
    let path = crate::common::example_path(name)?;
    check(path.exists(), format!("{} is not built", path.display()))?;
    Ok(path)
}

/// Runs an example to completion; returns its stdout and stderr, or why it failed.
pub(crate) async fn run_example(name: &str, args: &[&str]) -> Result<(String, String)> {
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

/// Lines a machine prints in the `print` roles.
pub(crate) const PRINTED: u64 = 200_000;

/// Plays a sub-driver's role with the driver `b`.
pub(crate) async fn role(name: &str, b: B) -> Result<()> {
    match name {
        "hold" => {
            let machines = running(&b, 2, Services::new().with("Probe", Probe)).await?;
            for m in &machines {
                println!("pid {}", m.info().await?.pid);
            }
            use std::io::Write;
            std::io::stdout().flush()?;
            // Until the test kills this driver (bounded, in case it never does).
            tokio::time::sleep(Duration::from_secs(120)).await;
            Ok(())
        }
        "print" | "print-machine-shutdown" => {
            let machines = running(&b, 1, Services::new().with("Probe", Probe)).await?;
            let (): () = machines[0].call("Probe.print", &PRINTED).await?;
            println!("{}", machines[0].addr());
            if name == "print" {
                b.shutdown().await;
            } else {
                machines[0].shutdown().await;
                // No driver shutdown (nor anything else) waits for the machine's output: only
                // the machine's own shutdown did.
                std::process::exit(0);
            }
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
