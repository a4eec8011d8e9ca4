//! The main loop of a machine that is a process of its own (a local process, a cloud instance).
//!
//! A system starts a machine as the driver's own binary with the driver's arguments and
//! `BIGMACHINE_MODE=machine` (see [`crate::env`]); `driver::start()` sees that and calls
//! [`run`], which never returns. The machine reads its credentials from its stdin (a pipe its
//! parent wrote them to) or, on a cloud instance, from the 0600 file named by
//! `BIGMACHINE_CREDENTIALS`, which it deletes; it binds its endpoint, prints
//! `bigmachine-addr:` and its address as a line on stdout (the driver's handshake), and serves
//! until it exits.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bigmachine_core::{Credentials, Error, Kind, ReplyFaults, Result, System};

use crate::env::{
    ADDR_MARKER, CREDENTIALS_ON_STDIN, ENV_ADDR, ENV_CONGESTION, ENV_CREDENTIALS, ENV_DRIVER_PID,
    ENV_EXACTLY_ONCE_AGE_MS, ENV_EXACTLY_ONCE_BYTES, ENV_EXACTLY_ONCE_CALLS, ENV_INFLIGHT_BYTES,
    ENV_KEEPALIVE_MS, ENV_MAXPROCS, ENV_METRICS, ENV_REPLY_FAULTS,
};
use crate::machine::{start, MachineOptions};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| Error::fatal(Kind::Invalid, format!("{name}={v:?} does not parse"))),
        Err(_) => Ok(default),
    }
}

/// The reply faults named by `BIGMACHINE_REPLY_FAULTS` (`DROP,TRUNCATE,SEED`), if set.
fn reply_faults() -> Result<Option<Arc<ReplyFaults>>> {
    let Ok(v) = std::env::var(ENV_REPLY_FAULTS) else {
        return Ok(None);
    };
    let bad = || {
        Error::fatal(
            Kind::Invalid,
            format!("{ENV_REPLY_FAULTS}={v:?} is not DROP,TRUNCATE,SEED"),
        )
    };
    let parts: Vec<&str> = v.split(',').map(str::trim).collect();
    let [drop, truncate, seed] = parts[..] else {
        return Err(bad());
    };
    let p = |s: &str| s.parse::<f64>().ok().filter(|p| (0.0..=1.0).contains(p));
    match (p(drop), p(truncate), seed.parse::<u64>().ok()) {
        (Some(drop), Some(truncate), Some(seed)) => {
            Ok(Some(Arc::new(ReplyFaults::new(drop, truncate, seed))))
        }
        _ => Err(bad()),
    }
}

/// The longest credentials read from stdin (a PEM certificate, CA certificate and key take
/// about 2 KiB).
const MAX_CREDENTIALS: u64 = 64 << 10;

fn read_credentials() -> Result<Credentials> {
    let from = std::env::var(ENV_CREDENTIALS)
        .map_err(|_| Error::fatal(Kind::Precondition, format!("{ENV_CREDENTIALS} is not set")))?;
    let bad = |e: std::io::Error| {
        Error::fatal(Kind::Precondition, format!("credentials from {from}: {e}"))
    };
    let pem = if from == CREDENTIALS_ON_STDIN {
        // Written by the parent into a pipe and closed: read to its end.
        let mut pem = Vec::new();
        std::io::stdin()
            .lock()
            .take(MAX_CREDENTIALS)
            .read_to_end(&mut pem)
            .map_err(bad)?;
        pem
    } else {
        let pem = std::fs::read(&from).map_err(bad)?;
        if let Err(e) = std::fs::remove_file(&from) {
            tracing::warn!(path = from, error = %e, "could not delete the credentials file");
        }
        pem
    };
    Ok(Credentials::from_pem(&pem)?)
}

/// Names this process after its `argv[0]`, as `ps` and `pkill` show it: the kernel names a
/// process after the file it executed, which for a machine started through `/proc/self/exe`
/// or a stored binary's descriptor is `exe` or a number.
fn name_process() {
    use std::os::unix::ffi::OsStrExt;
    let Some(arg0) = std::env::args_os().next() else {
        return;
    };
    let Some(base) = std::path::Path::new(&arg0).file_name() else {
        return;
    };
    // The kernel keeps 15 bytes and a NUL.
    let bytes: Vec<u8> = base.as_bytes().iter().copied().take(15).collect();
    let Ok(name) = std::ffi::CString::new(bytes) else {
        return;
    };
    // SAFETY: PR_SET_NAME reads a NUL-terminated string (at most 16 bytes) from the pointer,
    // which `name` keeps valid through the call; it changes nothing else.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

/// Runs this process as a machine of `system` until it exits, then exits the process: status 0
/// when shut down by the driver, 1 otherwise (keepalives stopped, bad setup).
///
/// Nothing on this path prints with `println!`/`eprintln!`, which panic once the driver reading
/// the machine's output is gone; log through a writer that ignores write errors (as
/// `driver::start()` sets up).
pub async fn run(system: Arc<dyn System>) -> ! {
    let code = match serve(system).await {
        Ok(reason) if reason.kind() == Kind::Canceled => 0,
        Ok(_) => 1, // the reason was logged when the machine exited

        Err(e) => {
            tracing::error!(error = %e, "machine failed to start");
            1
        }
    };
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(code)
}

async fn serve(system: Arc<dyn System>) -> Result<Error> {
    name_process();
    // Panics are recorded for the driver (over the Supervisor) and on stderr (the local
    // system reads them there; an EC2 instance's console keeps them).
    crate::panic::install_hook();
    let creds = read_credentials()?;
    let bind = env_or(ENV_ADDR, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    let maxprocs = env_or(
        ENV_MAXPROCS,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    )?;
    let keepalive = Duration::from_millis(env_or(ENV_KEEPALIVE_MS, 60_000u64)?);
    let mut options = MachineOptions::new(creds, system);
    let once = &mut options.server.exactly_once;
    once.max_calls = env_or(ENV_EXACTLY_ONCE_CALLS, once.max_calls)?;
    once.max_age = Duration::from_millis(env_or(
        ENV_EXACTLY_ONCE_AGE_MS,
        once.max_age.as_millis() as u64,
    )?);
    once.max_bytes = env_or(ENV_EXACTLY_ONCE_BYTES, once.max_bytes)?;
    options.transport.congestion = env_or(ENV_CONGESTION, options.transport.congestion)?;
    options.server.inflight_bytes = env_or(ENV_INFLIGHT_BYTES, options.server.inflight_bytes)?;
    options.server.faults = reply_faults()?;
    if std::env::var(ENV_METRICS).is_ok_and(|v| v == "off") {
        options.server.metrics = bigmachine_core::Metrics::disabled();
    }
    options.bind = bind;
    options.maxprocs = maxprocs;
    options.first_keepalive = keepalive;
    options.exec = true;
    let handle = start(options)?;
    // Not println!: it panics once nobody reads our output.
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{ADDR_MARKER}{}", handle.addr());
    let _ = stdout.flush();
    drop(stdout);
    let driver_pid: Option<u32> = std::env::var(ENV_DRIVER_PID)
        .ok()
        .and_then(|p| p.parse().ok());
    let driver = async move {
        match driver_pid {
            Some(pid) => crate::parent::driver_exited(pid).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        reason = handle.exited() => Ok(reason),
        () = driver => {
            let reason = Error::new(Kind::Unavailable, "the driver's process exited");
            tracing::warn!(error = %reason, "machine exiting");
            Ok(reason)
        }
    }
}
