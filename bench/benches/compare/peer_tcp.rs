//! The kernel floor: TCP over loopback with bigmachine's framing sizes (a 56-byte request header
//! and a 16-byte reply header, each followed by its payload). Sequential calls are a plain
//! ping-pong on one connection; calls in flight share a second connection driven by one task
//! that writes queued requests in batches and matches replies to requests by id (what any
//! multiplexing RPC over TCP does).
//!
//! With `tls`, the same over TLS 1.3 (tokio-rustls) with bigmachine's own rustls configurations:
//! the cluster's certificates, mutual authentication, the same cipher suites (the encrypted
//! floor over TCP that QUIC's numbers are compared with).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bigmachine_quic::Credentials;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::harness::{Payload, Peer, CHUNK};
use crate::server;

const ECHO: u8 = 0;
const PUT: u8 = 1;
const GET: u8 = 2;
const REQ: usize = 56;
const REPLY: usize = 16;

fn request_header(id: u64, op: u8, n: u64, len: u64) -> [u8; REQ] {
    let mut h = [0u8; REQ];
    h[..8].copy_from_slice(&id.to_le_bytes());
    h[8] = op;
    h[16..24].copy_from_slice(&n.to_le_bytes());
    h[24..32].copy_from_slice(&len.to_le_bytes());
    h
}

fn reply_header(id: u64, len: u64) -> [u8; REPLY] {
    let mut h = [0u8; REPLY];
    h[..8].copy_from_slice(&id.to_le_bytes());
    h[8..].copy_from_slice(&len.to_le_bytes());
    h
}

fn field(h: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(h[at..at + 8].try_into().unwrap_or_default())
}

/// Reads and discards `n` bytes.
async fn drain(
    r: &mut (impl AsyncRead + Unpin),
    n: u64,
    scratch: &mut [u8],
) -> std::io::Result<()> {
    let mut left = n;
    while left > 0 {
        let len = left.min(scratch.len() as u64) as usize;
        r.read_exact(&mut scratch[..len]).await?;
        left -= len as u64;
    }
    Ok(())
}

/// A connection: plain TCP or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Conn = Box<dyn Io>;

/// Serves one connection, a request after the other. The connection is not split: a TLS
/// stream's halves polled by two tasks can lose a wake-up (a write that reads the socket takes
/// the reader's registration), which hung the TLS row with one worker per process.
async fn serve_conn(conn: Conn) -> std::io::Result<()> {
    let mut conn = BufReader::new(BufWriter::new(conn));
    let chunk = vec![0x5au8; CHUNK];
    let mut scratch = vec![0u8; CHUNK];
    let mut msg = Vec::new();
    loop {
        let mut h = [0u8; REQ];
        conn.read_exact(&mut h).await?;
        let (id, op, n, len) = (field(&h, 0), h[8], field(&h, 16), field(&h, 24));
        match op {
            ECHO => {
                msg.resize(len as usize, 0);
                conn.read_exact(&mut msg).await?;
                conn.write_all(&reply_header(id, len)).await?;
                conn.write_all(&msg).await?;
            }
            PUT => {
                drain(&mut conn, len, &mut scratch).await?;
                conn.write_all(&reply_header(id, 8)).await?;
                conn.write_all(&len.to_le_bytes()).await?;
            }
            _ => {
                conn.write_all(&reply_header(id, n)).await?;
                let mut left = n;
                while left > 0 {
                    let len = left.min(CHUNK as u64) as usize;
                    conn.write_all(&chunk[..len]).await?;
                    left -= len as u64;
                }
            }
        }
        if conn.buffer().is_empty() {
            conn.flush().await?;
        }
    }
}

/// Serves until killed (`tls`: with the credentials handed on stdin).
pub(crate) async fn serve(tls: bool) {
    let acceptor = tls.then(|| {
        let config = bigmachine_quic::server_config(&server::credentials())
            .unwrap_or_else(|e| panic!("tls: {e}"));
        TlsAcceptor::from(Arc::new(config))
    });
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    server::announce(listener.local_addr().unwrap_or_else(|e| panic!("{e}")));
    while let Ok((conn, _)) = listener.accept().await {
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            conn.set_nodelay(true)?;
            let conn: Conn = match acceptor {
                Some(a) => Box::new(a.accept(conn).await?),
                None => Box::new(conn),
            };
            serve_conn(conn).await
        });
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Vec<u8>>>>>;

/// A ping-pong connection and a multiplexed one.
pub(crate) struct Client {
    pingpong: tokio::sync::Mutex<(Conn, Vec<u8>)>,
    frames: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending,
    next: AtomicU64,
    _server: tokio::process::Child,
}

async fn connect(addr: SocketAddr, tls: Option<&TlsConnector>) -> Conn {
    let conn = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    conn.set_nodelay(true)
        .unwrap_or_else(|e| panic!("nodelay: {e}"));
    match tls {
        None => Box::new(conn),
        Some(c) => {
            let name = rustls::pki_types::ServerName::try_from("server")
                .unwrap_or_else(|e| panic!("server name: {e}"));
            Box::new(
                c.connect(name, conn)
                    .await
                    .unwrap_or_else(|e| panic!("tls handshake: {e}")),
            )
        }
    }
}

/// Drives the multiplexed connection from one task: writes the frames callers queue (as many
/// as are queued, then one flush) and hands each reply to the caller waiting for its id. It
/// does not read while it writes: fine for the small echoes this connection carries (the
/// socket buffers hold far more than 256 of them), not for large frames both ways.
async fn multiplex(
    conn: Conn,
    mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
    pending: Pending,
) -> std::io::Result<()> {
    let mut conn = BufWriter::new(conn);
    let mut inbox = bytes::BytesMut::with_capacity(64 << 10);
    loop {
        tokio::select! {
            f = frames.recv() => {
                let Some(f) = f else { return Ok(()) };
                conn.write_all(&f).await?;
                while let Ok(f) = frames.try_recv() {
                    conn.write_all(&f).await?;
                }
                conn.flush().await?;
            }
            n = { inbox.reserve(64 << 10); conn.read_buf(&mut inbox) } => {
                if n? == 0 {
                    return Ok(());
                }
                while inbox.len() >= REPLY {
                    let len = field(&inbox, 8) as usize;
                    if inbox.len() < REPLY + len {
                        break;
                    }
                    let frame = inbox.split_to(REPLY + len);
                    let waiter = pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&field(&frame, 0));
                    if let Some(w) = waiter {
                        let _ = w.send(frame[REPLY..].to_vec());
                    }
                }
            }
        }
    }
}

impl Client {
    /// A client of a server of this binary; `tls`: over TLS with `creds` (the server is
    /// issued the name `server`).
    pub(crate) async fn start(creds: &Credentials, tls: bool) -> Self {
        let (addr, child) = server::spawn(if tls { "tls" } else { "tcp" }, creds).await;
        let connector = tls.then(|| {
            let config =
                bigmachine_quic::client_config(creds).unwrap_or_else(|e| panic!("tls: {e}"));
            TlsConnector::from(Arc::new(config))
        });
        let pingpong = connect(addr, connector.as_ref()).await;
        let multiplexed = connect(addr, connector.as_ref()).await;
        let (frames, rx) = mpsc::unbounded_channel();
        let pending = Pending::default();
        tokio::spawn(multiplex(multiplexed, rx, pending.clone()));
        Self {
            pingpong: tokio::sync::Mutex::new((pingpong, vec![0u8; CHUNK])),
            frames,
            pending,
            next: AtomicU64::new(0),
            _server: child,
        }
    }

    /// One request on the ping-pong connection; reads the reply's payload into `out` (or discards it).
    async fn round_trip(
        &self,
        op: u8,
        n: u64,
        payload: &[u8],
        mut out: Option<&mut Vec<u8>>,
    ) -> u64 {
        let mut guard = self.pingpong.lock().await;
        let (conn, scratch) = &mut *guard;
        let io = async {
            let h = request_header(0, op, n, payload.len() as u64);
            if payload.len() <= 4096 {
                let mut frame = Vec::with_capacity(REQ + payload.len());
                frame.extend_from_slice(&h);
                frame.extend_from_slice(payload);
                conn.write_all(&frame).await?;
            } else {
                conn.write_all(&h).await?;
                conn.write_all(payload).await?;
            }
            // A TLS stream may count bytes as written that still sit in rustls's buffer (when
            // the socket would block): without the flush, a large request's tail can wait there
            // while both sides wait for each other (it hung the TLS row about once in ten runs).
            conn.flush().await?;
            let mut rh = [0u8; REPLY];
            conn.read_exact(&mut rh).await?;
            let len = field(&rh, 8);
            match out.as_deref_mut() {
                Some(out) => {
                    out.resize(len as usize, 0);
                    conn.read_exact(out).await?;
                }
                None => drain(conn, len, scratch).await?,
            }
            std::io::Result::Ok(len)
        };
        io.await.unwrap_or_else(|e| panic!("tcp: {e}"))
    }
}

impl Peer for Client {
    async fn echo(&self, msg: &Payload) -> usize {
        let mut out = Vec::new();
        self.round_trip(ECHO, 0, &msg.vec, Some(&mut out)).await as usize
    }

    async fn echo_concurrent(&self, msg: &Payload) -> usize {
        let id = self.next.fetch_add(1, Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let mut frame = Vec::with_capacity(REQ + msg.vec.len());
        frame.extend_from_slice(&request_header(id, ECHO, 0, msg.vec.len() as u64));
        frame.extend_from_slice(&msg.vec);
        self.frames
            .send(frame)
            .unwrap_or_else(|_| panic!("tcp writer gone"));
        rx.await.unwrap_or_else(|_| panic!("tcp reader gone")).len()
    }

    async fn put(&self, data: &Payload) -> u64 {
        let mut out = Vec::new();
        self.round_trip(PUT, 0, &data.vec, Some(&mut out)).await;
        field(&out, 0)
    }

    async fn get(&self, n: u64) -> u64 {
        let mut out = Vec::new();
        self.round_trip(GET, n, &[], Some(&mut out)).await
    }

    async fn stream(&self, n: u64) -> Option<u64> {
        Some(self.round_trip(GET, n, &[], None).await)
    }

    fn server_pid(&self) -> u32 {
        self._server
            .id()
            .unwrap_or_else(|| panic!("the server exited"))
    }
}
