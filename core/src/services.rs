//! [`Services`]: the services to install on new machines, each a value of a registered type
//! ([`ServiceValue`]) sent to the machine as an archive.

use crate::buffers::Payload;
use crate::error::{Error, Kind, Result};

/// A value that can be installed as a service on a machine: it has a registered type name and
/// serializes to the archive the machine rebuilds it from. Implemented by `#[service]`, which also
/// registers the type.
pub trait ServiceValue: Send + 'static {
    /// The name under which the type is registered.
    const TYPE_NAME: &'static str;

    /// Serializes the value to send it to a machine.
    fn encode_value(&self) -> Result<Payload>;
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

    /// Adds `value` under `name`. A value that fails to serialize makes [`crate::B::start`]
    /// fail.
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

    /// The services, checked: every value serialized, names unique and free of dots. (Whether
    /// their types are registered is the registry's to say.)
    pub(crate) fn check(&self) -> Result<&[ServiceSpec]> {
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
        }
        Ok(&self.specs)
    }
}
