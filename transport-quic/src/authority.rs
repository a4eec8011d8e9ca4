//! The cluster's certificate authority and the credentials it issues.
//!
//! The driver creates one [`Authority`] per cluster. It signs a certificate for the driver's own
//! endpoint ([`Authority::issue_driver`]) and one for every machine ([`Authority::issue`]). A
//! machine receives only its [`Credentials`]: its own key, its certificate and the CA's
//! certificate (to verify peers), never the CA's key.
//!
//! Each certificate says what its holder is ([`Role`]) and its name, in subject alternative
//! names that only the authority can sign; a server reads them back from a verified connection
//! as an [`Identity`]. Certificates expire ([`Authority::with_lifetime`]).

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::error::{Error, Result};

/// The server name every cluster certificate carries and every client verifies. Trust comes from
/// the chain to the cluster CA, not from the name.
pub const SERVER_NAME: &str = "bigmachine";

/// The suffix of the names that say a certificate's [`Role`]; no endpoint may be named so.
const ROLE_SUFFIX: &str = ".role.bigmachine";

/// The name of the driver's certificate.
pub const DRIVER_NAME: &str = "driver";

/// What the holder of a cluster certificate is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// The driver: it starts the cluster's machines and alone controls them.
    Driver,
    /// A machine of the cluster.
    Machine,
}

impl Role {
    /// The certificate name that says this role.
    fn san(self) -> String {
        let role = match self {
            Self::Driver => "driver",
            Self::Machine => "machine",
        };
        format!("{role}{ROLE_SUFFIX}")
    }
}

/// Who holds a certificate of the cluster: its role and its name (a machine's name given by its
/// system, such as `local-3` or an instance id; [`DRIVER_NAME`] for the driver).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// What the holder is.
    pub role: Role,
    /// The holder's name.
    pub name: String,
}

impl Identity {
    /// The identity a certificate of the cluster states. The certificate must have been
    /// verified already (as the peer certificate of a connection is): this only reads it.
    pub fn of_certificate(cert: &CertificateDer<'_>) -> Result<Self> {
        let parsed = webpki::EndEntityCert::try_from(cert)
            .map_err(|e| Error::Certificate(format!("unreadable peer certificate: {e}")))?;
        let mut roles = Vec::new();
        let mut name = None;
        for san in parsed.valid_dns_names() {
            if san == Role::Driver.san() {
                roles.push(Role::Driver);
            } else if san == Role::Machine.san() {
                roles.push(Role::Machine);
            } else if san != SERVER_NAME {
                name = Some(san.to_string());
            }
        }
        let [role] = roles[..] else {
            return Err(Error::Certificate(format!(
                "the peer's certificate states {} roles, not one",
                roles.len()
            )));
        };
        Ok(Self {
            role,
            name: name.unwrap_or_default(),
        })
    }

    /// The identity of the peer of `conn`, as its verified certificate states.
    pub fn of_connection(conn: &quinn::Connection) -> Result<Self> {
        let certs = conn
            .peer_identity()
            .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
            .ok_or_else(|| Error::Certificate("the peer presented no certificate".to_string()))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Error::Certificate("the peer presented no certificate".to_string()))?;
        Self::of_certificate(leaf)
    }
}

/// A cluster certificate authority: an ECDSA P-256 key and its self-signed certificate.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    lifetime: Duration,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// How long the certificates an authority issues are valid by default: 30 days, for long jobs.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// How long the authority's own certificate is valid: no certificate it issues may last longer.
const CA_LIFETIME: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// How far back a certificate's validity starts, so that a machine whose clock is behind the
/// driver's accepts it.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

impl Authority {
    /// Creates a fresh authority with a new key, issuing certificates valid for
    /// [`DEFAULT_LIFETIME`].
    pub fn new() -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(DnType::CommonName, "bigmachine cluster authority");
        // The authority outlives every certificate it issues (its lifetime may be set later).
        let now = SystemTime::now();
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + CA_LIFETIME).into();
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert: cert.der().clone(),
            lifetime: DEFAULT_LIFETIME,
        })
    }

    /// Issues certificates valid for `lifetime` from the moment of issue (at most 100 years, the
    /// authority's own; issuing fails beyond).
    pub fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// The CA certificate, which every endpoint of the cluster trusts.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// Issues credentials for the machine named `name`. The certificate is valid for the
    /// cluster's [`SERVER_NAME`] and, when `name` is a DNS name (`i-0abc123`, `local-3`), for
    /// `name` too: a client that connects to a machine by that name accepts no other machine's
    /// certificate, even at the same address. Trust itself comes from the chain to the CA.
    pub fn issue(&self, name: &str) -> Result<Credentials> {
        self.issue_now(name, Role::Machine)
    }

    /// Issues the driver's credentials: only their holder may control the cluster's machines.
    pub fn issue_driver(&self) -> Result<Credentials> {
        self.issue_now(DRIVER_NAME, Role::Driver)
    }

    /// Issues credentials valid from now (less the clock skew allowed) for the lifetime.
    fn issue_now(&self, name: &str, role: Role) -> Result<Credentials> {
        let now = SystemTime::now();
        let until = now
            .checked_add(self.lifetime)
            .filter(|_| self.lifetime <= CA_LIFETIME)
            .ok_or_else(|| {
                Error::Certificate(format!(
                    "a certificate lifetime of {:?} outlives the authority ({} years)",
                    self.lifetime,
                    CA_LIFETIME.as_secs() / (365 * 24 * 3600)
                ))
            })?;
        self.issue_for(name, role, now - CLOCK_SKEW, until)
    }

    /// Issues credentials for `name` in `role`, valid from `not_before` to `not_after` (which
    /// must come after it, and within the authority's own 100 years).
    pub fn issue_for(
        &self,
        name: &str,
        role: Role,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Credentials> {
        if not_before > not_after || not_after > SystemTime::now() + CA_LIFETIME {
            return Err(Error::Certificate(
                "a certificate's validity must end after it starts, within the authority's"
                    .to_string(),
            ));
        }
        if name.to_ascii_lowercase().ends_with(ROLE_SUFFIX) {
            return Err(Error::Certificate(format!(
                "{name:?} is reserved: names ending in {ROLE_SUFFIX} state roles"
            )));
        }
        let mut names = vec![SERVER_NAME.to_string(), role.san()];
        if is_dns_name(name) && name != SERVER_NAME {
            names.push(name.to_string());
        }
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Credentials {
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            ca: self.cert.clone(),
        })
    }
}

/// Whether `name` can name an endpoint in its certificate and be verified as a server name: a
/// DNS name of letters, digits, `-` and `.`, not an IP address.
pub fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.parse::<std::net::IpAddr>().is_err()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// What one endpoint needs to take part in the cluster: its own certificate and private key, and
/// the CA certificate its peers must chain to.
pub struct Credentials {
    /// This endpoint's certificate, signed by the cluster CA.
    pub cert: CertificateDer<'static>,
    /// This endpoint's private key.
    pub key: PrivateKeyDer<'static>,
    /// The cluster CA's certificate.
    pub ca: CertificateDer<'static>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").finish_non_exhaustive()
    }
}

impl Clone for Credentials {
    fn clone(&self) -> Self {
        Self {
            cert: self.cert.clone(),
            key: self.key.clone_key(),
            ca: self.ca.clone(),
        }
    }
}

impl Credentials {
    /// Encodes the credentials as PEM: the certificate, the CA certificate, then the private key.
    /// This is the form a machine receives privately (a 0600 file or an inherited pipe).
    pub fn to_pem(&self) -> String {
        let mut out = String::new();
        for (label, der) in [
            ("CERTIFICATE", self.cert.as_ref()),
            ("CERTIFICATE", self.ca.as_ref()),
            ("PRIVATE KEY", self.key.secret_der()),
        ] {
            out.push_str(&pem_block(label, der));
        }
        out
    }

    /// Decodes credentials written by [`Credentials::to_pem`].
    pub fn from_pem(pem: &[u8]) -> Result<Self> {
        let mut certs = CertificateDer::pem_slice_iter(pem);
        let mut next_cert = || -> Result<CertificateDer<'static>> {
            certs
                .next()
                .ok_or_else(|| Error::Certificate("missing certificate in PEM".into()))?
                .map_err(|e| Error::Certificate(e.to_string()))
        };
        let cert = next_cert()?;
        let ca = next_cert()?;
        let key =
            PrivateKeyDer::from_pem_slice(pem).map_err(|e| Error::Certificate(e.to_string()))?;
        Ok(Self { cert, key, ca })
    }
}

fn pem_block(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip() -> Result<()> {
        let ca = Authority::new()?;
        let creds = ca.issue("m1")?;
        let back = Credentials::from_pem(creds.to_pem().as_bytes())?;
        assert_eq!(back.cert, creds.cert);
        assert_eq!(back.ca, creds.ca);
        assert_eq!(back.key.secret_der(), creds.key.secret_der());
        Ok(())
    }

    #[test]
    fn machine_names_that_are_dns_names() {
        for good in ["i-0abc123", "local-3", "bigmachine", "a.b-c"] {
            assert!(is_dns_name(good), "{good}");
        }
        for bad in ["", "local machine 0", "-a", "a-", "127.0.0.1", "a..b", "ü"] {
            assert!(!is_dns_name(bad), "{bad}");
        }
    }

    #[test]
    fn certificates_state_role_and_name() -> Result<()> {
        let ca = Authority::new()?;
        let machine = Identity::of_certificate(&ca.issue("local-3")?.cert)?;
        assert_eq!(
            machine,
            Identity {
                role: Role::Machine,
                name: "local-3".into()
            }
        );
        let driver = Identity::of_certificate(&ca.issue_driver()?.cert)?;
        assert_eq!(driver.role, Role::Driver);
        assert_eq!(driver.name, DRIVER_NAME);
        // No machine can be named into another role.
        assert!(ca.issue("driver.role.bigmachine").is_err());
        assert!(ca.issue("DRIVER.role.bigmachine").is_err());
        // A lifetime beyond the authority's is refused, not a panic.
        let forever = Authority::new()?.with_lifetime(Duration::MAX);
        assert!(forever.issue("m").is_err());
        Ok(())
    }

    #[test]
    fn truncated_pem_is_an_error() -> Result<()> {
        let creds = Authority::new()?.issue("m1")?;
        let pem = creds.to_pem();
        assert!(Credentials::from_pem(&pem.as_bytes()[..pem.len() / 3]).is_err());
        Ok(())
    }
}
