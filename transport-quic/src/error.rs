//! Transport errors.

use std::io;

/// A transport result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while setting up or using the transport.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A certificate or key could not be generated or parsed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The TLS configuration was rejected.
    #[error("tls configuration: {0}")]
    Tls(String),
    /// A transport setting is out of range or does not parse.
    #[error("transport configuration: {0}")]
    Config(String),
    /// The socket could not be bound or configured.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// A connection could not be started (bad address, endpoint closed).
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// A connection failed or was lost: handshake refused, peer closed, timed out.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The connection attempt did not complete within [`crate::TransportConfig::connect_timeout`].
    #[error("connect to {0}: timed out")]
    ConnectTimeout(std::net::SocketAddr),
    /// The pool of connections to this address was shut ([`crate::Pool::shut`]).
    #[error("connections to {0} were shut")]
    Shut(std::net::SocketAddr),
}

impl From<rcgen::Error> for Error {
    fn from(e: rcgen::Error) -> Self {
        Self::Certificate(e.to_string())
    }
}

impl From<rustls::Error> for Error {
    fn from(e: rustls::Error) -> Self {
        Self::Tls(e.to_string())
    }
}

/// Whether a connection ended because TLS refused the handshake (a certificate not chained to the
/// cluster CA, a protocol mismatch). Such failures are permanent: trying again cannot help.
pub fn is_handshake_refusal(e: &quinn::ConnectionError) -> bool {
    let crypto = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    match e {
        quinn::ConnectionError::TransportError(t) => crypto(t.code),
        quinn::ConnectionError::ConnectionClosed(c) => crypto(c.error_code),
        quinn::ConnectionError::VersionMismatch => true,
        _ => false,
    }
}

impl Error {
    /// Whether trying again cannot help (see [`is_handshake_refusal`]).
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Certificate(_) | Self::Tls(_) | Self::Config(_) | Self::Shut(_) => true,
            Self::Connection(e) => is_handshake_refusal(e),
            Self::Io(_) | Self::Connect(_) | Self::ConnectTimeout(_) => false,
        }
    }
}
