//! The flags of the EC2 system (`--bigm.ec2-*`), flattened into [`crate::driver::Flags`].

use bigmachine_core::{KeepaliveConfig, Result};
use bigmachine_ec2::{Ec2Config, Ec2System};
use clap::builder::BoolishValueParser;
use clap::Args;

/// How to launch EC2 machines. Unset flags keep [`Ec2Config`]'s defaults; every flag also has an
/// environment variable (`--bigm.ec2-instance-type` and `BIGM_EC2_INSTANCE_TYPE`, ...); a switch's
/// variable is true for `1`, `true`, `yes` or `on` and false for `0`, `false`, `no` or `off`.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "bigmachine on EC2")]
#[non_exhaustive]
pub struct Ec2Flags {
    /// Instance type of the machines (default m6i.large).
    #[arg(long = "bigm.ec2-instance-type", env = "BIGM_EC2_INSTANCE_TYPE")]
    pub instance_type: Option<String>,
    /// Launch on-demand instances only (default: spot, on-demand for a shortfall).
    #[arg(long = "bigm.ec2-on-demand", env = "BIGM_EC2_ON_DEMAND", value_parser = BoolishValueParser::new())]
    pub on_demand: bool,
    /// Launch spot instances only; a shortfall is an error.
    #[arg(long = "bigm.ec2-spot-only", env = "BIGM_EC2_SPOT_ONLY", value_parser = BoolishValueParser::new())]
    pub spot_only: bool,
    /// Image to launch (default: the newest image matching --bigm.ec2-ami-name).
    #[arg(long = "bigm.ec2-ami", env = "BIGM_EC2_AMI")]
    pub ami: Option<String>,
    /// Owner of the images searched for (default: Amazon).
    #[arg(long = "bigm.ec2-ami-owner", env = "BIGM_EC2_AMI_OWNER")]
    pub ami_owner: Option<String>,
    /// Name pattern of the images searched for; {arch} is the architecture (default: Amazon
    /// Linux 2023).
    #[arg(long = "bigm.ec2-ami-name", env = "BIGM_EC2_AMI_NAME")]
    pub ami_name: Option<String>,
    /// AWS region (default: the standard resolution: AWS_REGION, the profile).
    #[arg(long = "bigm.ec2-region", env = "BIGM_EC2_REGION")]
    pub region: Option<String>,
    /// Subnet to launch into (default: the default VPC's).
    #[arg(long = "bigm.ec2-subnet", env = "BIGM_EC2_SUBNET")]
    pub subnet: Option<String>,
    /// Security group ids, comma-separated (default: bigmachine-udp-PORT, created when absent).
    #[arg(
        long = "bigm.ec2-security-group",
        env = "BIGM_EC2_SECURITY_GROUP",
        value_delimiter = ','
    )]
    pub security_groups: Vec<String>,
    /// Instance profile (name or ARN) of the machines.
    #[arg(long = "bigm.ec2-instance-profile", env = "BIGM_EC2_INSTANCE_PROFILE")]
    pub instance_profile: Option<String>,
    /// EC2 key pair to install for SSH.
    #[arg(long = "bigm.ec2-key-name", env = "BIGM_EC2_KEY_NAME")]
    pub key_name: Option<String>,
    /// Extra instance tags, KEY=VALUE, comma-separated.
    #[arg(long = "bigm.ec2-tag", env = "BIGM_EC2_TAG", value_delimiter = ',', value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    /// Root volume size in GiB (default 50).
    #[arg(long = "bigm.ec2-disk-gib", env = "BIGM_EC2_DISK_GIB")]
    pub disk_gib: Option<u32>,
    /// Reach machines at their private addresses (a driver inside the VPC).
    #[arg(
        long = "bigm.ec2-private-addresses",
        env = "BIGM_EC2_PRIVATE_ADDRESSES", value_parser = BoolishValueParser::new())]
    pub private_addresses: bool,
    /// UDP port machines serve on (default 443).
    #[arg(long = "bigm.ec2-port", env = "BIGM_EC2_PORT")]
    pub port: Option<u16>,
    /// Where instances fetch the bootstrap (the ec2boot example) from.
    #[arg(long = "bigm.ec2-bootstrap-url", env = "BIGM_EC2_BOOTSTRAP_URL")]
    pub bootstrap_url: Option<String>,
    /// Hex SHA-256 of the bootstrap; instances run nothing else.
    #[arg(long = "bigm.ec2-bootstrap-sha256", env = "BIGM_EC2_BOOTSTRAP_SHA256")]
    pub bootstrap_sha256: Option<String>,
    /// Instances outlive their machine process (and their driver): costs money when the driver
    /// dies.
    #[arg(long = "bigm.ec2-immortal", env = "BIGM_EC2_IMMORTAL", value_parser = BoolishValueParser::new())]
    pub immortal: bool,
}

fn parse_tag(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

impl Ec2Flags {
    /// The EC2 settings these flags and `keepalive` (applied over the system's defaults) make.
    pub fn config(&self, keepalive: impl FnOnce(KeepaliveConfig) -> KeepaliveConfig) -> Ec2Config {
        let mut c = Ec2Config::default();
        let set = |to: &mut String, from: &Option<String>| {
            if let Some(v) = from {
                to.clone_from(v);
            }
        };
        set(&mut c.instance_type, &self.instance_type);
        set(&mut c.ami_owner, &self.ami_owner);
        set(&mut c.ami_name, &self.ami_name);
        set(&mut c.bootstrap_url, &self.bootstrap_url);
        set(&mut c.bootstrap_sha256, &self.bootstrap_sha256);
        c.on_demand = self.on_demand;
        c.spot_only = self.spot_only;
        c.ami.clone_from(&self.ami);
        c.region.clone_from(&self.region);
        c.subnet.clone_from(&self.subnet);
        c.security_groups.clone_from(&self.security_groups);
        c.instance_profile.clone_from(&self.instance_profile);
        c.key_name.clone_from(&self.key_name);
        c.tags.clone_from(&self.tags);
        c.disk_gib = self.disk_gib.unwrap_or(c.disk_gib);
        c.private_addresses = self.private_addresses;
        c.port = self.port.unwrap_or(c.port);
        c.immortal = self.immortal;
        c.keepalive = keepalive(c.keepalive);
        c
    }

    /// The EC2 system these flags describe.
    pub(crate) async fn system(
        &self,
        keepalive: impl FnOnce(KeepaliveConfig) -> KeepaliveConfig,
    ) -> Result<Ec2System> {
        Ec2System::new(self.config(keepalive)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        ec2: Ec2Flags,
    }

    #[test]
    fn flags_override_the_defaults_and_only_those() {
        let cli = Cli::try_parse_from([
            "prog",
            "--bigm.ec2-instance-type=c7g.large",
            "--bigm.ec2-on-demand",
            "--bigm.ec2-tag=team=data,cost=x",
            "--bigm.ec2-disk-gib=20",
        ])
        .expect("valid flags");
        let c = cli.ec2.config(|k| k);
        let defaults = Ec2Config::default();
        assert_eq!(c.instance_type, "c7g.large");
        assert!(c.on_demand && !c.spot_only && !c.immortal);
        assert_eq!(
            c.tags,
            [("team".into(), "data".into()), ("cost".into(), "x".into())]
        );
        assert_eq!(c.disk_gib, 20);
        assert_eq!(c.port, defaults.port);
        assert_eq!(c.ami_name, defaults.ami_name);
    }

    #[test]
    fn the_ec2_crate_knows_every_switch() {
        use clap::CommandFactory;
        #[derive(Parser)]
        struct All {
            #[command(flatten)]
            _flags: crate::driver::Flags,
        }
        let mut switches: Vec<String> = All::command()
            .get_arguments()
            .filter(|a| !a.get_action().takes_values())
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .filter(|l| l.starts_with("--bigm."))
            .collect();
        switches.sort();
        let mut known: Vec<String> = bigmachine_ec2::SWITCHES.map(String::from).to_vec();
        known.sort();
        assert_eq!(
            switches, known,
            "the Name tag would keep or drop the wrong values"
        );
    }

    #[test]
    fn a_tag_without_a_key_is_refused() {
        assert!(Cli::try_parse_from(["prog", "--bigm.ec2-tag=novalue"]).is_err());
        assert!(Cli::try_parse_from(["prog", "--bigm.ec2-tag==v"]).is_err());
    }
}
