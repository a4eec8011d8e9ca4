//! The transport under bigmachine: QUIC (quinn) endpoints secured by mutual TLS (rustls) from an
//! in-process certificate authority, with a connection pool per remote machine.
//!
//! This crate owns everything that touches the network below the RPC layer. It knows nothing of
//! services or calls: it moves bytes over authenticated bidirectional streams.
//!
//! # Layout
//!
//! - `authority`: the cluster's certificate authority ([`Authority`]) and the credentials it
//!   issues ([`Credentials`]): a certificate per endpoint, driver included, chained to one CA whose
//!   private key never leaves the authority.
//! - `tls`: rustls configurations in which *both* sides require a certificate chained to the
//!   cluster CA, with the protocol version in ALPN ([`ALPN`]).
//! - `endpoint`: [`Endpoint`], a quinn endpoint that serves and dials with those credentials,
//!   tuned by [`TransportConfig`].
//! - `pool`: [`Pool`], several connections to one remote address, re-established after loss.
//! - `error`: [`Error`], what can go wrong here.
//!
//! # Security
//!
//! Every certificate the authority issues names the fixed server name [`SERVER_NAME`]; what makes a
//! peer trusted is that its certificate chains to the cluster CA, checked by rustls' WebPKI
//! verifiers in both directions. A peer without such a certificate (or with an expired one)
//! never completes a handshake, so nothing is served to it. Within the cluster, a certificate
//! states its holder's [`Role`] and name ([`Identity::of_connection`]), which the layers above
//! use to decide who may call what.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod authority;
mod endpoint;
mod error;
mod pool;
mod tls;

pub use authority::{
    is_dns_name, Authority, Credentials, Identity, Role, DEFAULT_LIFETIME, DRIVER_NAME, SERVER_NAME,
};
pub use endpoint::{Congestion, Endpoint, TransportConfig};
pub use error::{is_handshake_refusal, Error, Result};
pub use pool::Pool;
pub use tls::{client_config, server_config, ALPN};

/// Re-exported quinn types that cross this crate's API.
pub use quinn::{Connection, ConnectionError, RecvStream, SendStream};
