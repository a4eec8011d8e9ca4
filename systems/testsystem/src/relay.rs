//! A UDP relay that makes a bad network on loopback: it forwards datagrams between its callers
//! and one target, losing, delaying (and so reordering) them by a seeded rule, or dropping all of
//! them while partitioned. This kernel-independent stand-in for `tc netem` carries any UDP
//! protocol, QUIC included.
//!
//! Each caller (source address) gets its own upstream socket, so the target sees one peer per
//! caller and its replies find their way back. The relay's faults can change while it runs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bigmachine_core::{Error, Kind, Result};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// What a [`Relay`] does to each datagram, in each direction.
///
/// ```
/// # use std::time::Duration;
/// let faults = bigmachine_testsystem::LinkFaults::default()
///     .loss(0.05)
///     .delay(Duration::from_millis(50));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub struct LinkFaults {
    /// Probability that a datagram is lost. Default: 0.
    pub loss: f64,
    /// Time each datagram is held before it is sent on. Default: none.
    pub delay: Duration,
    /// Extra delay drawn uniformly from zero to this for each datagram; datagrams overtake each
    /// other when it exceeds their spacing. Default: none.
    pub jitter: Duration,
    /// Every datagram is dropped, both ways. Default: `false`.
    pub partitioned: bool,
}

impl LinkFaults {
    /// Loses each datagram with probability `p` (clamped to 0..=1).
    pub fn loss(mut self, p: f64) -> Self {
        self.loss = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
        self
    }

    /// Holds each datagram for `delay`.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Adds up to `jitter` of delay to each datagram, drawn uniformly (reordering them).
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// Drops every datagram, both ways, while `on`.
    pub fn partitioned(mut self, on: bool) -> Self {
        self.partitioned = on;
        self
    }
}

/// Counts of a relay's datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RelayStats {
    /// Datagrams sent on.
    pub forwarded: u64,
    /// Datagrams dropped by loss or partition.
    pub dropped: u64,
}

#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    front: UdpSocket,
    faults: Mutex<LinkFaults>,
    rng: Mutex<fastrand::Rng>,
    forwarded: AtomicU64,
    dropped: AtomicU64,
}

/// A running relay to one target; it stops when dropped.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

/// Socket buffers of the relay: bulk transfers through it must not overflow the kernel's
/// default (~208 KiB), which would add loss nobody asked for.
const SOCKET_BUFFER: usize = 4 << 20;

/// The largest datagram relayed.
const MAX_DATAGRAM: usize = 65_536;

fn io(what: &str, e: std::io::Error) -> Error {
    Error::new(Kind::Net, format!("relay: {what}: {e}"))
}

/// A UDP socket on `ip`, any port, with large buffers.
fn bind(ip: std::net::IpAddr) -> Result<UdpSocket> {
    let socket = std::net::UdpSocket::bind((ip, 0)).map_err(|e| io("bind", e))?;
    socket.set_nonblocking(true).map_err(|e| io("bind", e))?;
    let socket = UdpSocket::from_std(socket).map_err(|e| io("bind", e))?;
    let sock = socket2_ref(&socket);
    // Best effort: the kernel caps them at its maximum.
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    Ok(socket)
}

fn socket2_ref(socket: &UdpSocket) -> socket2::SockRef<'_> {
    socket2::SockRef::from(socket)
}

/// A relay's front socket, bound before its target is known (see [`crate::Relayed`]).
#[derive(Debug)]
pub(crate) struct Front {
    socket: UdpSocket,
    addr: SocketAddr,
}

impl Front {
    /// A front socket on `ip`, any free port.
    pub(crate) fn bind(ip: std::net::IpAddr) -> Result<Self> {
        let socket = bind(ip)?;
        let addr = socket.local_addr().map_err(|e| io("address", e))?;
        Ok(Self { socket, addr })
    }
}

impl Relay {
    /// Starts a relay to `target` on a free port of `target`'s loopback address, applying
    /// `faults` with a generator seeded by `seed` (the same seed and traffic give the same
    /// fates). Must be called within a tokio runtime.
    pub fn start(target: SocketAddr, faults: LinkFaults, seed: u64) -> Result<Self> {
        Ok(Self::serve(Front::bind(target.ip())?, target, faults, seed))
    }

    /// Relays what reaches `front` to `target` (cannot fail: the sockets a relay may fail to
    /// open are its front, bound already, and its upstreams, opened per caller later).
    pub(crate) fn serve(front: Front, target: SocketAddr, faults: LinkFaults, seed: u64) -> Self {
        let Front {
            socket: front,
            addr,
        } = front;
        let shared = Arc::new(Shared {
            target,
            front,
            faults: Mutex::new(faults),
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            forwarded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let task = tokio::spawn(run(shared.clone()));
        Self { addr, shared, task }
    }

    /// The address callers send to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address datagrams are relayed to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// Changes the faults applied from now on.
    pub fn set_faults(&self, faults: LinkFaults) {
        *lock(&self.shared.faults) = faults;
    }

    /// The faults applied now.
    pub fn faults(&self) -> LinkFaults {
        *lock(&self.shared.faults)
    }

    /// Starts or ends a partition, keeping the other faults.
    pub fn partition(&self, on: bool) {
        lock(&self.shared.faults).partitioned = on;
    }

    /// Datagrams forwarded and dropped so far.
    pub fn stats(&self) -> RelayStats {
        RelayStats {
            forwarded: self.shared.forwarded.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a datagram goes.
enum Out {
    /// To the target, through a caller's upstream socket.
    Up(Arc<UdpSocket>),
    /// Back to a caller, through the front socket.
    Down(SocketAddr),
}

impl Shared {
    /// The fate of the next datagram: `None` if dropped, else its delay.
    fn draw(&self) -> Option<Duration> {
        let faults = *lock(&self.faults);
        let mut rng = lock(&self.rng);
        let (lost, spread) = (rng.f64(), rng.f64());
        if faults.partitioned || lost < faults.loss {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(faults.delay + faults.jitter.mul_f64(spread))
    }

    /// Sends `datagram` on after its drawn delay (or drops it). Undelayed datagrams go at
    /// once, in order; delayed ones each wait on a task of their own.
    async fn pass(self: &Arc<Self>, datagram: &[u8], out: Out) {
        let Some(delay) = self.draw() else { return };
        if delay.is_zero() {
            self.send(datagram, &out).await;
        } else {
            let shared = self.clone();
            let datagram = datagram.to_vec();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                // A partition that began meanwhile drops it too.
                if lock(&shared.faults).partitioned {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                shared.send(&datagram, &out).await;
            });
        }
    }

    async fn send(&self, datagram: &[u8], out: &Out) {
        let sent = match out {
            Out::Up(upstream) => upstream.send(datagram).await,
            Out::Down(caller) => self.front.send_to(datagram, caller).await,
        };
        let counter = match sent {
            Ok(_) => &self.forwarded,
            // A full or vanished socket loses the datagram, as a network would.
            Err(_) => &self.dropped,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Aborts a task when dropped.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Paces a socket's reads after errors: ICMP errors surface on Linux as one failed read each
/// (a peer went away), so a few are passed over at once, but a socket failing on every read
/// is read at most every [`Backoff::PAUSE`] rather than in a busy loop.
#[derive(Debug, Default)]
struct Backoff {
    errors: u32,
}

impl Backoff {
    const PAUSE: Duration = Duration::from_millis(10);
    /// Failed reads in a row passed over without a pause.
    const FREE: u32 = 8;

    async fn failed(&mut self, what: &str, e: std::io::Error) {
        tracing::trace!(error = %e, "relay {what} socket");
        self.errors = self.errors.saturating_add(1);
        if self.errors > Self::FREE {
            tokio::time::sleep(Self::PAUSE).await;
        } else {
            tokio::task::yield_now().await;
        }
    }

    fn read(&mut self) {
        self.errors = 0;
    }
}

/// A caller's upstream socket unused this long is closed (its next datagram opens another):
/// a relay that sees many callers come and go holds the sockets of recent ones only.
const IDLE_UPSTREAM: Duration = Duration::from_secs(60);

/// A caller's upstream socket, the task carrying the target's datagrams back, and when the
/// caller last sent.
struct Upstream {
    socket: Arc<UdpSocket>,
    _back: AbortOnDrop,
    used: tokio::time::Instant,
}

/// Reads the front socket: each caller's datagrams go up through its own upstream socket,
/// whose replies a task of their own carries back.
async fn run(shared: Arc<Shared>) {
    let mut upstreams: HashMap<SocketAddr, Upstream> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut backoff = Backoff::default();
    loop {
        let (n, caller) = match shared.front.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                backoff.failed("front", e).await;
                continue;
            }
        };
        backoff.read();
        let now = tokio::time::Instant::now();
        let upstream = match upstreams.get_mut(&caller) {
            Some(up) => {
                up.used = now;
                up.socket.clone()
            }
            None => match open_upstream(&shared, caller) {
                Ok((socket, task)) => {
                    upstreams.retain(|_, up| now.duration_since(up.used) < IDLE_UPSTREAM);
                    upstreams.insert(
                        caller,
                        Upstream {
                            socket: socket.clone(),
                            _back: AbortOnDrop(task),
                            used: now,
                        },
                    );
                    socket
                }
                Err(e) => {
                    tracing::warn!(error = %e, "relay could not open an upstream socket");
                    continue;
                }
            },
        };
        shared.pass(&buf[..n], Out::Up(upstream)).await;
    }
}

/// An upstream socket for `caller`, connected to the target, and the task carrying the
/// target's datagrams back to `caller`.
fn open_upstream(
    shared: &Arc<Shared>,
    caller: SocketAddr,
) -> Result<(Arc<UdpSocket>, JoinHandle<()>)> {
    let socket = bind(shared.target.ip())?;
    let std = socket.into_std().map_err(|e| io("upstream", e))?;
    std.connect(shared.target).map_err(|e| io("connect", e))?;
    let socket = Arc::new(UdpSocket::from_std(std).map_err(|e| io("upstream", e))?);
    let reader = socket.clone();
    let back = shared.clone();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut backoff = Backoff::default();
        loop {
            match reader.recv(&mut buf).await {
                Ok(n) => {
                    backoff.read();
                    back.pass(&buf[..n], Out::Down(caller)).await;
                }
                // The target's port closed (ICMP): datagrams to it are lost; keep serving.
                Err(e) => backoff.failed("upstream", e).await,
            }
        }
    });
    Ok((socket, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UDP echo server on loopback; returns its address.
    async fn echo() -> std::io::Result<SocketAddr> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let addr = socket.local_addr()?;
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let _ = socket.send_to(&buf[..n], from).await;
            }
        });
        Ok(addr)
    }

    /// Sends `n` numbered datagrams through `relay` and collects, within `wait`, the numbers
    /// echoed back.
    async fn round_trip(relay: &Relay, n: u32, wait: Duration) -> std::io::Result<Vec<u32>> {
        let client = UdpSocket::bind("127.0.0.1:0").await?;
        client.connect(relay.addr()).await?;
        for i in 0..n {
            client.send(&i.to_le_bytes()).await?;
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 16];
        while let Ok(Ok(len)) = tokio::time::timeout(wait, client.recv(&mut buf)).await {
            if len == 4 {
                got.push(u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]));
            }
        }
        Ok(got)
    }

    #[tokio::test]
    async fn a_clean_link_carries_every_datagram_in_order() -> Result<()> {
        let target = echo().await.map_err(Error::other)?;
        let relay = Relay::start(target, LinkFaults::default(), 1)?;
        let got = round_trip(&relay, 100, Duration::from_millis(500))
            .await
            .map_err(Error::other)?;
        assert_eq!(got, (0..100).collect::<Vec<_>>());
        assert_eq!(relay.stats().forwarded, 200, "both ways");
        Ok(())
    }

    #[tokio::test]
    async fn a_partition_drops_everything_until_it_heals() -> Result<()> {
        let target = echo().await.map_err(Error::other)?;
        let relay = Relay::start(target, LinkFaults::default().partitioned(true), 1)?;
        let got = round_trip(&relay, 20, Duration::from_millis(200))
            .await
            .map_err(Error::other)?;
        assert!(got.is_empty(), "{got:?} crossed a partition");
        assert_eq!(relay.stats().dropped, 20);
        relay.partition(false);
        let got = round_trip(&relay, 20, Duration::from_millis(500))
            .await
            .map_err(Error::other)?;
        assert_eq!(got.len(), 20);
        Ok(())
    }

    #[tokio::test]
    async fn loss_drops_about_its_share_and_delay_holds_datagrams() -> Result<()> {
        let target = echo().await.map_err(Error::other)?;
        let relay = Relay::start(target, LinkFaults::default().loss(0.25), 7)?;
        let got = round_trip(&relay, 1000, Duration::from_millis(500))
            .await
            .map_err(Error::other)?;
        // Each echo crosses twice: 0.75² of 1000 expected (562), seeded.
        assert!((450..=680).contains(&got.len()), "{} echoed", got.len());
        // Every datagram lost is counted: 1000 went up, and what got back is all that was not
        // dropped on either leg.
        assert_eq!(relay.stats().dropped, 1000 - got.len() as u64);

        relay.set_faults(LinkFaults::default().delay(Duration::from_millis(150)));
        let client = UdpSocket::bind("127.0.0.1:0").await.map_err(Error::other)?;
        client.connect(relay.addr()).await.map_err(Error::other)?;
        let started = tokio::time::Instant::now();
        client.send(b"x").await.map_err(Error::other)?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
            .await
            .map_err(Error::other)?
            .map_err(Error::other)?;
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "held {:?}, not 150 ms each way",
            started.elapsed()
        );
        Ok(())
    }
}
