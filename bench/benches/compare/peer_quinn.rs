//! Raw quinn, one bidirectional stream per request, in two set-ups: on endpoints configured
//! exactly as bigmachine's (same tuning, same mutual TLS: the transport floor), and *naive*:
//! quinn's default transport configuration and socket, with the same TLS (what a first quinn
//! program gets). Requests are `[op u8][n u64]` and a payload; the stream's end delimits both
//! directions.

use std::net::{Ipv4Addr, SocketAddr};

use std::sync::Arc;

use bigmachine_quic::{
    client_config, server_config, Authority, Credentials, Endpoint, TransportConfig, SERVER_NAME,
};
use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use crate::harness::{chunks, Payload, Peer};
use crate::server;

const ECHO: u8 = 0;
const PUT: u8 = 1;
const GET: u8 = 2;

fn local() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// An endpoint tuned as bigmachine's, or quinn's defaults.
enum Ep {
    Tuned(Endpoint),
    Naive(quinn::Endpoint),
}

impl Ep {
    fn bind(naive: bool, creds: &Credentials) -> Self {
        if !naive {
            return Self::Tuned(
                Endpoint::bind(local(), creds, TransportConfig::default())
                    .unwrap_or_else(|e| panic!("bind: {e}")),
            );
        }
        let server = server_config(creds).unwrap_or_else(|e| panic!("tls: {e}"));
        let server = QuicServerConfig::try_from(server).unwrap_or_else(|e| panic!("tls: {e}"));
        let client = client_config(creds).unwrap_or_else(|e| panic!("tls: {e}"));
        let client = QuicClientConfig::try_from(client).unwrap_or_else(|e| panic!("tls: {e}"));
        let mut ep =
            quinn::Endpoint::server(quinn::ServerConfig::with_crypto(Arc::new(server)), local())
                .unwrap_or_else(|e| panic!("bind: {e}"));
        ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(client)));
        Self::Naive(ep)
    }

    fn local_addr(&self) -> SocketAddr {
        match self {
            Self::Tuned(ep) => ep.local_addr().unwrap_or_else(|e| panic!("{e}")),
            Self::Naive(ep) => ep.local_addr().unwrap_or_else(|e| panic!("{e}")),
        }
    }

    async fn accept(&self) -> Option<quinn::Connection> {
        match self {
            Self::Tuned(ep) => ep.accept().await,
            Self::Naive(ep) => ep.accept().await?.await.ok(),
        }
    }

    async fn connect(&self, addr: SocketAddr) -> quinn::Connection {
        match self {
            Self::Tuned(ep) => ep
                .connect(addr, SERVER_NAME)
                .await
                .unwrap_or_else(|e| panic!("{e}")),
            Self::Naive(ep) => ep
                .connect(addr, SERVER_NAME)
                .unwrap_or_else(|e| panic!("connect: {e}"))
                .await
                .unwrap_or_else(|e| panic!("handshake: {e}")),
        }
    }
}

/// Serves until killed (`naive`: quinn's defaults).
pub(crate) async fn serve(naive: bool) {
    let ep = Ep::bind(naive, &server::credentials());
    server::announce(ep.local_addr());
    while let Some(conn) = ep.accept().await {
        tokio::spawn(async move {
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                tokio::spawn(async move {
                    let mut hdr = [0u8; 9];
                    if recv.read_exact(&mut hdr).await.is_err() {
                        return;
                    }
                    let n = u64::from_le_bytes(hdr[1..].try_into().unwrap_or_default());
                    match hdr[0] {
                        ECHO => {
                            if let Ok(msg) = recv.read_to_end(1 << 20).await {
                                let _ = send.write_all(&msg).await;
                            }
                        }
                        PUT => {
                            let mut got = 0u64;
                            while let Ok(Some(c)) = recv.read_chunk(usize::MAX, true).await {
                                got += c.bytes.len() as u64;
                            }
                            let _ = send.write_all(&got.to_le_bytes()).await;
                        }
                        _ => {
                            for chunk in chunks(n) {
                                if send.write_chunk(chunk).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = send.finish();
                });
            }
        });
    }
}

/// Connections to the server: requests go on the first; a stream is striped over all of them
/// (`stripes` > 1: what striping a large stream over a pool's connections could buy at most).
pub(crate) struct Client {
    _endpoint: Ep,
    conns: Vec<quinn::Connection>,
    _server: tokio::process::Child,
}

impl Client {
    pub(crate) async fn start(
        ca: &Authority,
        creds: &Credentials,
        naive: bool,
        stripes: usize,
    ) -> Self {
        let peer = if naive { "quinn-naive" } else { "quinn" };
        let (addr, child) = server::spawn(peer, creds).await;
        let me = ca.issue("client").unwrap_or_else(|e| panic!("{e}"));
        let endpoint = Ep::bind(naive, &me);
        let mut conns = Vec::new();
        for _ in 0..stripes.max(1) {
            conns.push(endpoint.connect(addr).await);
        }
        Self {
            _endpoint: endpoint,
            conns,
            _server: child,
        }
    }

    async fn request(&self, op: u8, n: u64, payload: Option<&Bytes>) -> quinn::RecvStream {
        self.request_on(&self.conns[0], op, n, payload).await
    }

    async fn request_on(
        &self,
        conn: &quinn::Connection,
        op: u8,
        n: u64,
        payload: Option<&Bytes>,
    ) -> quinn::RecvStream {
        let (mut send, recv) = conn.open_bi().await.unwrap_or_else(|e| panic!("open: {e}"));
        let mut hdr = [0u8; 9];
        hdr[0] = op;
        hdr[1..].copy_from_slice(&n.to_le_bytes());
        send.write_all(&hdr)
            .await
            .unwrap_or_else(|e| panic!("write: {e}"));
        if let Some(p) = payload {
            send.write_chunk(p.clone())
                .await
                .unwrap_or_else(|e| panic!("write: {e}"));
        }
        send.finish().unwrap_or_else(|e| panic!("finish: {e}"));
        recv
    }

    async fn count(mut recv: quinn::RecvStream) -> u64 {
        let mut got = 0u64;
        while let Some(c) = recv
            .read_chunk(usize::MAX, true)
            .await
            .unwrap_or_else(|e| panic!("read: {e}"))
        {
            got += c.bytes.len() as u64;
        }
        got
    }
}

impl Peer for Client {
    async fn echo(&self, msg: &Payload) -> usize {
        let mut recv = self.request(ECHO, 0, Some(&msg.bytes)).await;
        recv.read_to_end(1 << 20)
            .await
            .unwrap_or_else(|e| panic!("read: {e}"))
            .len()
    }

    async fn put(&self, data: &Payload) -> u64 {
        let mut recv = self.request(PUT, 0, Some(&data.bytes)).await;
        let got = recv
            .read_to_end(8)
            .await
            .unwrap_or_else(|e| panic!("read: {e}"));
        u64::from_le_bytes(got.try_into().unwrap_or_else(|_| panic!("bad reply")))
    }

    async fn get(&self, n: u64) -> u64 {
        Self::count(self.request(GET, n, None).await).await
    }

    async fn stream(&self, n: u64) -> Option<u64> {
        let k = self.conns.len() as u64;
        let parts = self.conns.iter().enumerate().map(|(i, conn)| async move {
            // The last stripe takes the remainder.
            let len = n / k + if i as u64 == k - 1 { n % k } else { 0 };
            Self::count(self.request_on(conn, GET, len, None).await).await
        });
        Some(futures::future::join_all(parts).await.into_iter().sum())
    }

    fn server_pid(&self) -> u32 {
        self._server
            .id()
            .unwrap_or_else(|| panic!("the server exited"))
    }
}
