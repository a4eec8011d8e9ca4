//! rustls configurations for the cluster: both sides present a certificate and both sides require
//! the peer's to chain to the cluster CA.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::authority::Credentials;
use crate::error::{Error, Result};

/// The ALPN protocol name; it carries the wire protocol's version, so endpoints of incompatible
/// versions refuse each other at the handshake.
pub const ALPN: &[u8] = b"bigmachine/1";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(creds: &Credentials) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    roots.add(creds.ca.clone())?;
    Ok(Arc::new(roots))
}

/// The server side: presents `creds` and requires a client certificate chained to the cluster CA.
pub fn server_config(creds: &Credentials) -> Result<rustls::ServerConfig> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(creds)?, provider.clone())
        .build()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![creds.cert.clone()], creds.key.clone_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.max_early_data_size = 0;
    Ok(config)
}

/// The client side: presents `creds` and verifies the server's certificate against the cluster CA.
pub fn client_config(creds: &Credentials) -> Result<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(creds)?)
        .with_client_auth_cert(vec![creds.cert.clone()], creds.key.clone_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}
