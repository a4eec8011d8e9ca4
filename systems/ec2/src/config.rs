//! [`Ec2Config`]: everything the EC2 system is told, with its defaults.

use std::time::Duration;

use bigmachine_core::{Error, KeepaliveConfig, Kind, Result};

/// Amazon's account, owner of the Amazon Linux images.
pub const AMAZON_OWNER: &str = "137112412989";

/// The default image: the newest Amazon Linux 2023 of the instance type's architecture
/// (`{arch}` is `x86_64` or `arm64`).
pub const DEFAULT_AMI_NAME: &str = "al2023-ami-2023.*-kernel-6.*-{arch}";

/// The settings of an [`crate::Ec2System`]. Start from [`Ec2Config::default`] and set what
/// differs; the bootstrap's URL and digest have no default (see the crate docs for publishing
/// it).
///
/// ```
/// let mut config = bigmachine_ec2::Ec2Config::default();
/// config.instance_type = "c7i.xlarge".into();
/// config.bootstrap_url = "https://example.com/ec2boot".into();
/// config.bootstrap_sha256 = "ab".repeat(32);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Ec2Config {
    /// The instance type of every machine. Its vCPUs (the machines' processors), memory and
    /// architectures come from the EC2 API. Default: `m6i.large`.
    pub instance_type: String,
    /// Launch on-demand instances only. Default: `false` (spot first, on-demand for any
    /// shortfall).
    pub on_demand: bool,
    /// Launch spot instances only: a shortfall is an error (and the instances launched are
    /// terminated). Default: `false`.
    pub spot_only: bool,
    /// The image to launch; when unset, the newest image of [`Ec2Config::ami_owner`] whose name
    /// matches [`Ec2Config::ami_name`]. Default: unset.
    pub ami: Option<String>,
    /// The owner of the images searched for. Default: [`AMAZON_OWNER`].
    pub ami_owner: String,
    /// The name pattern of the images searched for (`*` matches anything, `{arch}` is the
    /// instance type's architecture). Default: [`DEFAULT_AMI_NAME`].
    pub ami_name: String,
    /// The region; when unset, the standard AWS resolution (`AWS_REGION`, the profile, ...).
    /// Default: unset.
    pub region: Option<String>,
    /// The subnet to launch into; when unset, the default VPC's. Default: unset.
    pub subnet: Option<String>,
    /// Security groups (ids) of the instances; when empty, the group `bigmachine-udp-PORT` of
    /// the subnet's VPC, created when absent, with a rule for the machine port over UDP.
    /// Default: empty.
    pub security_groups: Vec<String>,
    /// Where that created group accepts the machine port from. Default: `0.0.0.0/0` (calls are
    /// authenticated by mutual TLS).
    pub ingress_cidr: String,
    /// The instance profile (name or ARN) machines run with. Default: none.
    pub instance_profile: Option<String>,
    /// The EC2 key pair to install for SSH. Default: none.
    pub key_name: Option<String>,
    /// Tags added to every instance. Default: none.
    pub tags: Vec<(String, String)>,
    /// Size of the root volume, in GiB (gp3, deleted with the instance). Default: 50.
    pub disk_gib: u32,
    /// Reach machines at their private addresses (a driver inside the VPC); otherwise at their
    /// public ones. Default: `false`.
    pub private_addresses: bool,
    /// The UDP port machines serve on. Default: 443.
    pub port: u16,
    /// Where instances fetch the bootstrap from (see the crate docs). Required.
    pub bootstrap_url: String,
    /// The hex SHA-256 digest the bootstrap must have; an instance runs nothing else.
    /// Required.
    pub bootstrap_sha256: String,
    /// Instances survive their machine process (and so their driver): off by default, when a
    /// machine whose process ends powers its instance off, and the instance, launched with
    /// shutdown behaviour `terminate`, is gone.
    pub immortal: bool,
    /// Requests a second to the EC2 API, launches and the monitor together. Default: 5.
    pub api_rate: f64,
    /// Requests allowed at once after a quiet spell. Default: 10.
    pub api_burst: u32,
    /// How long instances may take to be running. Default: 10 min.
    pub launch_timeout: Duration,
    /// Keepalives of EC2 machines. Default: every 10 s; a machine is lost after 5 min without
    /// them (which also bounds its boot); 30 s allowed to each.
    pub keepalive: KeepaliveConfig,
    /// For tests: at most this many spot instances can be had, as if EC2 had no more capacity
    /// (launches beyond it fail as EC2 fails them). Default: unset.
    #[doc(hidden)]
    pub spot_capacity: Option<usize>,
}

impl Default for Ec2Config {
    fn default() -> Self {
        let mut keepalive = KeepaliveConfig::default();
        keepalive.period = Duration::from_secs(10);
        keepalive.timeout = Duration::from_secs(300);
        keepalive.rpc_timeout = Duration::from_secs(30);
        Self {
            instance_type: "m6i.large".into(),
            on_demand: false,
            spot_only: false,
            ami: None,
            ami_owner: AMAZON_OWNER.into(),
            ami_name: DEFAULT_AMI_NAME.into(),
            region: None,
            subnet: None,
            security_groups: Vec::new(),
            ingress_cidr: "0.0.0.0/0".into(),
            instance_profile: None,
            key_name: None,
            tags: Vec::new(),
            disk_gib: 50,
            private_addresses: false,
            port: 443,
            bootstrap_url: String::new(),
            bootstrap_sha256: String::new(),
            immortal: false,
            api_rate: 5.0,
            api_burst: 10,
            launch_timeout: Duration::from_secs(600),
            keepalive,
            spot_capacity: None,
        }
    }
}

impl Ec2Config {
    /// Checks what can be checked without the EC2 API.
    pub(crate) fn check(&self) -> Result<()> {
        let precondition = |m: String| Err(Error::fatal(Kind::Precondition, m));
        if self.on_demand && self.spot_only {
            return precondition("on-demand and spot-only exclude each other".into());
        }
        if self.bootstrap_url.is_empty() {
            return precondition(
                "the EC2 system needs the bootstrap's URL (--bigm.ec2-bootstrap-url): see the \
                 README, \"Running on EC2\""
                    .into(),
            );
        }
        if !["https://", "http://"]
            .iter()
            .any(|scheme| self.bootstrap_url.starts_with(scheme))
        {
            return precondition(format!(
                "the bootstrap URL ({}) must be http:// or https://",
                self.bootstrap_url
            ));
        }
        // It goes into a systemd unit's environment: one word, no quotes or escapes.
        if let Some(c) = self
            .bootstrap_url
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '\\'))
        {
            return precondition(format!(
                "the bootstrap URL holds {c:?}, which it cannot carry into the instance"
            ));
        }
        let digest = &self.bootstrap_sha256;
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return precondition(format!(
                "the bootstrap's digest ({digest:?}) must be a hex SHA-256 (--bigm.ec2-bootstrap-sha256)"
            ));
        }
        if self.port == 0 {
            return precondition("the machine port cannot be 0".into());
        }
        if !(self.api_rate.is_finite() && self.api_rate > 0.0) || self.api_burst == 0 {
            return precondition(format!(
                "the EC2 request rate ({}/s, burst {}) must be positive",
                self.api_rate, self.api_burst
            ));
        }
        // EC2 allows 50 tags; bigmachine sets 4 of them, and owns their keys.
        if self.tags.len() > 46 {
            return precondition(format!("{} tags: at most 46", self.tags.len()));
        }
        if let Some((k, _)) = self.tags.iter().find(|(k, _)| {
            k.is_empty() || k == "Name" || k.starts_with("bigmachine") || k.starts_with("aws:")
        }) {
            return precondition(format!(
                "tag key {k:?} is bigmachine's or AWS's (Name, bigmachine*, aws:*)"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Ec2Config {
        Ec2Config {
            bootstrap_url: "https://example.com/b/ec2boot?X-Amz-Signature=ab%2Fcd".into(),
            bootstrap_sha256: "0f".repeat(32),
            ..Ec2Config::default()
        }
    }

    #[test]
    fn what_cannot_work_is_refused_before_any_request() {
        assert!(valid().check().is_ok());
        let mut none = valid();
        none.bootstrap_url.clear();
        let mut spaced = valid();
        spaced.bootstrap_url.push_str(" x");
        let mut short = valid();
        short.bootstrap_sha256.truncate(10);
        let mut both = valid();
        both.on_demand = true;
        both.spot_only = true;
        let mut scheme = valid();
        scheme.bootstrap_url = "-o/etc/passwd".into();
        let mut tag = valid();
        tag.tags = vec![("Name".into(), "x".into())];
        let mut rate = valid();
        rate.api_rate = f64::NAN;
        let mut burst = valid();
        burst.api_burst = 0;
        for c in [none, spaced, short, both, scheme, tag, rate, burst] {
            let err = c.check().err();
            assert_eq!(err.map(|e| e.kind()), Some(Kind::Precondition));
        }
    }
}
