//! Services: the [`Service`] trait the `#[service]` macro implements, the registry that lets a
//! machine rebuild a service from the value the driver sent, and [`Services`], the services to
//! install on new machines.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use std::panic::AssertUnwindSafe;

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::b::B;
use crate::codec::Payload;
use crate::context::Context;
use crate::error::{Error, Kind, Result};
use crate::stream::ByteStream;

/// One incoming call, as handed to [`Service::dispatch`].
#[derive(Debug)]
pub struct Request {
    /// The call's context.
    pub ctx: Context,
    /// The argument's archive (validated when the method decodes it).
    pub arg: Payload,
    /// Type tag of the argument the caller sent.
    pub arg_type: u64,
    /// Type tag of the reply the caller expects.
    pub reply_type: u64,
    /// The byte stream that follows the argument, if the caller sent one.
    pub body: Option<ByteStream>,
}

/// What a method produced: an archive, or a byte stream.
#[derive(Debug)]
pub enum Outcome {
    /// The reply's archive.
    Archive(Payload),
    /// A reply stream.
    Stream(ByteStream),
}

/// How a dispatched call failed: in the method itself, or in the engine around it. Method errors
/// reach the caller nested under [`Kind::Remote`]; engine errors keep their own kind.
#[derive(Debug)]
pub enum Failure {
    /// The method returned this error (or panicked).
    Method(Error),
    /// The call could not be run: bad argument, unknown method, deadline.
    Server(Error),
}

/// The future of one dispatched call: the reply, or how it failed.
pub type Handler = BoxFuture<'static, Result<Outcome, Failure>>;

/// A service installed on a machine. Implemented by `#[bigmachine::service]`; there is rarely a
/// reason to implement it by hand.
pub trait Service: Send + Sync + 'static {
    /// The registered type name of the service value.
    fn type_name(&self) -> &'static str;

    /// Starts the call of `method` (the part after the dot). Fails at once for an unknown
    /// method or mismatched argument or reply types.
    fn dispatch(self: Arc<Self>, method: &str, request: Request) -> Result<Handler>;
}

/// A value that can be installed as a service on a machine: it has a registered type name and
/// serializes to the archive the machine rebuilds it from. Implemented by `#[service]`, which also
/// registers the type.
pub trait ServiceValue: Send + 'static {
    /// The name under which the type is registered.
    const TYPE_NAME: &'static str;

    /// Serializes the value to send it to a machine.
    fn encode_value(&self) -> Result<Payload>;
}

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

    /// The registered type name.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    pub(crate) fn make(
        &self,
        value: Payload,
        b: B,
    ) -> BoxFuture<'static, Result<Arc<dyn Service>>> {
        (self.make)(value, b)
    }
}

inventory::collect!(Registration);

/// The registration of `type_name` in this binary, if any.
pub fn registration(type_name: &str) -> Option<&'static Registration> {
    inventory::iter::<Registration>
        .into_iter()
        .find(|r| r.type_name == type_name)
}

/// A service as sent to a machine: its name there, its registered type and its archived value.
#[derive(Debug, Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ServiceSpec {
    /// The name calls use: `"<name>.<method>"`.
    pub name: String,
    /// The registered type name.
    pub type_name: String,
    /// The value's archive.
    pub value: Vec<u8>,
}

/// The services to install on new machines, each under a name.
///
/// ```ignore
/// let services = Services::new().with("Echo", Echo).with("Counter", Counter::default());
/// ```
#[derive(Debug, Default, Clone)]
pub struct Services {
    specs: Vec<ServiceSpec>,
    error: Option<Error>,
}

impl Services {
    /// No services.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `value` under `name`. A value that fails to serialize makes [`B::start`] fail.
    pub fn with<S: ServiceValue>(mut self, name: impl Into<String>, value: S) -> Self {
        let name = name.into();
        match value.encode_value() {
            Ok(bytes) => self.specs.push(ServiceSpec {
                name,
                type_name: S::TYPE_NAME.to_string(),
                value: bytes.to_vec(),
            }),
            Err(e) => {
                self.error.get_or_insert(
                    Error::fatal(
                        Kind::Invalid,
                        format!("service {name}: cannot serialize {}", S::TYPE_NAME),
                    )
                    .caused_by(e),
                );
            }
        }
        self
    }

    /// Whether there are no services.
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty() && self.error.is_none()
    }

    /// The services, checked: every value serialized, every type registered in this binary
    /// (machines run the same binary, so a type unknown here is unknown there), names unique and
    /// free of dots.
    pub fn check(&self) -> Result<&[ServiceSpec]> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        for (i, spec) in self.specs.iter().enumerate() {
            if spec.name.is_empty() || spec.name.contains('.') {
                return Err(Error::fatal(
                    Kind::Invalid,
                    format!(
                        "service name {:?} must be non-empty and have no dot",
                        spec.name
                    ),
                ));
            }
            if self.specs[..i].iter().any(|s| s.name == spec.name) {
                return Err(Error::fatal(
                    Kind::Invalid,
                    format!("service name {:?} is used twice", spec.name),
                ));
            }
            if registration(&spec.type_name).is_none() {
                return Err(unregistered(&spec.type_name));
            }
        }
        Ok(&self.specs)
    }
}

pub(crate) fn unregistered(type_name: &str) -> Error {
    Error::fatal(
        Kind::NotSupported,
        format!("service type {type_name} is not registered (is its impl block marked #[bigmachine::service]?)"),
    )
}

/// The services a server dispatches to, by name.
#[derive(Clone, Default)]
pub struct ServiceTable {
    services: Arc<RwLock<HashMap<String, Arc<dyn Service>>>>,
}

impl fmt::Debug for ServiceTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let services = self.services.read().unwrap_or_else(|e| e.into_inner());
        f.debug_set().entries(services.keys()).finish()
    }
}

impl ServiceTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs `service` under `name`; a name can be installed once.
    pub fn insert(&self, name: &str, service: Arc<dyn Service>) -> Result<()> {
        let mut services = self.services.write().unwrap_or_else(|e| e.into_inner());
        if services.contains_key(name) {
            return Err(Error::fatal(
                Kind::Precondition,
                format!("a service named {name} is already installed"),
            ));
        }
        services.insert(name.to_string(), service);
        Ok(())
    }

    /// The service installed under `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Service>> {
        self.services
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Rebuilds the service described by `spec` (running its `init` with `b`) and installs it.
    pub async fn install(&self, spec: &ServiceSpec, b: B) -> Result<()> {
        let registration =
            registration(&spec.type_name).ok_or_else(|| unregistered(&spec.type_name))?;
        let mut value = Payload::with_capacity(spec.value.len());
        value.extend_from_slice(&spec.value);
        let service = AssertUnwindSafe(registration.make(value, b))
            .catch_unwind()
            .await
            .map_err(|panic| {
                Error::from_panic(
                    &format!("init of service {} ({})", spec.name, spec.type_name),
                    &*panic,
                )
            })??;
        self.insert(&spec.name, service)
    }
}
