//! The transport floor: raw quinn, one bidirectional stream per request, on endpoints configured
//! exactly as bigmachine's (same tuning, same mutual TLS). Requests are `[op u8][n u64]` and a
//! payload; the stream's end delimits both directions.

use std::net::{Ipv4Addr, SocketAddr};

use bigmachine::quic::{Authority, Credentials, Endpoint, TransportConfig};
use bytes::Bytes;

use crate::harness::{Payload, Peer};
use crate::server;

const ECHO: u8 = 0;
const PUT: u8 = 1;
const GET: u8 = 2;
const CHUNK: usize = 1 << 20;

fn local() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// Serves until killed.
pub(crate) async fn serve() {
    let ep = Endpoint::bind(local(), &server::credentials(), TransportConfig::default())
        .unwrap_or_else(|e| panic!("bind: {e}"));
    server::announce(ep.local_addr().unwrap_or_else(|e| panic!("{e}")));
    let chunk = Bytes::from(vec![0x5au8; CHUNK]);
    while let Some(conn) = ep.accept().await {
        let chunk = chunk.clone();
        tokio::spawn(async move {
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let chunk = chunk.clone();
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
                            let mut left = n;
                            while left > 0 {
                                let len = left.min(CHUNK as u64) as usize;
                                if send.write_chunk(chunk.slice(..len)).await.is_err() {
                                    return;
                                }
                                left -= len as u64;
                            }
                        }
                    }
                    let _ = send.finish();
                });
            }
        });
    }
}

/// One connection to the server.
pub(crate) struct Client {
    _endpoint: Endpoint,
    conn: quinn::Connection,
    _server: tokio::process::Child,
}

impl Client {
    pub(crate) async fn start(ca: &Authority, creds: &Credentials) -> Self {
        let (addr, child) = server::spawn("quinn", creds).await;
        let me = ca.issue("client").unwrap_or_else(|e| panic!("{e}"));
        let endpoint = Endpoint::bind(local(), &me, TransportConfig::default())
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let conn = endpoint
            .connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        Self {
            _endpoint: endpoint,
            conn,
            _server: child,
        }
    }

    async fn request(&self, op: u8, n: u64, payload: Option<&Bytes>) -> quinn::RecvStream {
        let (mut send, recv) = self
            .conn
            .open_bi()
            .await
            .unwrap_or_else(|e| panic!("open: {e}"));
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
        Some(self.get(n).await)
    }
}
