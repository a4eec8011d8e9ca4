//! For tests of the EC2 system against an EC2 emulator (moto): an administrator's view of the
//! emulated account, to set up networks and to play and inspect instances. Not for production.

use std::net::IpAddr;

use aws_config::{AppName, BehaviorVersion, Region};
use aws_sdk_ec2::config::Credentials;
use aws_sdk_ec2::types::InstanceAttributeName;
use base64::Engine;
use bigmachine_core::{Error, Kind, Result};

/// The application name the emulator's client puts in its requests' user agent, so that a test
/// can tell its own requests from the system's.
pub const APP: &str = "bigmachine-emulator-admin";

/// An instance of the emulated account.
#[derive(Debug, Clone)]
pub struct EmulatedInstance {
    /// Its id.
    pub id: String,
    /// Its state (`pending`, `running`, `terminated`, ...).
    pub state: String,
    /// Its private address.
    pub private_ip: Option<IpAddr>,
    /// Whether it is a spot instance.
    pub spot: bool,
    /// Its tags.
    pub tags: Vec<(String, String)>,
}

/// An EC2 client for the emulator at `endpoint`, with the emulator's test credentials.
#[derive(Debug, Clone)]
pub struct Emulator {
    client: aws_sdk_ec2::Client,
}

fn fail(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(Kind::Other, format!("emulator {what}: {e}"))
}

impl Emulator {
    /// A client of the emulator at `endpoint` (`http://127.0.0.1:PORT`), in `region`.
    pub async fn new(endpoint: &str, region: &str) -> Result<Self> {
        let app = AppName::new(APP).map_err(|e| fail("app name", e))?;
        let config = aws_config::defaults(BehaviorVersion::latest())
            .http_client(aws_smithy_http_client::Builder::new().build_http())
            .app_name(app)
            .endpoint_url(endpoint)
            .region(Region::new(region.to_string()))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "static"))
            .load()
            .await;
        Ok(Self {
            client: aws_sdk_ec2::Client::new(&config),
        })
    }

    /// Creates a VPC of `vpc_cidr` and a subnet of `subnet_cidr` in it; returns the subnet.
    pub async fn subnet(&self, vpc_cidr: &str, subnet_cidr: &str) -> Result<String> {
        let vpc = self
            .client
            .create_vpc()
            .cidr_block(vpc_cidr)
            .send()
            .await
            .map_err(|e| fail("CreateVpc", e))?;
        let vpc = vpc.vpc().and_then(|v| v.vpc_id()).unwrap_or_default();
        let subnet = self
            .client
            .create_subnet()
            .vpc_id(vpc)
            .cidr_block(subnet_cidr)
            .send()
            .await
            .map_err(|e| fail("CreateSubnet", e))?;
        Ok(subnet
            .subnet()
            .and_then(|s| s.subnet_id())
            .unwrap_or_default()
            .to_string())
    }

    /// Every instance of the account.
    pub async fn instances(&self) -> Result<Vec<EmulatedInstance>> {
        let out = self
            .client
            .describe_instances()
            .send()
            .await
            .map_err(|e| fail("DescribeInstances", e))?;
        Ok(out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .map(|i| EmulatedInstance {
                id: i.instance_id().unwrap_or_default().to_string(),
                state: i
                    .state()
                    .and_then(|s| s.name())
                    .map(|n| n.as_str().to_string())
                    .unwrap_or_default(),
                private_ip: i.private_ip_address().and_then(|a| a.parse().ok()),
                spot: i.instance_lifecycle().is_some_and(|l| l.as_str() == "spot"),
                tags: i
                    .tags()
                    .iter()
                    .map(|t| {
                        (
                            t.key().unwrap_or_default().to_string(),
                            t.value().unwrap_or_default().to_string(),
                        )
                    })
                    .collect(),
            })
            .collect())
    }

    /// The launch data (user data, decoded) of instance `id`.
    pub async fn user_data(&self, id: &str) -> Result<String> {
        let out = self
            .client
            .describe_instance_attribute()
            .instance_id(id)
            .attribute(InstanceAttributeName::UserData)
            .send()
            .await
            .map_err(|e| fail("DescribeInstanceAttribute", e))?;
        let encoded = out.user_data().and_then(|u| u.value()).ok_or_else(|| {
            fail(
                "DescribeInstanceAttribute",
                format!("{id} has no user data"),
            )
        })?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| fail("user data", e))?;
        String::from_utf8(bytes).map_err(|e| fail("user data", e))
    }

    /// Terminates instance `id`, as its own shutdown would (its shutdown behaviour is
    /// terminate) or as an operator would.
    pub async fn terminate(&self, id: &str) -> Result<()> {
        self.client
            .terminate_instances()
            .instance_ids(id)
            .send()
            .await
            .map_err(|e| fail("TerminateInstances", e))?;
        Ok(())
    }
}
