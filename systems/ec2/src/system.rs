//! [`Ec2System`]: machines are EC2 instances.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::timeout::TimeoutConfig;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use base64::Engine;
use bigmachine_core::{
    current_digest, Authority, Error, KeepaliveConfig, Kind, Launched, Result, System,
};
use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::api::{Api, Image, Instance, LaunchFailure, LaunchSpec, TypeInfo};
use crate::config::Ec2Config;
use crate::launch_data::LaunchData;
use crate::ledger::{Ledger, Remains};
use crate::monitor::{self, Monitor};
use crate::tags::{name_tag, tags};

/// Launch requests in flight at once (the limiter still spaces them).
const LAUNCHES_AT_ONCE: usize = 16;

/// The most user data EC2 takes, before base64.
const MAX_USER_DATA: usize = 16 << 10;

/// What every launch of this system shares, found once, before the first instance.
#[derive(Debug)]
struct Plan {
    instance_type: TypeInfo,
    image: Image,
    security_groups: Vec<String>,
}

#[derive(Debug)]
struct Inner {
    config: Ec2Config,
    api: Arc<Api>,
    plan: OnceCell<Plan>,
    monitor: Arc<Monitor>,
    monitoring: std::sync::Once,
    /// What this system launched, for shutdown.
    ledger: Mutex<Ledger>,
}

/// Machines as EC2 instances: spot by default, with on-demand for a shortfall; each instance
/// gets its own credentials in its launch data and runs the bootstrap, into which the driver
/// then uploads its binary. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Ec2System {
    inner: Arc<Inner>,
}

/// EC2's name of the architecture this binary runs on.
fn ec2_arch() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => Some("x86_64"),
        "aarch64" => Some("arm64"),
        _ => None,
    }
}

impl Ec2System {
    /// An EC2 system with `config`, on the AWS account, region and credentials the standard AWS
    /// resolution finds (environment, profile, instance role...), `config.region` first. Checks
    /// what it can without EC2; the instance type, image and security groups are checked before
    /// the first instance is launched.
    pub async fn new(config: Ec2Config) -> Result<Self> {
        config.check()?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        let sdk = loader.load().await;
        if sdk.region().is_none() {
            return Err(Error::fatal(
                Kind::Precondition,
                "no AWS region: set --bigm.ec2-region, AWS_REGION or a profile's region",
            ));
        }
        // Every request on the wire passes the system's limiter: no retries behind its back;
        // and none hangs for ever.
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(10))
            .operation_attempt_timeout(Duration::from_secs(60))
            .build();
        let ec2 = aws_sdk_ec2::config::Builder::from(&sdk)
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts)
            .build();
        let api = Api::new(
            aws_sdk_ec2::Client::from_conf(ec2),
            config.api_rate,
            config.api_burst,
            config.spot_capacity,
        );
        let monitor = Monitor::new(config.keepalive.period);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                api: Arc::new(api),
                plan: OnceCell::new(),
                monitor: Arc::new(monitor),
                monitoring: std::sync::Once::new(),
                ledger: Mutex::new(Ledger::default()),
            }),
        })
    }

    /// The settings the system runs with.
    pub fn config(&self) -> &Ec2Config {
        &self.inner.config
    }

    /// The instances this system launched so far (terminated ones included).
    pub fn instances(&self) -> Vec<String> {
        lock(&self.inner.ledger).instances().to_vec()
    }

    async fn plan(&self) -> Result<&Plan> {
        self.inner.plan.get_or_try_init(|| self.find_plan()).await
    }

    /// The instance type, the image and the security groups, checked: an unknown type, or one
    /// this binary cannot run on, fails here, before any instance is launched.
    async fn find_plan(&self) -> Result<Plan> {
        let config = &self.inner.config;
        let api = &self.inner.api;
        let precondition = |m: String| Error::fatal(Kind::Precondition, m);
        if std::env::consts::OS != "linux" {
            return Err(precondition(format!(
                "this driver runs on {}; EC2 machines run Linux, and run the driver's binary",
                std::env::consts::OS
            )));
        }
        let arch = ec2_arch().ok_or_else(|| {
            precondition(format!(
                "EC2 has no instances for this binary's architecture ({})",
                std::env::consts::ARCH
            ))
        })?;
        let instance_type = api.instance_type(&config.instance_type).await?;
        if !instance_type.architectures.iter().any(|a| a == arch) {
            return Err(precondition(format!(
                "instance type {} runs {:?}; this binary is built for {arch}",
                config.instance_type, instance_type.architectures
            )));
        }
        let image = match &config.ami {
            Some(id) => api.image(id).await?,
            None => {
                let pattern = config.ami_name.replace("{arch}", arch);
                api.newest_image(&config.ami_owner, &pattern, arch).await?
            }
        };
        let security_groups = if config.security_groups.is_empty() {
            let vpc = api.vpc(config.subnet.as_deref()).await?;
            let name = format!("bigmachine-udp-{}", config.port);
            vec![
                api.security_group(&name, &vpc, config.port, &config.ingress_cidr)
                    .await?,
            ]
        } else {
            config.security_groups.clone()
        };
        tracing::info!(
            instance_type = %config.instance_type, vcpus = instance_type.vcpus,
            memory_mib = instance_type.memory_mib, image = %image.id, image_name = %image.name,
            "EC2 machines planned"
        );
        Ok(Plan {
            instance_type,
            image,
            security_groups,
        })
    }

    /// Launches one instance for the machine `name`, spot unless `on_demand`.
    async fn launch_one(
        &self,
        plan: &Plan,
        authority: &Authority,
        name: &str,
        tag_name: &str,
        digest: &str,
        on_demand: bool,
    ) -> std::result::Result<Instance, LaunchFailure> {
        let config = &self.inner.config;
        let credentials = authority
            .issue(name)
            .map_err(|e| LaunchFailure::before_request(e.into()))?
            .to_pem();
        let data = LaunchData {
            credentials: &credentials,
            bootstrap_url: &config.bootstrap_url,
            bootstrap_sha256: &config.bootstrap_sha256,
            port: config.port,
            maxprocs: plan.instance_type.vcpus,
            keepalive_ms: u64::try_from(config.keepalive.timeout.as_millis()).unwrap_or(u64::MAX),
            immortal: config.immortal,
        };
        let user_data = data.user_data();
        if user_data.len() > MAX_USER_DATA {
            return Err(LaunchFailure::before_request(Error::fatal(
                Kind::Precondition,
                format!(
                    "the launch data is {} bytes; EC2 takes at most {MAX_USER_DATA} (a shorter \
                     bootstrap URL?)",
                    user_data.len()
                ),
            )));
        }
        let spec = LaunchSpec {
            image: &plan.image,
            instance_type: &config.instance_type,
            user_data: base64::engine::general_purpose::STANDARD.encode(user_data),
            subnet: config.subnet.as_deref(),
            security_groups: &plan.security_groups,
            instance_profile: config.instance_profile.as_deref(),
            key_name: config.key_name.as_deref(),
            tags: tags(tag_name.to_string(), digest, name, &config.tags),
            disk_gib: config.disk_gib,
        };
        // One token per machine and market: a request tried again launches nothing more.
        let token = format!("{name}-{}", if on_demand { "od" } else { "spot" });
        let shut = || lock(&self.inner.ledger).is_shut();
        self.inner
            .api
            .launch(&spec, !on_demand, &token, &shut)
            .await
    }

    /// Launches `n` instances, up to [`LAUNCHES_AT_ONCE`] requests at a time (the limiter
    /// spaces them): spot first (unless on-demand), on-demand for what spot cannot give (unless
    /// spot-only, when a shortfall is an error). On any failure, what was launched is terminated.
    /// Returns the machines' names and instances.
    async fn launch(&self, authority: &Authority, n: usize) -> Result<Vec<(String, Instance)>> {
        let config = &self.inner.config;
        let plan = self.plan().await?;
        let digest = tokio::task::spawn_blocking(current_digest)
            .await
            .map_err(|e| Error::new(Kind::Other, format!("digest task: {e}")))??;
        let binary = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
        let args: Vec<String> = std::env::args().skip(1).collect();
        let tag_name = name_tag(&user, &binary, digest, &args);
        let spot_gone = AtomicBool::new(config.on_demand);
        let outcomes: Vec<_> = futures::stream::iter(0..n)
            .map(|_| self.launch_machine(plan, authority, &tag_name, digest, &spot_gone))
            .buffer_unordered(LAUNCHES_AT_ONCE)
            .collect()
            .await;
        let (launched, failed): (Vec<_>, Vec<_>) = outcomes.into_iter().partition(|o| o.is_ok());
        let launched: Vec<(String, Instance)> = launched.into_iter().flatten().collect();
        let Some(first) = failed.into_iter().find_map(|o| o.err()) else {
            return Ok(launched);
        };
        let short = n - launched.len();
        let ids: Vec<String> = launched.iter().map(|(_, i)| i.id.clone()).collect();
        let cleaned = if self.terminate(&ids, true).await && self.terminate_unanswered().await {
            "terminated"
        } else {
            "NOT all terminated: see the log"
        };
        let what = if first.no_capacity && config.spot_only {
            format!(
                "spot-only: {short} of {n} instances could not be launched (the {} launched: \
                 {cleaned})",
                ids.len()
            )
        } else {
            format!(
                "launching EC2 instances: {short} of {n} failed (the {} launched: {cleaned})",
                ids.len()
            )
        };
        Err(Error::new(first.error.kind(), what).caused_by(first.error))
    }

    /// Launches one machine's instance: spot while spot has capacity (unless on-demand), then
    /// on demand (unless spot-only). The launch is in the ledger from before its request until
    /// EC2 answers.
    async fn launch_machine(
        &self,
        plan: &Plan,
        authority: &Authority,
        tag_name: &str,
        digest: &str,
        spot_gone: &AtomicBool,
    ) -> std::result::Result<(String, Instance), LaunchFailure> {
        let canceled =
            || LaunchFailure::before_request(Error::canceled("the EC2 system shut down"));
        let name = format!("m-{:012x}", fastrand::u64(..) >> 16);
        if !lock(&self.inner.ledger).open(&name) {
            return Err(canceled());
        }
        loop {
            let on_demand = spot_gone.load(Ordering::Acquire);
            let market = if on_demand { "on-demand" } else { "spot" };
            tracing::info!(machine = %name, market, "requesting an EC2 instance");
            match self
                .launch_one(plan, authority, &name, tag_name, digest, on_demand)
                .await
            {
                Ok(instance) => {
                    if !lock(&self.inner.ledger).launched(&name, &instance.id) {
                        // Shut down meanwhile, without seeing this instance.
                        self.terminate(std::slice::from_ref(&instance.id), true)
                            .await;
                        return Err(canceled());
                    }
                    tracing::info!(
                        machine = %name, instance = %instance.id, spot = instance.spot,
                        "instance launched"
                    );
                    return Ok((name, instance));
                }
                Err(f) if f.no_capacity && !on_demand && !self.inner.config.spot_only => {
                    if !spot_gone.swap(true, Ordering::AcqRel) {
                        tracing::warn!(
                            error = %f.error,
                            "no spot capacity; launching the rest on demand"
                        );
                    }
                }
                Err(f) => {
                    if f.refused {
                        lock(&self.inner.ledger).refused(&name);
                    }
                    return Err(f);
                }
            }
        }
    }

    /// Terminates the instances of launches whose answers were lost; returns whether it found
    /// and terminated all there were.
    async fn terminate_unanswered(&self) -> bool {
        let names = lock(&self.inner.ledger).open_launches();
        self.terminate_launches(&names).await
    }

    /// Finds the instances of the launches of `names` by their tags, and terminates them.
    async fn terminate_launches(&self, names: &[String]) -> bool {
        match self.inner.api.find_by_machine(names).await {
            Ok(ids) => self.terminate(&ids, true).await,
            Err(e) => {
                tracing::error!(
                    error = %e, machines = ?names,
                    "could not look for the instances of unanswered launches: look for instances \
                     tagged bigmachine:machine with these names and terminate them"
                );
                false
            }
        }
    }

    /// Waits until the instances are running (or gone); returns them as EC2 then describes them.
    async fn running(&self, launched: &[(String, Instance)]) -> Result<Vec<Instance>> {
        let ids: Vec<String> = launched.iter().map(|(_, i)| i.id.clone()).collect();
        let give_up = bigmachine_core::__internal::from_now(self.inner.config.launch_timeout);
        let mut reported = std::collections::HashSet::new();
        loop {
            let now = self.inner.api.describe(&ids).await?;
            let by_id: HashMap<&str, &Instance> = now.iter().map(|i| (i.id.as_str(), i)).collect();
            for (name, i) in launched {
                if let Some(state) = by_id.get(i.id.as_str()) {
                    if state.state == "running" && reported.insert(i.id.clone()) {
                        tracing::info!(
                            machine = %name, instance = %i.id,
                            "instance running; booting"
                        );
                    }
                }
            }
            let settled = ids.iter().all(|id| {
                by_id
                    .get(id.as_str())
                    .is_some_and(|i| i.state == "running" || i.is_gone())
            });
            if settled {
                return Ok(now);
            }
            if Instant::now() >= give_up {
                return Err(Error::new(
                    Kind::DeadlineExceeded,
                    format!(
                        "EC2 instances not running after {:?}",
                        self.inner.config.launch_timeout
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// The address the driver reaches an instance at.
    fn addr(&self, instance: &Instance) -> Option<SocketAddr> {
        let config = &self.inner.config;
        let addr = choose_addr(instance, config.private_addresses, config.port);
        if !config.private_addresses && instance.public_ip.is_none() && addr.is_some() {
            tracing::warn!(
                instance = %instance.id,
                "instance has no public address; reaching it at its private one (a driver inside \
                 the VPC says so with --bigm.ec2-private-addresses)"
            );
        }
        addr
    }

    /// Terminates `ids` (`fresh`: launched moments ago), reporting any EC2 did not terminate;
    /// returns whether all were.
    async fn terminate(&self, ids: &[String], fresh: bool) -> bool {
        if ids.is_empty() {
            return true;
        }
        match self.inner.api.terminate(ids, fresh).await {
            Ok(left) if left.is_empty() => {
                tracing::info!(instances = ids.len(), "EC2 instances terminated");
                true
            }
            Ok(left) => {
                if !left.refused.is_empty() {
                    tracing::error!(
                        refused = ?left.refused,
                        "EC2 did not terminate these instances: terminate them by hand"
                    );
                }
                if !left.unknown.is_empty() {
                    tracing::warn!(
                        unknown = ?left.unknown,
                        "EC2 does not know these instances (terminated long ago, or too new to \
                         show): check that none runs"
                    );
                }
                false
            }
            Err(e) => {
                tracing::error!(
                    error = %e, instances = ?ids,
                    "could not terminate EC2 instances: terminate them by hand"
                );
                false
            }
        }
    }

    /// Launches `n` instances and waits until they run; on any failure after a launch, the
    /// instances launched are terminated before the error is returned.
    async fn launch_running(
        &self,
        authority: &Authority,
        n: usize,
    ) -> Result<(Vec<(String, Instance)>, Vec<Instance>)> {
        let launched = self.launch(authority, n).await?;
        let running = match self.running(&launched).await {
            Ok(_) if lock(&self.inner.ledger).is_shut() => {
                // Shutdown terminated them meanwhile.
                return Err(Error::canceled("the EC2 system shut down while launching"));
            }
            running => running,
        };
        match running {
            Ok(now) => Ok((launched, now)),
            Err(e) => {
                let ids: Vec<String> = launched.iter().map(|(_, i)| i.id.clone()).collect();
                let cleaned = if self.terminate(&ids, true).await {
                    "terminated"
                } else {
                    "NOT all terminated: see the log"
                };
                Err(Error::new(
                    e.kind(),
                    format!("EC2 instances launched but not running ({cleaned})"),
                )
                .caused_by(e))
            }
        }
    }
}

/// Where the driver reaches `instance`: its private address in private-address mode (a driver
/// inside the VPC), else its public one, or its private one when it has no public one.
fn choose_addr(instance: &Instance, private: bool, port: u16) -> Option<SocketAddr> {
    let ip: IpAddr = if private {
        instance.private_ip?
    } else {
        instance.public_ip.or(instance.private_ip)?
    };
    Some(SocketAddr::new(ip, port))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl System for Ec2System {
    fn name(&self) -> &str {
        "ec2"
    }

    fn keepalive(&self) -> KeepaliveConfig {
        self.inner.config.keepalive
    }

    fn maxprocs(&self) -> usize {
        self.inner
            .plan
            .get()
            .map_or(0, |p| p.instance_type.vcpus as usize)
    }

    fn start<'a>(
        &'a self,
        authority: &'a Authority,
        n: usize,
    ) -> BoxFuture<'a, Result<Vec<Launched>>> {
        Box::pin(async move {
            self.inner.monitoring.call_once(|| {
                tokio::spawn(monitor::run(
                    self.inner.monitor.clone(),
                    self.inner.api.clone(),
                ));
            });
            if n == 0 {
                return Ok(Vec::new());
            }
            let (launched, now) = self.launch_running(authority, n).await?;
            let maxprocs = self.maxprocs();
            let mut machines = Vec::with_capacity(launched.len());
            for (name, first) in launched {
                let instance = now.iter().find(|i| i.id == first.id).unwrap_or(&first);
                let (addr, exited) = match self.addr(instance) {
                    Some(addr) if !instance.is_gone() => {
                        let ended = self.inner.monitor.watch(addr, &instance.id, &name);
                        let exited: BoxFuture<'static, Error> = Box::pin(async move {
                            ended.await.unwrap_or_else(|_| {
                                Error::new(Kind::Unavailable, "EC2 system shut down")
                            })
                        });
                        (addr, exited)
                    }
                    addr => {
                        // Gone before it ran (a spot instance taken back, say), or running with
                        // no address the driver can reach (then terminated: nothing could use
                        // it): Stopped at once.
                        if !instance.is_gone() {
                            self.terminate(std::slice::from_ref(&instance.id), true)
                                .await;
                        }
                        let why = if instance.is_gone() {
                            format!(
                                "the instance is {}{}",
                                instance.state,
                                instance
                                    .reason
                                    .as_deref()
                                    .map(|r| format!(" ({r})"))
                                    .unwrap_or_default()
                            )
                        } else {
                            "the instance has no address the driver can reach (terminated)".into()
                        };
                        let err = Error::new(
                            Kind::Unavailable,
                            format!("machine {name} on EC2 instance {}: {why}", instance.id),
                        );
                        let addr = addr.unwrap_or_else(|| {
                            SocketAddr::from(([0, 0, 0, 0], self.inner.config.port))
                        });
                        (
                            addr,
                            Box::pin(std::future::ready(err)) as BoxFuture<'static, Error>,
                        )
                    }
                };
                machines.push(Launched {
                    addr,
                    name,
                    maxprocs,
                    exited,
                    // The instances' output stays on them (their console, their logs).
                    drained: None,
                });
            }
            Ok(machines)
        })
    }

    fn keepalive_failed(&self, addr: SocketAddr) {
        self.inner.monitor.failed(addr);
    }

    /// Terminates every instance the system launched and reports any it could not.
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // A launch under way sees the ledger shut and terminates what it launches itself.
            let Remains { instances, open } = lock(&self.inner.ledger).shut();
            self.inner.monitor.stop();
            self.terminate(&instances, false).await;
            if !open.is_empty() {
                tracing::info!(
                    launches = open.len(),
                    "looking for the instances of launches EC2 did not answer"
                );
                self.terminate_launches(&open).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(private: Option<&str>, public: Option<&str>) -> Instance {
        Instance {
            id: "i-1".into(),
            state: "running".into(),
            reason: None,
            private_ip: private.and_then(|a| a.parse().ok()),
            public_ip: public.and_then(|a| a.parse().ok()),
            spot: true,
        }
    }

    #[test]
    fn addresses_are_private_inside_the_vpc_and_public_outside() {
        let both = instance(Some("10.0.0.5"), Some("54.1.2.3"));
        let at = |i: &Instance, private| choose_addr(i, private, 443).map(|a| a.to_string());
        assert_eq!(at(&both, true).as_deref(), Some("10.0.0.5:443"));
        assert_eq!(at(&both, false).as_deref(), Some("54.1.2.3:443"));
        let private_only = instance(Some("10.0.0.5"), None);
        assert_eq!(at(&private_only, false).as_deref(), Some("10.0.0.5:443"));
        let public_only = instance(None, Some("54.1.2.3"));
        assert_eq!(
            at(&public_only, true),
            None,
            "a private-mode driver needs a private address"
        );
        assert_eq!(at(&instance(None, None), false), None);
    }
}
