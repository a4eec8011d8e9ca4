//! Re-executing a machine's process: the binary, arguments and environment of the next exec.

use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bigmachine_core::{running_binary, Error, Kind, Result};
use bigmachine_quic::Credentials;

use crate::env::{CREDENTIALS_ON_STDIN, ENV_ADDR, ENV_CREDENTIALS};
use crate::store::Stored;

#[derive(Debug, Default)]
struct Next {
    env: Vec<(String, String)>,
    args: Option<Vec<String>>,
    binary: Option<Stored>,
}

/// What the next exec runs. Only machines that are processes of their own can exec.
#[derive(Debug)]
pub(crate) struct Exec {
    creds: Credentials,
    addr: SocketAddr,
    next: Mutex<Next>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Exec {
    /// Exec support for a machine with `creds` serving at `addr` (the re-executed process takes
    /// both over).
    pub(crate) fn new(creds: Credentials, addr: SocketAddr) -> Self {
        Self {
            creds,
            addr,
            next: Mutex::new(Next::default()),
        }
    }

    /// Adds `KEY=VALUE` variables to the environment of the next exec.
    pub(crate) fn setenv(&self, vars: &[String]) -> Result<()> {
        let mut parsed = Vec::with_capacity(vars.len());
        for var in vars {
            let (k, v) = var
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| Error::fatal(Kind::Invalid, format!("{var:?} is not KEY=VALUE")))?;
            parsed.push((k.to_string(), v.to_string()));
        }
        lock(&self.next).env.extend(parsed);
        Ok(())
    }

    /// Sets the arguments of the next exec.
    pub(crate) fn setargs(&self, args: Vec<String>) {
        lock(&self.next).args = Some(args);
    }

    /// Makes `binary`, checked and open, the one the next exec runs.
    pub(crate) fn setbinary(&self, binary: Stored) {
        lock(&self.next).binary = Some(binary);
    }

    /// Fixes what the next exec runs: binary, arguments, environment, and a fresh private copy
    /// of the credentials for the new process.
    pub(crate) fn prepare(&self) -> Result<PreparedExec> {
        let next = lock(&self.next);
        // What runs is an open file, through its descriptor: the bytes whose digest was
        // checked, whatever the path names by now. Without a binary set, the running one.
        let (binary, program, file) = match next.binary.clone() {
            Some(_) if !Path::new("/proc/self/fd").exists() => {
                return Err(Error::fatal(
                    Kind::NotSupported,
                    "running a stored binary needs /proc (it is run through its descriptor)",
                ));
            }
            Some(stored) => {
                let program = PathBuf::from(format!("/proc/self/fd/{}", stored.file.as_raw_fd()));
                (stored.path, program, Some(stored.file))
            }
            None => {
                let exe = std::env::current_exe()
                    .map_err(|e| Error::new(Kind::Other, format!("current executable: {e}")))?;
                (exe, running_binary()?, None)
            }
        };
        let args = match &next.args {
            Some(args) => args.iter().map(OsString::from).collect(),
            None => std::env::args_os().skip(1).collect(),
        };
        let mut env = next.env.clone();
        env.push((ENV_ADDR.to_string(), self.addr.to_string()));
        env.push((
            ENV_CREDENTIALS.to_string(),
            CREDENTIALS_ON_STDIN.to_string(),
        ));
        Ok(PreparedExec {
            binary,
            program,
            _file: file,
            args,
            env,
            creds: self.creds.to_pem(),
        })
    }
}

/// What a pipe holds without a reader (POSIX guarantees 4 KiB; Linux holds 64 KiB): the
/// credentials are written whole before the exec, so they must fit.
const PIPE_BUFFER: usize = 4096;

/// An exec ready to run.
#[derive(Debug)]
pub(crate) struct PreparedExec {
    /// The binary's path: the new process's `argv[0]`, and for messages.
    binary: PathBuf,
    /// What is executed: the open binary's descriptor (or the running binary).
    program: PathBuf,
    /// Keeps the descriptor open until the exec.
    _file: Option<Arc<std::fs::File>>,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    /// The credentials (PEM), for the new process's stdin.
    creds: String,
}

impl PreparedExec {
    /// Replaces this process. Returns only if that failed, with why.
    pub(crate) fn run(self) -> Error {
        tracing::info!(binary = %self.binary.display(), "re-executing");
        // The credentials go through a pipe that becomes the new process's stdin: they fit in
        // its buffer (a few KiB), and the write end is dropped before the exec, so the new
        // process reads them to their end. Nothing is written to disk.
        if self.creds.len() > PIPE_BUFFER {
            return Error::new(
                Kind::Other,
                format!(
                    "credentials of {} bytes do not fit a pipe's buffer",
                    self.creds.len()
                ),
            );
        }
        let stdin = match std::io::pipe().and_then(|(reader, mut writer)| {
            writer.write_all(self.creds.as_bytes())?;
            Ok(reader)
        }) {
            Ok(reader) => reader,
            Err(e) => return Error::new(Kind::Other, format!("credentials pipe: {e}")),
        };
        let err = std::process::Command::new(&self.program)
            // Named as this process is (the program's name, not a digest or a descriptor).
            .arg0(
                std::env::args_os()
                    .next()
                    .unwrap_or_else(|| self.binary.clone().into()),
            )
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(stdin)
            .exec();
        Error::new(
            Kind::Other,
            format!("exec {}: {err}", self.binary.display()),
        )
    }
}
