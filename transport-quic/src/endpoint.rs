//! A quinn endpoint that both serves and dials with the cluster's credentials.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use crate::authority::Credentials;
use crate::error::{Error, Result};
use crate::tls;

/// Tuning of endpoints and their connections.
///
/// ```
/// let mut transport = bigmachine_quic::TransportConfig::default();
/// transport.pool_size = 4;
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TransportConfig {
    /// Connections kept per remote address by a [`crate::Pool`]; calls are spread over them.
    /// Default: 2.
    pub pool_size: usize,
    /// Bidirectional streams (calls in flight) a peer may open on one connection at once; further
    /// calls wait for a slot. Default: 256.
    pub max_concurrent_streams: u32,
    /// A connection with no traffic for this long is closed. Transport keepalives
    /// ([`TransportConfig::keep_alive_interval`]) keep healthy idle connections open.
    /// Default: 30 s.
    pub idle_timeout: Duration,
    /// How often an idle connection sends a QUIC ping. Default: 5 s.
    pub keep_alive_interval: Duration,
    /// How long a connection attempt (handshake included) may take. Default: 10 s.
    pub connect_timeout: Duration,
    /// Flow-control window of one stream, in bytes. Default: 8 MiB.
    pub stream_window: u32,
    /// Flow-control window of one connection, in bytes. Default: 32 MiB.
    pub connection_window: u32,
    /// UDP socket send and receive buffer sizes requested from the kernel, in bytes (the kernel
    /// caps them at its maximum). Default: 4 MiB.
    pub socket_buffer: usize,
    /// The largest UDP payload MTU discovery may settle on. Larger datagrams mean fewer packets
    /// to encrypt and send per byte; loopback allows 65 535, most networks 1 500 (quinn probes
    /// and falls back). With segmentation offload, about 6 500 is the most the kernel accepts in
    /// one send of a full batch. Default: 1452.
    pub max_mtu: u16,
    /// Whether to hand the kernel batches of datagrams in one call (UDP GSO) where it can.
    /// Default: `true`.
    pub segmentation_offload: bool,
    /// Round-trip time assumed before the first measurement; it sets how soon a lost handshake
    /// packet is resent (quinn's default, 333 ms, is tuned for the open internet).
    /// Default: 50 ms.
    pub initial_rtt: Duration,
    /// The congestion controller of what this side sends. Default: [`Congestion::Cubic`].
    pub congestion: Congestion,
    /// Connection attempts a serving endpoint handles at once, before authentication (each for
    /// [`TransportConfig::connect_timeout`] at most): beyond it, attempts are refused at once;
    /// beyond a quarter of it, an attempt must first prove its address (a QUIC retry), so that
    /// under load a flood from spoofed addresses costs a packet each, not a handshake.
    /// Default: 256.
    pub max_handshakes: usize,
}

/// A congestion controller: how fast a connection sends, judged from acknowledgements, losses
/// and round trips.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Congestion {
    /// CUBIC, the usual controller of TCP and QUIC: backs off on every loss. Right for clean
    /// networks, where a loss means congestion.
    #[default]
    Cubic,
    /// NewReno, the classic loss-based controller.
    NewReno,
    /// BBR, which paces at the bottleneck bandwidth it measures and does not read random loss as
    /// congestion: far faster on lossy links (1 MiB calls on a link losing 5 % of its datagrams
    /// with 100 ms round trips: about 40 times CUBIC's speed here).
    Bbr,
}

impl std::str::FromStr for Congestion {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cubic" => Ok(Self::Cubic),
            "newreno" => Ok(Self::NewReno),
            "bbr" => Ok(Self::Bbr),
            _ => Err(Error::Config(format!(
                "unknown congestion controller {s:?} (cubic, newreno or bbr)"
            ))),
        }
    }
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            pool_size: 2,
            max_concurrent_streams: 256,
            idle_timeout: Duration::from_secs(30),
            keep_alive_interval: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            stream_window: 8 << 20,
            connection_window: 32 << 20,
            socket_buffer: 4 << 20,
            initial_rtt: Duration::from_millis(50),
            max_mtu: 1452,
            segmentation_offload: true,
            congestion: Congestion::Cubic,
            max_handshakes: 256,
        }
    }
}

impl TransportConfig {
    fn quinn(&self) -> Result<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout)
            .map_err(|e| Error::Config(format!("idle timeout: {e}")))?;
        t.max_idle_timeout(Some(idle))
            .keep_alive_interval(Some(self.keep_alive_interval))
            .max_concurrent_bidi_streams(self.max_concurrent_streams.into())
            .max_concurrent_uni_streams(0u32.into())
            .stream_receive_window(self.stream_window.into())
            .receive_window(self.connection_window.into())
            .send_window(u64::from(self.connection_window))
            .initial_rtt(self.initial_rtt)
            .enable_segmentation_offload(self.segmentation_offload);
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(self.max_mtu.max(1200));
        t.mtu_discovery_config(Some(mtu));
        let controller: Arc<dyn quinn::congestion::ControllerFactory + Send + Sync> =
            match self.congestion {
                Congestion::Cubic => Arc::new(quinn::congestion::CubicConfig::default()),
                Congestion::NewReno => Arc::new(quinn::congestion::NewRenoConfig::default()),
                Congestion::Bbr => Arc::new(quinn::congestion::BbrConfig::default()),
            };
        t.congestion_controller_factory(controller);
        Ok(t)
    }
}

/// A QUIC endpoint of the cluster: it accepts connections from, and opens connections to, peers
/// holding certificates of the same authority.
#[derive(Debug, Clone)]
pub struct Endpoint {
    inner: quinn::Endpoint,
    config: Arc<TransportConfig>,
}

impl Endpoint {
    /// Binds an endpoint to `addr` (`127.0.0.1:0` picks a free port) with `creds`, to serve and
    /// to dial.
    pub fn bind(addr: SocketAddr, creds: &Credentials, config: TransportConfig) -> Result<Self> {
        Self::new(addr, creds, config, true)
    }

    /// Binds an endpoint that only dials (a driver's): incoming connection attempts are refused
    /// before any handshake work.
    pub fn client(addr: SocketAddr, creds: &Credentials, config: TransportConfig) -> Result<Self> {
        Self::new(addr, creds, config, false)
    }

    fn new(
        addr: SocketAddr,
        creds: &Credentials,
        config: TransportConfig,
        serves: bool,
    ) -> Result<Self> {
        let transport = Arc::new(config.quinn()?);
        let server = if serves {
            let server_crypto = QuicServerConfig::try_from(tls::server_config(creds)?)
                .map_err(|e| Error::Tls(e.to_string()))?;
            let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
            server.transport_config(transport.clone());
            // Attempts not yet taken up by the server, and their buffered packets: bounded
            // well below quinn's defaults (65,536 attempts, 100 MiB).
            server
                .max_incoming(config.max_handshakes.max(1) * 4)
                .incoming_buffer_size(64 << 10)
                .incoming_buffer_size_total(16 << 20);
            Some(server)
        } else {
            None
        };
        let client_crypto = QuicClientConfig::try_from(tls::client_config(creds)?)
            .map_err(|e| Error::Tls(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport);

        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        // Larger buffers avoid drops under bulk transfer; the kernel caps them at its maximum.
        if let Err(e) = socket.set_recv_buffer_size(config.socket_buffer) {
            tracing::debug!(error = %e, "could not raise the UDP receive buffer");
        }
        if let Err(e) = socket.set_send_buffer_size(config.socket_buffer) {
            tracing::debug!(error = %e, "could not raise the UDP send buffer");
        }
        socket.bind(&addr.into())?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| Error::Io(std::io::Error::other("no async runtime found")))?;
        let mut inner = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            server,
            socket.into(),
            runtime,
        )?;
        inner.set_default_client_config(client);
        Ok(Self {
            inner,
            config: Arc::new(config),
        })
    }

    /// The address this endpoint is bound to.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.inner.local_addr()?)
    }

    /// The tuning this endpoint was made with.
    pub fn config(&self) -> &TransportConfig {
        &self.config
    }

    /// Opens a new connection to `addr`, verifying that its certificate chains to the cluster CA
    /// and is valid for `server_name` ([`crate::SERVER_NAME`], which every certificate of the cluster
    /// carries, or the name of one machine).
    pub async fn connect(&self, addr: SocketAddr, server_name: &str) -> Result<quinn::Connection> {
        let connecting = self.inner.connect(addr, server_name)?;
        match tokio::time::timeout(self.config.connect_timeout, connecting).await {
            Ok(conn) => Ok(conn?),
            Err(_) => Err(Error::ConnectTimeout(addr)),
        }
    }

    /// Waits for the next incoming connection and completes its handshake. Returns `None` once the
    /// endpoint is closed. A handshake that fails (for instance, a client without a certificate of
    /// the cluster) is logged and skipped: the caller only ever sees authenticated connections.
    pub async fn accept(&self) -> Option<quinn::Connection> {
        loop {
            let incoming = self.inner.accept().await?;
            match incoming.await {
                Ok(conn) => return Some(conn),
                Err(e) => tracing::debug!(error = %e, "refused an incoming connection"),
            }
        }
    }

    /// Waits for the next incoming connection attempt without completing it, so the caller can
    /// run handshakes concurrently. Returns `None` once the endpoint is closed.
    pub async fn accept_incoming(&self) -> Option<quinn::Incoming> {
        self.inner.accept().await
    }

    /// Closes every connection of this endpoint at once with `reason`, and stops accepting.
    pub fn close(&self, reason: &str) {
        self.inner.close(0u32.into(), reason.as_bytes());
    }

    /// Waits until every connection of this endpoint is closed and its state released.
    pub async fn wait_idle(&self) {
        self.inner.wait_idle().await;
    }
}
