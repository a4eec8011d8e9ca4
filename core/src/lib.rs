//! The engine of bigmachine: calls between a driver and its machines over QUIC, with rkyv
//! archives as arguments and replies.
//!
//! This crate owns the wire protocol, the codec, services and their dispatch, the lifecycle of
//! machines ([`B`], [`Machine`]), the [`System`] trait that kinds of machines implement, and the
//! error model. Users depend on the `bigmachine` facade, which re-exports what they need; the
//! `__internal` module serves bigmachine's own crates and carries no stability promise.
//!
//! # Layout
//!
//! Bytes, from the wire up:
//! - `error`: [`Error`] with its [`Kind`], [`Severity`] and cause chain.
//! - `buffers`: [`Payload`]s, and the reuse of large payload buffers.
//! - `codec`: [`Encode`]/[`Decode`] over rkyv, validation of every received archive,
//!   [`Archived`] views, type tags, the account of copies.
//! - `wire`: every byte a call puts on a stream (headers, method names, reply-stream frames,
//!   error archives, reset codes), as encoders and decoders that do no I/O.
//! - `io`: thin loops moving those frames over quinn streams.
//! - `stream`: [`ByteStream`] and [`ByteSink`]; `blob`: [`Blob`], bytes sent as they are;
//!   `files`: files read into and written from streams ([`FileIo`], [`FileWriter`]), through
//!   tokio or, when asked, io_uring.
//!
//! Calls, the driver's side:
//! - `link`: what a call needs of a machine (address, pool, [`State`]).
//! - `call`: the [`Call`] builder, one request/reply exchange, retries ([`RetryPolicy`]).
//! - `machine`: the [`Machine`] handle.
//! - `supervisor`: the Supervisor service every machine runs, declared as a trait, with the
//!   figures machines report ([`Info`], [`MemInfo`], [`DiskInfo`], [`LoadInfo`]).
//! - `boot` and `provision`: booting an owned machine, and getting its binary onto it;
//!   `boot_timeouts`: [`BootTimeouts`], the bounds of its steps.
//! - `keepalive`: [`KeepaliveConfig`], and the loop that keeps machines alive.
//! - `deadline`: instants after durations of any length, without overflow, and work raced
//!   against a deadline and a stop signal; `text`: text cut
//!   to a length on a character boundary.
//! - `life`: the task that follows a machine from boot to Stopped.
//! - `b`: [`B`] and its [`Builder`]; `start`: [`B::start`], [`B::dial`] and [`Params`].
//! - `system`: the [`System`] trait and [`Launched`].
//!
//! Services, the machine's side:
//! - `services`: [`Services`] to install and [`ServiceValue`].
//! - `registry`: service types registered by `#[service]`, rebuilt by name on machines.
//! - `service`: the `Service` trait (implemented by `#[service]`) and the table a server
//!   dispatches from.
//! - `context`: the [`Context`] of an incoming call.
//! - `server`: accepting connections (bounded before authentication) and streams, deciding
//!   from a call's head who may call what ([`Identity`], [`Kind::NotAllowed`]), granting large
//!   arguments room, and running calls concurrently, with deadlines.
//! - `budget`: the budgets of request bytes (per connection, per machine) large arguments
//!   draw on.
//! - `outcomes`: the outcomes kept of exactly-once calls ([`OutcomeLimits`]).
//! - `fault`: [`ReplyFaults`] a server injects, for tests.
//! - `binary`: digests of binaries, of open files; `private_dir`: the directories (binary
//!   store, digest cache) only this user may write.
#![deny(missing_docs)]
// The few `unsafe` blocks (system calls, one validated archive) each say why they are sound.
#![deny(clippy::undocumented_unsafe_blocks)]

mod b;
mod binary;
mod blob;
mod boot;
mod boot_timeouts;
mod budget;
mod buffers;
mod call;
mod codec;
mod context;
mod deadline;
mod error;
mod fault;
mod files;
mod io;
mod keepalive;
mod life;
mod link;
mod machine;
mod metrics;
mod mux;
mod outcomes;
mod private_dir;
mod provision;
mod registry;
mod server;
mod service;
mod services;
mod start;
mod stream;
mod supervisor;
mod system;
mod text;
mod wire;

pub use b::{Builder, B};
pub use bigmachine_quic::{Authority, Congestion, Credentials, Identity, Role, TransportConfig};
pub use binary::{current_digest, digest_bytes, digest_file, running_binary};
pub use blob::Blob;
pub use boot_timeouts::BootTimeouts;
pub use buffers::{pool_limit, pooled_bytes, set_pool_limit, Payload, DEFAULT_POOL_LIMIT};
pub use call::{Call, Reply, RetryPolicy};
pub use codec::{bytes_copied, Archived, Decode, Encode, EncodeAs, Encoded, FromPayload};
pub use context::Context;
pub use error::{Error, Kind, Result, Severity};
pub use fault::{ReplyFault, ReplyFaults};
pub use files::{uring_available, FileIo, FileWriter, ENV_FILE_IO};
pub use keepalive::KeepaliveConfig;
pub use link::State;
pub use machine::Machine;
pub use metrics::{MetricFamily, MetricKind, Metrics, Series, Snapshot};
pub use outcomes::OutcomeLimits;
pub use services::{ServiceValue, Services};
pub use start::Params;
pub use stream::{ByteSink, ByteStream};
pub use supervisor::{DiskInfo, Info, LoadInfo, MachinePanic, MemInfo};
pub use system::{Launched, System};

/// The default limit on a payload (argument or reply), in bytes: 1 GiB.
pub const DEFAULT_MAX_PAYLOAD: u64 = 1 << 30;

/// What bigmachine's own crates (the supervisor, the systems, tests, benches and fuzz targets)
/// use of this one. Not a stable API.
#[doc(hidden)]
pub mod __internal {
    pub use crate::b::machine_b;
    pub use crate::binary::{cached_digest, cached_digest_of, Digester};
    pub use crate::buffers::PayloadWriter;
    pub use crate::call::Response;
    pub use crate::codec::{decode, encode, type_tag};
    pub use crate::deadline::{from_now, saturating_after};
    pub use crate::private_dir::{current_uid, private_dir};
    pub use crate::registry::{install, MakeService, Registration};
    pub use crate::server::{serve, ServerConfig};
    pub use crate::service::{Failure, Handler, Outcome, Request, ServiceTable};
    pub use crate::services::ServiceSpec;
    pub use crate::supervisor::{
        Expvar, FetchBinary, KeepaliveReply, Supervisor, SupervisorClient, SupervisorServer,
        SUPERVISOR,
    };
    pub use crate::text::{prefix, shortened};

    /// The wire format (see the crate's `wire` module), for fuzzing and hostile-input tests.
    pub mod wire {
        pub use crate::wire::*;
    }

    /// The wire over quinn streams, for hostile-input tests.
    pub mod io {
        pub use crate::io::read_reply;
    }
}

/// Items the `#[service]` macro expands to. Not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use futures::future::BoxFuture;
    pub use inventory;
    pub use std::sync::Arc;

    pub use crate::b::B;
    pub use crate::buffers::Payload;
    pub use crate::call::Call;
    pub use crate::codec::{sent_as, type_tag, Decode, Encode, EncodeAs, Encoded, FromPayload};
    pub use crate::context::Context;
    pub use crate::error::{Error, Kind, Result};
    pub use crate::machine::Machine;
    pub use crate::registry::Registration;
    pub use crate::service::{Failure, Handler, Outcome, Request, Service};
    pub use crate::services::ServiceValue;
    pub use crate::stream::ByteStream;

    /// What a method may return: an archivable value or a byte stream.
    pub trait IntoReply {
        /// The type tag of the reply on the wire.
        fn tag() -> u64;
        /// The reply to send.
        fn into_outcome(self) -> Result<Outcome>;
    }

    impl<T: Encode + 'static> IntoReply for T {
        fn tag() -> u64 {
            T::sent_tag()
        }

        fn into_outcome(self) -> Result<Outcome> {
            if std::any::TypeId::of::<T>() == std::any::TypeId::of::<Vec<u8>>() {
                let mut value = Some(self);
                let bytes = (&mut value as &mut dyn std::any::Any)
                    .downcast_mut::<Option<Vec<u8>>>()
                    .and_then(Option::take)
                    .unwrap_or_default();
                return byte_vec_outcome(bytes);
            }
            Ok(match self.encode_parts()? {
                Encoded::Whole(archive) => Outcome::Archive(archive),
                Encoded::Parts(body, tail) => Outcome::Parts(body, tail),
            })
        }
    }

    /// A `Vec<u8>` reply: a long one goes out as a [`crate::Blob`] (its own buffer, then the
    /// archive's root), without a copy; a short one is archived like any value.
    fn byte_vec_outcome(mut bytes: Vec<u8>) -> Result<Outcome> {
        if bytes.len() < crate::codec::OWNED_BYTES_MIN {
            return bytes.encode().map(Outcome::Archive);
        }
        // No spare room held past the reply (an exactly-once call keeps it, counted by its
        // length); shrinking a large buffer remaps it rather than copying it.
        bytes.shrink_to_fit();
        crate::blob::Blob::from(bytes).into_outcome()
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

    /// Refuses, from its header, a call whose types or byte stream are not the method's:
    /// `body` says whether the call sends a byte stream, `expects` whether the method takes one.
    pub fn check_call<A: FromPayload, R: IntoReply>(
        (arg_type, reply_type): (u64, u64),
        (body, expects): (bool, bool),
        type_name: &str,
        method: &str,
    ) -> Result<()> {
        check_tags::<A, R>(arg_type, reply_type, type_name, method)?;
        match (body, expects) {
            (false, true) => Err(Error::fatal(
                Kind::Invalid,
                format!("{method} takes a byte stream; send one with Call::body"),
            )),
            (true, false) => Err(Error::fatal(
                Kind::Invalid,
                format!("{method} takes no byte stream, but the call sent one"),
            )),
            _ => Ok(()),
        }
    }

    /// Refuses a call whose argument or expected reply is not of the method's types.
    pub fn check_types<A: FromPayload, R: IntoReply>(
        request: &Request,
        type_name: &str,
        method: &str,
    ) -> Result<()> {
        check_tags::<A, R>(request.arg_type, request.reply_type, type_name, method)
    }

    fn check_tags<A: FromPayload, R: IntoReply>(
        arg_type: u64,
        reply_type: u64,
        type_name: &str,
        method: &str,
    ) -> Result<()> {
        let mismatch = |what: &str, expected: &str| {
            Err(Error::fatal(
                Kind::Invalid,
                format!("{type_name}::{method}: {what} type mismatch: the method's is {expected}"),
            ))
        };
        if arg_type != A::tag() {
            return mismatch("argument", std::any::type_name::<A>());
        }
        if reply_type != R::tag() {
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

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_long_byte_vec_reply_is_sent_from_its_own_buffer() -> Result<()> {
            let bytes = vec![9u8; crate::codec::OWNED_BYTES_MIN];
            let at = bytes.as_ptr();
            match bytes.into_outcome()? {
                Outcome::Parts(payload, root) => {
                    assert_eq!(payload.as_ptr(), at, "the vector's buffer was copied");
                    assert_eq!(
                        payload.len() + root.len(),
                        crate::codec::OWNED_BYTES_MIN + 8
                    );
                }
                other => panic!("a long vector became {other:?}"),
            }
            // A blob goes as it is, whatever its length.
            let shared = bytes::Bytes::from(vec![4u8; 10]);
            match crate::blob::Blob::from(shared.clone()).into_outcome()? {
                Outcome::Parts(payload, root) => {
                    assert_eq!(payload.as_ptr(), shared.as_ptr(), "the blob was copied");
                    assert_eq!(root.len(), 2 + 8);
                }
                other => panic!("a blob became {other:?}"),
            }
            // Short vectors, and other types, are archived as usual.
            assert!(matches!(
                vec![1u8; 100].into_outcome()?,
                Outcome::Archive(_)
            ));
            assert!(matches!(7u64.into_outcome()?, Outcome::Archive(_)));
            Ok(())
        }
    }
}
