//! The engine of bigmachine: calls between a driver and its machines over QUIC, with rkyv
//! archives as arguments and replies.
//!
//! This crate owns the wire protocol, the codec, services and their dispatch, the lifecycle of
//! machines ([`B`], [`Machine`]), the [`System`] trait that kinds of machines implement, and the
//! error model. Users normally depend on the `bigmachine` facade, which re-exports what is here.
//!
//! # Layout
//!
//! - [`error`]: [`Error`] with its [`Kind`], [`Severity`] and cause chain, and their wire form.
//! - [`codec`]: [`Encode`]/[`Decode`] over rkyv, with validation of every received archive.
//! - [`buffers`]: reuse of large payload buffers (encode and receive into mapped memory).
//! - [`wire`]: the request and reply headers of a call stream.
//! - [`service`]: the [`Service`] trait, the registry filled by `#[service]`, [`Services`].
//! - [`server`]: accepting streams and dispatching calls concurrently.
//! - [`stream`]: [`ByteStream`]s as arguments and replies, and their framing.
//! - [`context`]: the [`Context`] of an incoming call (deadline, cancellation).
//! - [`call`]: the [`Call`] builder (deadlines, cancellation, retries).
//! - [`machine`]: [`Machine`] and its [`State`]s, boot and keepalive.
//! - [`keepalive`]: keepalive settings and bookkeeping.
//! - [`b`]: [`B`], the driver's (or a machine's) handle on the cluster, and [`Params`].
//! - [`binary`]: digests of binaries, and the chunk size of binary uploads.
//! - [`system`]: the [`System`] trait.
//! - [`supervisor_api`]: names and types of the Supervisor service every machine runs.
//! - [`fault`]: reply faults a server can inject, for tests.
#![deny(missing_docs)]

pub mod b;
pub mod binary;
pub mod buffers;
pub mod call;
pub mod codec;
pub mod context;
pub mod error;
pub mod fault;
pub mod keepalive;
pub mod machine;
pub mod server;
pub mod service;
pub mod stream;
pub mod supervisor_api;
pub mod system;
pub mod wire;

pub use b::{Builder, Params, B};
pub use call::{Call, Reply, RetryPolicy};
pub use codec::{Archived, Decode, Encode, FromPayload, Payload};
pub use context::Context;
pub use error::{Error, Kind, Result, Severity};
pub use keepalive::KeepaliveConfig;
pub use machine::{Machine, State};
pub use server::ServerConfig;
pub use service::{Service, ServiceTable, ServiceValue, Services};
pub use stream::{ByteSink, ByteStream};
pub use system::{Launched, System};

/// The default limit on a payload (argument or reply), in bytes: 1 GiB.
pub const DEFAULT_MAX_PAYLOAD: u64 = 1 << 30;

/// Items the `#[service]` macro expands to. Not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use futures::future::BoxFuture;
    pub use inventory;
    pub use std::sync::Arc;

    pub use crate::b::B;
    pub use crate::call::Call;
    pub use crate::codec::{type_tag, Decode, Encode, FromPayload, Payload};
    pub use crate::context::Context;
    pub use crate::error::{Error, Kind, Result};
    pub use crate::machine::Machine;
    pub use crate::service::{
        Failure, Handler, Outcome, Registration, Request, Service, ServiceValue,
    };
    pub use crate::stream::ByteStream;

    /// What a method may return: an archivable value or a byte stream.
    pub trait IntoReply {
        /// The type tag of the reply on the wire.
        fn tag() -> u64;
        /// The reply to send.
        fn into_outcome(self) -> Result<Outcome>;
    }

    impl<T: Encode> IntoReply for T {
        fn tag() -> u64 {
            type_tag::<T>()
        }

        fn into_outcome(self) -> Result<Outcome> {
            self.encode().map(Outcome::Archive)
        }
    }

    impl IntoReply for ByteStream {
        fn tag() -> u64 {
            type_tag::<Self>()
        }

        fn into_outcome(self) -> Result<Outcome> {
            Ok(Outcome::Stream(self))
        }
    }

    /// Takes the byte stream of a call whose method expects one (`expects`), or checks that
    /// none was sent.
    pub fn take_body(
        request: &mut Request,
        expects: bool,
        method: &str,
    ) -> Result<Option<ByteStream>> {
        match (request.body.take(), expects) {
            (Some(body), true) => Ok(Some(body)),
            (None, false) => Ok(None),
            (None, true) => Err(Error::fatal(
                Kind::Invalid,
                format!("{method} takes a byte stream; send one with Call::body"),
            )),
            (Some(_), false) => Err(Error::fatal(
                Kind::Invalid,
                format!("{method} takes no byte stream, but the call sent one"),
            )),
        }
    }

    /// Refuses a call whose argument or expected reply is not of the method's types.
    pub fn check_types<A: FromPayload, R: IntoReply>(
        request: &Request,
        type_name: &str,
        method: &str,
    ) -> Result<()> {
        let mismatch = |what: &str, expected: &str| {
            Err(Error::fatal(
                Kind::Invalid,
                format!("{type_name}::{method}: {what} type mismatch: the method's is {expected}"),
            ))
        };
        if request.arg_type != A::tag() {
            return mismatch("argument", std::any::type_name::<A>());
        }
        if request.reply_type != R::tag() {
            return mismatch("reply", std::any::type_name::<R>());
        }
        Ok(())
    }

    /// Builds a call's argument from its archive; a bad archive is the caller's fault.
    pub fn decode_arg<A: FromPayload>(request: &mut Request) -> Result<A, Failure> {
        A::from_payload(std::mem::take(&mut request.arg)).map_err(Failure::Server)
    }

    /// Turns a method's result into its reply.
    pub fn method_result<R: IntoReply>(result: Result<R>) -> Result<Outcome, Failure> {
        match result {
            Ok(reply) => reply.into_outcome().map_err(Failure::Method),
            Err(e) => Err(Failure::Method(e)),
        }
    }

    /// The error for an unknown method.
    pub fn no_such_method(type_name: &str, method: &str) -> Error {
        Error::fatal(
            Kind::NotSupported,
            format!("service {type_name} has no method {method:?}"),
        )
    }

    /// Rebuilds a service value from its archive.
    pub fn decode_value<S: Decode>(value: &Payload) -> Result<S> {
        S::decode(value)
    }
}
