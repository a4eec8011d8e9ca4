//! Starting a peer's server: this binary re-executes itself with `COMPARE_SERVER=<peer>`, the
//! child prints its address on the first line of stdout and serves until it is killed.

use std::net::SocketAddr;

use bigmachine_quic::Credentials;

use crate::support;

const SERVER: &str = "COMPARE_SERVER";

/// The peer this process must serve, when it is a server.
pub(crate) fn role() -> Option<String> {
    std::env::var(SERVER).ok()
}

/// The credentials the driver handed to this server process.
pub(crate) fn credentials() -> Credentials {
    support::credentials_from_stdin()
}

/// Announces the server's address to the parent.
pub(crate) fn announce(addr: SocketAddr) {
    println!("{addr}");
}

/// Starts this binary as the server of `peer`; returns its address and the child (killed on drop).
pub(crate) async fn spawn(peer: &str, creds: &Credentials) -> (SocketAddr, tokio::process::Child) {
    support::spawn_self(&[(SERVER, peer.to_string())], Some(creds)).await
}
