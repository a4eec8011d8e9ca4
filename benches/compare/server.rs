//! Starting a peer's server: this binary re-executes itself with `COMPARE_SERVER=<peer>`, the
//! child prints its address on the first line of stdout and serves until it is killed.

use std::net::SocketAddr;

use bigmachine::quic::Credentials;
use tokio::io::AsyncBufReadExt;

const SERVER: &str = "COMPARE_SERVER";
const CREDS: &str = "COMPARE_CREDS";

/// The peer this process must serve, when it is a server.
pub(crate) fn role() -> Option<String> {
    std::env::var(SERVER).ok()
}

/// The credentials the driver handed to this server process.
pub(crate) fn credentials() -> Credentials {
    let pem = std::env::var(CREDS).unwrap_or_else(|e| panic!("{CREDS}: {e}"));
    Credentials::from_pem(pem.as_bytes()).unwrap_or_else(|e| panic!("{CREDS}: {e}"))
}

/// Announces the server's address to the parent.
pub(crate) fn announce(addr: SocketAddr) {
    println!("{addr}");
}

/// Starts this binary as the server of `peer`; returns its address and the child (killed on drop).
pub(crate) async fn spawn(peer: &str, creds: &Credentials) -> (SocketAddr, tokio::process::Child) {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current exe: {e}"));
    let mut child = tokio::process::Command::new(exe)
        .env(SERVER, peer)
        .env(CREDS, creds.to_pem())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {peer} server: {e}"));
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let mut line = String::new();
    tokio::io::BufReader::new(stdout)
        .read_line(&mut line)
        .await
        .unwrap_or_else(|e| panic!("{peer} server: {e}"));
    let addr = line
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{peer} server address {line:?}: {e}"));
    (addr, child)
}
