//! The registry of service types: the `#[service]` macro submits one [`Registration`] per type,
//! so that a machine can rebuild a service from the value the driver sent, by type name.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::b::B;
use crate::buffers::Payload;
use crate::error::{Error, Kind, Result};
use crate::service::{Service, ServiceTable};
use crate::services::ServiceSpec;

/// Rebuilds a service from its archive and runs its `init`.
pub type MakeService = fn(Payload, B) -> BoxFuture<'static, Result<Arc<dyn Service>>>;

/// A registered service type. The `#[service]` macro submits one per service type; a machine
/// looks the type up by name when the driver installs a service.
#[derive(Debug)]
pub struct Registration {
    type_name: &'static str,
    make: MakeService,
}

impl Registration {
    /// A registration of `type_name`, rebuilt by `make`.
    pub const fn new(type_name: &'static str, make: MakeService) -> Self {
        Self { type_name, make }
    }
}

inventory::collect!(Registration);

/// Fails unless every service's type is registered in this binary (machines run the same
/// binary, so a type unknown here is unknown there).
pub(crate) fn check_registered(specs: &[ServiceSpec]) -> Result<()> {
    match specs.iter().find(|s| registration(&s.type_name).is_none()) {
        Some(spec) => Err(unregistered(&spec.type_name)),
        None => Ok(()),
    }
}

/// The registration of `type_name` in this binary, if any.
fn registration(type_name: &str) -> Option<&'static Registration> {
    inventory::iter::<Registration>
        .into_iter()
        .find(|r| r.type_name == type_name)
}

fn unregistered(type_name: &str) -> Error {
    Error::fatal(
        Kind::NotSupported,
        format!("service type {type_name} is not registered (is its impl block marked #[bigmachine::service]?)"),
    )
}

/// Rebuilds the service `spec` describes and runs its `init` with `b`; a panic in `init` is a
/// [`crate::Severity::Fatal`] error.
async fn make(spec: &ServiceSpec, b: B) -> Result<Arc<dyn Service>> {
    let registration =
        registration(&spec.type_name).ok_or_else(|| unregistered(&spec.type_name))?;
    let mut value = Payload::with_capacity(spec.value.len());
    value.extend_from_slice(&spec.value);
    AssertUnwindSafe((registration.make)(value, b))
        .catch_unwind()
        .await
        .map_err(|panic| {
            Error::from_panic(
                &format!("init of service {} ({})", spec.name, spec.type_name),
                &*panic,
            )
        })?
}

/// Rebuilds the service `spec` describes (running its `init` with `b`) and installs it in
/// `table` under its name.
pub async fn install(table: &ServiceTable, spec: &ServiceSpec, b: B) -> Result<()> {
    let service = make(spec, b).await?;
    table.insert(&spec.name, service)
}
