//! The EC2 emulator: moto's server, installed into a virtualenv under the target directory when
//! missing, started on a free loopback port for this test binary, reset between tests.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bigmachine::{Error, Result};

use crate::http;

fn fail(message: impl Into<String>) -> Error {
    Error::other(message.into())
}

/// A running moto server, killed when dropped.
#[derive(Debug)]
pub(crate) struct Moto {
    child: Child,
    pub(crate) addr: SocketAddr,
    recording: PathBuf,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.recording);
    }
}

/// The target directory this test binary was built in (`target/<profile>/deps/ec2-*` → `target`).
fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .ok_or_else(|| fail("no target directory"))
}

/// `moto_server` in the virtualenv, installing moto there first when it is missing.
fn moto_server() -> Result<PathBuf> {
    let venv = target_dir()?.join("moto-venv");
    let server = venv.join("bin").join("moto_server");
    if server.exists() {
        return Ok(server);
    }
    eprintln!(
        "installing the EC2 emulator (moto[server]) into {}",
        venv.display()
    );
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()?;
    if !status.success() {
        return Err(fail(format!("python3 -m venv failed: {status}")));
    }
    let status = Command::new(venv.join("bin").join("pip"))
        .args(["install", "--quiet", "moto[server]>=5.1,<6"])
        .status()?;
    if !status.success() || !server.exists() {
        return Err(fail(format!("pip install moto[server] failed: {status}")));
    }
    Ok(server)
}

impl Moto {
    /// Starts moto on a free loopback port and waits until it answers.
    pub(crate) fn start() -> Result<Self> {
        let server = moto_server()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let recording = std::env::temp_dir().join(format!("bigmachine-moto-{port}.rec"));
        let child = Command::new(server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_RECORDER_FILEPATH", &recording)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let moto = Self {
            child,
            addr,
            recording,
        };
        let until = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > until {
                return Err(fail("moto did not start within 60 s"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(moto)
    }

    /// The emulator's EC2 endpoint.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn admin(&self, method: &str, path: &str) -> Result<Vec<u8>> {
        let (status, body) = http::request(self.addr, method, path).await?;
        if status != 200 {
            return Err(fail(format!("moto {path}: HTTP {status}")));
        }
        Ok(body)
    }

    /// Forgets every resource, for the next test.
    pub(crate) async fn reset(&self) -> Result<()> {
        self.admin("POST", "/moto-api/reset").await.map(drop)
    }

    /// Starts recording the requests moto receives (erasing any earlier recording).
    pub(crate) async fn record(&self) -> Result<()> {
        self.admin("POST", "/moto-api/recorder/reset-recording")
            .await?;
        self.admin("POST", "/moto-api/recorder/start-recording")
            .await
            .map(drop)
    }

    /// Stops recording; returns the recorded requests, one JSON document each.
    pub(crate) async fn recorded(&self) -> Result<Vec<String>> {
        self.admin("POST", "/moto-api/recorder/stop-recording")
            .await?;
        let body = self
            .admin("GET", "/moto-api/recorder/download-recording")
            .await?;
        Ok(String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect())
    }
}
