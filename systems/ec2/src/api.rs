//! The EC2 API as the system uses it: every request waits for the shared [`Limiter`], and
//! requests EC2 throttles or drops are tried again with back-off (the SDK's own retries are off,
//! so that every request on the wire passed the limiter).

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, IamInstanceProfileSpecification,
    InstanceInterruptionBehavior, InstanceMarketOptionsRequest, InstanceMetadataOptionsRequest,
    InstanceStateName, InstanceType, IpPermission, IpRange, MarketType, ResourceType,
    ShutdownBehavior, SpotInstanceType, SpotMarketOptions, Tag, TagSpecification, VolumeType,
};
use aws_sdk_ec2::Client;
use bigmachine_core::{Error, Kind, Result};

use crate::limiter::Limiter;
use bigmachine_supervisor::{PanicRecord, PANIC_MARKER};

/// The last panic record in a console's text (lines may carry a prefix of the console's own,
/// such as a timestamp and the unit's name, before the record's marker). Only the last line
/// with the marker counts: were it cut, an older record would name the wrong panic.
pub(crate) fn last_panic(console: &str) -> Option<PanicRecord> {
    let line = console.lines().rev().find(|l| l.contains(PANIC_MARKER))?;
    let at = line.find(PANIC_MARKER)?;
    PanicRecord::parse(line[at..].trim_end_matches('\r'))
}

/// Tries of one request, the first included, when EC2 throttles it or the network drops it.
const TRIES: u32 = 8;

/// EC2's errors that mean "slow down".
const THROTTLED: [&str; 4] = [
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
];

/// EC2's errors that mean there is no capacity for the instances asked for, in this market.
const NO_CAPACITY: [&str; 7] = [
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "SpotMaxPriceTooLow",
    "MaxSpotInstanceCountExceeded",
    "UnfulfillableCapacity",
    "InstanceLimitExceeded",
    "VcpuLimitExceeded",
];

/// EC2's errors for a resource it just created but does not show yet (its API is eventually
/// consistent): tried again, like throttling.
const NOT_YET_VISIBLE: [&str; 2] = ["InvalidInstanceID.NotFound", "InvalidGroup.NotFound"];

/// What the system needs of an instance type.
#[derive(Debug, Clone)]
pub(crate) struct TypeInfo {
    pub(crate) vcpus: u32,
    pub(crate) memory_mib: u64,
    /// EC2's names: `x86_64`, `arm64`, ...
    pub(crate) architectures: Vec<String>,
}

/// An image found for the instances.
#[derive(Debug, Clone)]
pub(crate) struct Image {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) root_device: String,
}

/// What one launch asks for.
#[derive(Debug)]
pub(crate) struct LaunchSpec<'a> {
    pub(crate) image: &'a Image,
    pub(crate) instance_type: &'a str,
    pub(crate) user_data: String,
    pub(crate) subnet: Option<&'a str>,
    pub(crate) security_groups: &'a [String],
    pub(crate) instance_profile: Option<&'a str>,
    pub(crate) key_name: Option<&'a str>,
    pub(crate) tags: Vec<(String, String)>,
    pub(crate) disk_gib: u32,
}

/// An instance as EC2 describes it.
#[derive(Debug, Clone)]
pub(crate) struct Instance {
    pub(crate) id: String,
    pub(crate) state: String,
    /// Why it is in that state, if EC2 says (spot interruptions, shutdowns).
    pub(crate) reason: Option<String>,
    pub(crate) private_ip: Option<IpAddr>,
    pub(crate) public_ip: Option<IpAddr>,
    pub(crate) spot: bool,
}

impl Instance {
    /// Whether the instance is going or gone: it will never serve again.
    pub(crate) fn is_gone(&self) -> bool {
        matches!(
            self.state.as_str(),
            "shutting-down" | "terminated" | "stopping" | "stopped"
        )
    }

    fn from_sdk(i: &aws_sdk_ec2::types::Instance) -> Self {
        let ip = |s: Option<&str>| s.and_then(|s| s.parse().ok());
        Self {
            id: i.instance_id().unwrap_or_default().to_string(),
            state: i
                .state()
                .and_then(|s| s.name())
                .map_or_else(|| "unknown".to_string(), |n| n.as_str().to_string()),
            reason: i
                .state_reason()
                .and_then(|r| r.message())
                .map(str::to_string),
            private_ip: ip(i.private_ip_address()),
            public_ip: ip(i.public_ip_address()),
            spot: i.instance_lifecycle().is_some_and(|l| l.as_str() == "spot"),
        }
    }
}

/// A launch that failed: whether for want of capacity (another market may have some), and
/// why.
#[derive(Debug)]
pub(crate) struct LaunchFailure {
    pub(crate) no_capacity: bool,
    /// EC2 answered that it launched nothing (no capacity, a request it will not take); else
    /// the request may have launched an instance nobody heard of (the network, EC2's faults).
    pub(crate) refused: bool,
    pub(crate) error: Error,
}

impl LaunchFailure {
    /// A failure before any request: nothing was launched.
    pub(crate) fn before_request(error: Error) -> Self {
        Self {
            no_capacity: false,
            refused: true,
            error,
        }
    }
}

/// What a termination left.
#[derive(Debug, Default)]
pub(crate) struct Unterminated {
    /// Instances EC2 did not report shutting down.
    pub(crate) refused: Vec<String>,
    /// Instances EC2 does not know: terminated long ago, or too new for EC2 to show yet.
    pub(crate) unknown: Vec<String>,
}

impl Unterminated {
    pub(crate) fn is_empty(&self) -> bool {
        self.refused.is_empty() && self.unknown.is_empty()
    }
}

/// The EC2 API behind the limiter.
#[derive(Debug)]
pub(crate) struct Api {
    client: Client,
    limiter: Limiter,
    /// Spot instances still to be had, for tests that play a shortfall.
    spot_capacity: Option<AtomicUsize>,
}

/// Whether a failed request is worth sending again: throttling, EC2's own passing faults, the
/// network, and (when `not_found_is_late`) a resource EC2 does not show yet.
fn worth_retrying<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>, not_found_is_late: bool) -> bool {
    match e {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(_) => e.code().is_some_and(|c| {
            THROTTLED.contains(&c)
                || matches!(c, "InternalError" | "Unavailable" | "ServiceUnavailable")
                || (not_found_is_late && NOT_YET_VISIBLE.contains(&c))
        }),
        _ => false,
    }
}

/// The error for a failed request: Precondition for what the caller asked wrongly (unknown
/// ids, no permission), Unavailable for missing capacity, Net for the network.
fn to_error<E, R>(what: &str, e: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let code = e.code().map(str::to_string);
    let kind = match (&e, code.as_deref()) {
        (SdkError::DispatchFailure(_) | SdkError::TimeoutError(_), _) => Kind::Net,
        (_, Some(c)) if NO_CAPACITY.contains(&c) => Kind::Unavailable,
        (_, Some(c))
            if c.starts_with("Invalid")
                || c.starts_with("Unauthorized")
                || c.starts_with("AuthFailure")
                || c.starts_with("Missing")
                || c == "OptInRequired" =>
        {
            Kind::Precondition
        }
        _ => Kind::Other,
    };
    Error::new(kind, format!("EC2 {what}: {}", DisplayErrorContext(&e)))
}

fn filter(name: &str, value: impl Into<String>) -> Filter {
    Filter::builder().name(name).values(value).build()
}

impl Api {
    pub(crate) fn new(client: Client, rate: f64, burst: u32, spot_capacity: Option<usize>) -> Self {
        Self {
            client,
            limiter: Limiter::new(rate, burst),
            spot_capacity: spot_capacity.map(AtomicUsize::new),
        }
    }

    /// Sends a request (made by `request`) under the limiter, trying again with back-off while
    /// EC2 throttles it, has not yet shown what it just made, or the network drops it. A
    /// request that creates must carry a client token, so that trying it again creates nothing
    /// twice.
    async fn send<T, E, R, F, Fut>(&self, what: &str, request: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, SdkError<E, R>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        self.send_with(what, true, None, request).await
    }

    /// [`Api::send`], where a resource that is not found is not tried again when
    /// `not_found_is_late` is false (it is gone, not late), and where `stop`, asked each time
    /// the limiter lets the first try through, can call it off (a Canceled error: nothing sent).
    async fn send_with<T, E, R, F, Fut>(
        &self,
        what: &str,
        not_found_is_late: bool,
        stop: Option<&(dyn Fn() -> bool + Sync)>,
        mut request: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, SdkError<E, R>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        let mut wait = Duration::from_secs(1);
        let mut tries = 0;
        loop {
            tries += 1;
            self.limiter.acquire().await;
            // Only before the first try: a later one settles what the first may have done.
            if tries == 1 && stop.is_some_and(|stop| stop()) {
                return Err(Error::canceled(format!("EC2 {what}: called off")));
            }
            match request().await {
                Ok(out) => return Ok(out),
                Err(e) if worth_retrying(&e, not_found_is_late) && tries < TRIES => {
                    tracing::debug!(
                        what, tries, error = %DisplayErrorContext(&e),
                        "EC2 request tried again"
                    );
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(to_error(what, e)),
            }
        }
    }

    /// The instance type's vCPUs, memory and architectures; a type EC2 does not know is a
    /// Precondition error.
    pub(crate) async fn instance_type(&self, name: &str) -> Result<TypeInfo> {
        let unknown = || {
            Error::fatal(
                Kind::Precondition,
                format!("EC2 does not know the instance type {name:?}"),
            )
        };
        let out = self
            .send("DescribeInstanceTypes", || {
                self.client
                    .describe_instance_types()
                    .instance_types(InstanceType::from(name))
                    .send()
            })
            .await
            .map_err(|e| {
                if e.message().contains("InvalidInstanceType") {
                    unknown().caused_by(e)
                } else {
                    e
                }
            })?;
        let info = out
            .instance_types()
            .iter()
            .find(|t| t.instance_type().is_some_and(|t| t.as_str() == name))
            .ok_or_else(unknown)?;
        Ok(TypeInfo {
            vcpus: info
                .v_cpu_info()
                .and_then(|v| v.default_v_cpus())
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(0),
            memory_mib: info
                .memory_info()
                .and_then(|m| m.size_in_mib())
                .and_then(|m| u64::try_from(m).ok())
                .unwrap_or(0),
            architectures: info
                .processor_info()
                .map(|p| {
                    p.supported_architectures()
                        .iter()
                        .map(|a| a.as_str().to_string())
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// The newest available image of `owner` whose name matches `pattern`, for `arch`.
    pub(crate) async fn newest_image(
        &self,
        owner: &str,
        pattern: &str,
        arch: &str,
    ) -> Result<Image> {
        let out = self
            .send("DescribeImages", || {
                self.client
                    .describe_images()
                    .owners(owner)
                    .filters(filter("name", pattern))
                    .filters(filter("architecture", arch))
                    .filters(filter("state", "available"))
                    .send()
            })
            .await?;
        out.images()
            .iter()
            .filter(|i| i.image_id().is_some())
            .max_by(|a, b| a.creation_date().cmp(&b.creation_date()))
            .map(|i| Image {
                id: i.image_id().unwrap_or_default().to_string(),
                name: i.name().unwrap_or_default().to_string(),
                root_device: i.root_device_name().unwrap_or("/dev/xvda").to_string(),
            })
            .ok_or_else(|| {
                Error::fatal(
                    Kind::Precondition,
                    format!("no {arch} image of owner {owner} is named like {pattern:?}"),
                )
            })
    }

    /// The image of `id`.
    pub(crate) async fn image(&self, id: &str) -> Result<Image> {
        let out = self
            .send("DescribeImages", || {
                self.client.describe_images().image_ids(id).send()
            })
            .await?;
        out.images()
            .first()
            .map(|i| Image {
                id: id.to_string(),
                name: i.name().unwrap_or_default().to_string(),
                root_device: i.root_device_name().unwrap_or("/dev/xvda").to_string(),
            })
            .ok_or_else(|| Error::fatal(Kind::Precondition, format!("no image {id}")))
    }

    /// The VPC of `subnet`, or the default VPC.
    pub(crate) async fn vpc(&self, subnet: Option<&str>) -> Result<String> {
        let vpc = match subnet {
            Some(subnet) => self
                .send("DescribeSubnets", || {
                    self.client.describe_subnets().subnet_ids(subnet).send()
                })
                .await?
                .subnets()
                .first()
                .and_then(|s| s.vpc_id())
                .map(str::to_string),
            None => self
                .send("DescribeVpcs", || {
                    self.client
                        .describe_vpcs()
                        .filters(filter("isDefault", "true"))
                        .send()
                })
                .await?
                .vpcs()
                .first()
                .and_then(|v| v.vpc_id())
                .map(str::to_string),
        };
        vpc.ok_or_else(|| {
            Error::fatal(
                Kind::Precondition,
                match subnet {
                    Some(s) => format!("no subnet {s}"),
                    None => "no default VPC: name a subnet (--bigm.ec2-subnet)".to_string(),
                },
            )
        })
    }

    /// The id of the security group `name` in `vpc` (created when absent), which accepts UDP on
    /// `port` from `cidr` (the rule added when missing).
    pub(crate) async fn security_group(
        &self,
        name: &str,
        vpc: &str,
        port: u16,
        cidr: &str,
    ) -> Result<String> {
        let id = match self.find_security_group(name, vpc).await? {
            Some(id) => id,
            None => {
                let created = self
                    .send("CreateSecurityGroup", || {
                        self.client
                            .create_security_group()
                            .group_name(name)
                            .description(format!("bigmachine machines: QUIC on UDP port {port}"))
                            .vpc_id(vpc)
                            .send()
                    })
                    .await;
                match created {
                    Ok(out) => {
                        let id = out.group_id().unwrap_or_default().to_string();
                        tracing::info!(group = %id, %vpc, port, "created security group {name}");
                        id
                    }
                    // Another driver made it meanwhile.
                    Err(e) if e.message().contains("InvalidGroup.Duplicate") => {
                        self.find_security_group(name, vpc).await?.ok_or(e)?
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let rule = IpPermission::builder()
            .ip_protocol("udp")
            .from_port(i32::from(port))
            .to_port(i32::from(port))
            .ip_ranges(IpRange::builder().cidr_ip(cidr).build())
            .build();
        let authorized = self
            .send("AuthorizeSecurityGroupIngress", || {
                self.client
                    .authorize_security_group_ingress()
                    .group_id(&id)
                    .ip_permissions(rule.clone())
                    .send()
            })
            .await;
        match authorized {
            Ok(_) => Ok(id),
            Err(e) if e.message().contains("InvalidPermission.Duplicate") => Ok(id),
            Err(e) => Err(e),
        }
    }

    async fn find_security_group(&self, name: &str, vpc: &str) -> Result<Option<String>> {
        let found = self
            .send("DescribeSecurityGroups", || {
                self.client
                    .describe_security_groups()
                    .filters(filter("group-name", name))
                    .filters(filter("vpc-id", vpc))
                    .send()
            })
            .await?;
        Ok(found
            .security_groups()
            .first()
            .and_then(|g| g.group_id())
            .map(str::to_string))
    }

    /// Launches one instance, spot or on-demand, that terminates when it shuts down. `token`
    /// makes the request idempotent: tried again, it launches nothing more. `stop` calls the
    /// launch off while it waits for the limiter.
    pub(crate) async fn launch(
        &self,
        spec: &LaunchSpec<'_>,
        spot: bool,
        token: &str,
        stop: &(dyn Fn() -> bool + Sync),
    ) -> std::result::Result<Instance, LaunchFailure> {
        if spot {
            if let Some(left) = &self.spot_capacity {
                if left
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                    .is_err()
                {
                    return Err(LaunchFailure {
                        no_capacity: true,
                        refused: true,
                        error: Error::new(
                            Kind::Unavailable,
                            "EC2 RunInstances: InsufficientInstanceCapacity: no spot capacity \
                             left (test capacity)",
                        ),
                    });
                }
            }
        }
        let tags = TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .set_tags(Some(
                spec.tags
                    .iter()
                    .map(|(k, v)| Tag::builder().key(k).value(v).build())
                    .collect(),
            ))
            .build();
        let disk = BlockDeviceMapping::builder()
            .device_name(&spec.image.root_device)
            .ebs(
                EbsBlockDevice::builder()
                    .volume_size(i32::try_from(spec.disk_gib).unwrap_or(i32::MAX))
                    .volume_type(VolumeType::Gp3)
                    .delete_on_termination(true)
                    .build(),
            )
            .build();
        let market = InstanceMarketOptionsRequest::builder()
            .market_type(MarketType::Spot)
            .spot_options(
                SpotMarketOptions::builder()
                    .spot_instance_type(SpotInstanceType::OneTime)
                    .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                    .build(),
            )
            .build();
        let metadata = InstanceMetadataOptionsRequest::builder()
            .http_tokens(HttpTokensState::Required)
            .http_put_response_hop_limit(1)
            .build();
        let profile = spec.instance_profile.map(|p| {
            let b = IamInstanceProfileSpecification::builder();
            if p.starts_with("arn:") {
                b.arn(p)
            } else {
                b.name(p)
            }
            .build()
        });
        let what = if spot {
            "RunInstances (spot)"
        } else {
            "RunInstances (on-demand)"
        };
        let out = self
            .send_with(what, true, Some(stop), || {
                let mut run = self
                    .client
                    .run_instances()
                    .image_id(&spec.image.id)
                    .instance_type(InstanceType::from(spec.instance_type))
                    .min_count(1)
                    .max_count(1)
                    .user_data(spec.user_data.clone())
                    .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
                    .client_token(token)
                    // The launch data holds the instance's key: the metadata service answers
                    // only session requests from the instance itself (no SSRF, no containers).
                    .metadata_options(metadata.clone())
                    .tag_specifications(tags.clone())
                    .block_device_mappings(disk.clone())
                    .set_subnet_id(spec.subnet.map(str::to_string))
                    .set_security_group_ids(Some(spec.security_groups.to_vec()))
                    .set_iam_instance_profile(profile.clone())
                    .set_key_name(spec.key_name.map(str::to_string));
                if spot {
                    run = run.instance_market_options(market.clone());
                }
                run.send()
            })
            .await
            .map_err(|error| LaunchFailure {
                no_capacity: error.kind() == Kind::Unavailable,
                refused: matches!(
                    error.kind(),
                    Kind::Unavailable | Kind::Precondition | Kind::Canceled
                ),
                error,
            })?;
        out.instances()
            .first()
            .map(Instance::from_sdk)
            .ok_or_else(|| LaunchFailure {
                no_capacity: true,
                refused: true,
                error: Error::new(Kind::Unavailable, format!("EC2 {what} launched nothing")),
            })
    }

    /// The instances of `ids`, as EC2 describes them now.
    pub(crate) async fn describe(&self, ids: &[String]) -> Result<Vec<Instance>> {
        let out = self
            .send("DescribeInstances", || {
                self.client
                    .describe_instances()
                    .set_instance_ids(Some(ids.to_vec()))
                    .send()
            })
            .await?;
        Ok(out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .map(Instance::from_sdk)
            .collect())
    }

    /// The last panic the machine of instance `id` wrote to the instance's console (machines
    /// write each panic's record on stderr, which their unit sends to the console), if any.
    pub(crate) async fn console_panic(&self, id: &str) -> Result<Option<PanicRecord>> {
        // A gone instance not found is gone, not late: no retries.
        let out = self
            .send_with("GetConsoleOutput", false, None, || {
                self.client.get_console_output().instance_id(id).send()
            })
            .await?;
        let Some(encoded) = out.output() else {
            return Ok(None);
        };
        use base64::Engine;
        let console = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|e| Error::new(Kind::Invalid, format!("console output of {id}: {e}")))?;
        Ok(last_panic(&String::from_utf8_lossy(&console)))
    }

    /// Instances of the machines `names` (by their `bigmachine:machine` tag) that are not yet
    /// terminated: those launched by requests whose answers were lost.
    pub(crate) async fn find_by_machine(&self, names: &[String]) -> Result<Vec<String>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let out = self
            .send("DescribeInstances", || {
                self.client
                    .describe_instances()
                    .filters(
                        Filter::builder()
                            .name("tag:bigmachine:machine")
                            .set_values(Some(names.to_vec()))
                            .build(),
                    )
                    .filters(
                        Filter::builder()
                            .name("instance-state-name")
                            .values("pending")
                            .values("running")
                            .values("stopping")
                            .values("stopped")
                            .build(),
                    )
                    .send()
            })
            .await?;
        Ok(out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter_map(|i| i.instance_id().map(str::to_string))
            .collect())
    }

    /// Terminates the instances of `ids`; returns those EC2 did not report shutting down, and
    /// those it does not know. An id EC2 does not know fails a whole request, so a batch that
    /// fails so is terminated one by one. `fresh` says the instances were launched moments ago:
    /// then an unknown id is one EC2 does not show yet, and tried again.
    pub(crate) async fn terminate(&self, ids: &[String], fresh: bool) -> Result<Unterminated> {
        let mut left = Unterminated::default();
        for batch in ids.chunks(1000) {
            match self.terminate_batch(batch, fresh).await {
                Ok(mut r) => left.refused.append(&mut r),
                Err(e) if e.message().contains("InvalidInstanceID") && batch.len() > 1 => {
                    for id in batch {
                        match self.terminate_batch(std::slice::from_ref(id), fresh).await {
                            Ok(mut r) => left.refused.append(&mut r),
                            Err(e) if e.message().contains("InvalidInstanceID") => {
                                left.unknown.push(id.clone())
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) if e.message().contains("InvalidInstanceID") => {
                    left.unknown.extend(batch.iter().cloned())
                }
                Err(e) => return Err(e),
            }
        }
        Ok(left)
    }

    async fn terminate_batch(&self, batch: &[String], fresh: bool) -> Result<Vec<String>> {
        let out = self
            .send_with("TerminateInstances", fresh, None, || {
                self.client
                    .terminate_instances()
                    .set_instance_ids(Some(batch.to_vec()))
                    .send()
            })
            .await?;
        let going: Vec<&str> = out
            .terminating_instances()
            .iter()
            .filter(|c| {
                c.current_state().and_then(|s| s.name()).is_some_and(|n| {
                    matches!(
                        n,
                        InstanceStateName::ShuttingDown | InstanceStateName::Terminated
                    )
                })
            })
            .filter_map(|c| c.instance_id())
            .collect();
        Ok(batch
            .iter()
            .filter(|id| !going.contains(&id.as_str()))
            .cloned()
            .collect())
    }
}
