//! Services on the machine side: the [`Service`] trait the `#[service]` macro implements, the
//! incoming [`Request`] it dispatches, and the [`ServiceTable`] a server dispatches from.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::buffers::Payload;
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
    /// The reply's archive in two buffers sent as they are, one after the other: how a method's
    /// `Vec<u8>` goes out without a copy (its own buffer, then the archive's root).
    Parts(Bytes, Bytes),
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

    /// Checks, before any of a call's argument is read, that `method` exists and takes an
    /// argument of type tag `arg_type` (and a byte stream after it, if `body`) and replies with
    /// `reply_type`. The default accepts every call ([`Service::dispatch`] checks them again).
    fn accepts(&self, method: &str, arg_type: u64, reply_type: u64, body: bool) -> Result<()> {
        let _ = (method, arg_type, reply_type, body);
        Ok(())
    }

    /// Starts the call of `method` (the part after the dot). Fails at once for an unknown
    /// method or mismatched argument or reply types.
    fn dispatch(self: Arc<Self>, method: &str, request: Request) -> Result<Handler>;
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
}
