//! Several connections to one remote address, opened on first use and re-opened after loss.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::endpoint::Endpoint;
use crate::error::{Error, Result};

#[derive(Debug, Default)]
struct Slot {
    conn: Mutex<Option<quinn::Connection>>,
    connecting: tokio::sync::Mutex<()>,
}

impl Slot {
    fn live(&self) -> Option<quinn::Connection> {
        let guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        guard
            .as_ref()
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }
}

/// A connection pool for one remote address. Each [`Pool::get`] takes the next slot in turn, so
/// concurrent calls spread over the pool's connections; a slot whose connection was lost is
/// reconnected by the next call that lands on it.
#[derive(Debug)]
pub struct Pool {
    endpoint: Endpoint,
    addr: SocketAddr,
    server_name: String,
    slots: Box<[Slot]>,
    next: AtomicUsize,
    /// Set by [`Pool::shut`]: no connection is opened or kept any more.
    shut: AtomicBool,
}

impl Pool {
    /// A pool of [`crate::TransportConfig::pool_size`] lazily opened connections from `endpoint`
    /// to the endpoint at `addr` whose certificate is valid for `server_name` (see
    /// [`Endpoint::connect`]).
    pub fn new(endpoint: Endpoint, addr: SocketAddr, server_name: impl Into<String>) -> Self {
        let size = endpoint.config().pool_size.max(1);
        Self {
            endpoint,
            addr,
            server_name: server_name.into(),
            slots: (0..size).map(|_| Slot::default()).collect(),
            next: AtomicUsize::new(0),
            shut: AtomicBool::new(false),
        }
    }

    /// The remote address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A live connection to the remote address, opening one if this slot has none.
    /// Fails with [`Error::Shut`] once the pool was shut.
    pub async fn get(&self) -> Result<quinn::Connection> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        if let Some(conn) = slot.live() {
            return Ok(conn);
        }
        let _connecting = slot.connecting.lock().await;
        if let Some(conn) = slot.live() {
            return Ok(conn);
        }
        if self.shut.load(Ordering::SeqCst) {
            return Err(Error::Shut(self.addr));
        }
        let conn = self.endpoint.connect(self.addr, &self.server_name).await?;
        *slot.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
        // Shut while connecting: this connection must not outlive the pool's end. (Either the
        // shut sees it in its slot, or this sees the shut.)
        if self.shut.load(Ordering::SeqCst) {
            self.close("pool shut");
            return Err(Error::Shut(self.addr));
        }
        Ok(conn)
    }

    /// Closes every connection for good: later calls to [`Pool::get`] fail, and a connection
    /// being opened meanwhile is closed as soon as it is.
    pub fn shut(&self, reason: &str) {
        self.shut.store(true, Ordering::SeqCst);
        self.close(reason);
    }

    /// Closes every open connection of the pool with `reason`. Later calls to [`Pool::get`]
    /// reconnect.
    pub fn close(&self, reason: &str) {
        for slot in self.slots.iter() {
            if let Some(conn) = slot.conn.lock().unwrap_or_else(|e| e.into_inner()).take() {
                conn.close(0u32.into(), reason.as_bytes());
            }
        }
    }

    /// How many of the pool's connections are open now.
    pub fn open_connections(&self) -> usize {
        self.slots.iter().filter(|s| s.live().is_some()).count()
    }
}
