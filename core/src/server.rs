//! The server side of calls: accepts connections and streams on an endpoint and dispatches each
//! call to its service, concurrently.
//!
//! Each call runs in its own task. The task ends with a reply, or early when the caller goes away
//! (it reset or stopped the stream: the method's future is dropped and its context canceled) or
//! when the deadline the caller sent passes (the method's future is dropped and the reply is
//! [`Kind::DeadlineExceeded`]). A panicking method becomes a [`Severity::Fatal`] method error; the
//! server lives on. Malformed requests get an error reply, never a crash.
//!
//! [`Severity::Fatal`]: crate::Severity::Fatal

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bigmachine_quic::Endpoint;
use futures::FutureExt;
use quinn::{RecvStream, SendStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::codec::{self, Payload};
use crate::context::Context;
use crate::error::{Error, Kind};
use crate::fault::{ReplyFault, ReplyFaults};
use crate::service::{Failure, Outcome, Request, ServiceTable};
use crate::stream::{self, ByteStream};
use crate::supervisor_api::SUPERVISOR;
use crate::wire::{self, Status, REPLY_HEADER_LEN};

/// Limits and test hooks of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The largest argument accepted, in bytes; larger ones get a [`Kind::Invalid`] error.
    pub max_payload: u64,
    /// Faults to inject into the replies of user services (tests only).
    pub faults: Option<Arc<ReplyFaults>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_payload: crate::DEFAULT_MAX_PAYLOAD,
            faults: None,
        }
    }
}

/// Serves calls arriving at `endpoint` from the services in `table` until `shutdown` is canceled
/// or the endpoint closes. Connections whose peer lacks a certificate of the cluster never get
/// past the handshake.
pub async fn serve(
    endpoint: Endpoint,
    table: ServiceTable,
    config: ServerConfig,
    shutdown: CancellationToken,
) {
    let config = Arc::new(config);
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept_incoming() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        tokio::spawn(connection(
            incoming,
            table.clone(),
            config.clone(),
            shutdown.clone(),
        ));
    }
}

async fn connection(
    incoming: quinn::Incoming,
    table: ServiceTable,
    config: Arc<ServerConfig>,
    shutdown: CancellationToken,
) {
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!(error = %e, "refused a connection");
            return;
        }
    };
    let peer = conn.remote_address();
    loop {
        let (send, recv) = tokio::select! {
            _ = shutdown.cancelled() => return,
            stream = conn.accept_bi() => match stream {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::trace!(%peer, error = %e, "connection ended");
                    return;
                }
            },
        };
        tokio::spawn(call(send, recv, peer, table.clone(), config.clone()));
    }
}

async fn call(
    mut send: SendStream,
    mut recv: RecvStream,
    peer: SocketAddr,
    table: ServiceTable,
    config: Arc<ServerConfig>,
) {
    let arrived = Instant::now();
    let (header, method, arg) = match wire::read_request(&mut recv, config.max_payload).await {
        Ok(request) => request,
        Err(e) if e.kind() == Kind::Net => return, // the stream broke: nobody to answer
        Err(e) => {
            tracing::debug!(%peer, error = %e, "malformed request");
            reply(&mut send, Err(Failure::Server(e)), None).await;
            return;
        }
    };
    let Some((service_name, method_name)) = method.split_once('.') else {
        let e = Error::fatal(
            Kind::Invalid,
            format!("method {method:?} is not of the form Service.method"),
        );
        reply(&mut send, Err(Failure::Server(e)), None).await;
        return;
    };
    let faults = (service_name != SUPERVISOR)
        .then(|| config.faults.clone())
        .flatten();
    let Some(service) = table.get(service_name) else {
        let e = Error::fatal(
            Kind::NotSupported,
            format!("no service named {service_name} on this machine"),
        );
        reply(&mut send, Err(Failure::Server(e)), faults).await;
        return;
    };
    let deadline = header.timeout().map(|t| arrived + t);
    let ctx = Context::for_call(deadline, peer);
    let token = ctx.token().clone();
    let body = (header.flags & wire::FLAG_STREAM_ARG != 0).then(|| ByteStream::from_recv(recv));
    let request = Request {
        ctx,
        arg,
        arg_type: header.arg_type,
        reply_type: header.reply_type,
        body,
    };
    let handler = match service.dispatch(method_name, request) {
        Ok(handler) => handler,
        Err(e) => {
            reply(&mut send, Err(Failure::Server(e)), faults).await;
            return;
        }
    };
    let handler = AssertUnwindSafe(handler).catch_unwind().map(|r| {
        r.unwrap_or_else(|panic| Err(Failure::Method(Error::from_panic(&method, &*panic))))
    });
    let expired = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => futures::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        outcome = handler => outcome,
        _ = expired => Err(Failure::Server(Error::deadline_exceeded(
            &format!("{method} on the server"),
            header.timeout(),
        ))),
        _ = send.stopped() => {
            // The caller went away: the handler future is dropped here, which cancels it.
            token.cancel();
            tracing::trace!(%peer, %method, "caller went away; call canceled");
            return;
        }
    };
    match outcome {
        Ok(Outcome::Stream(stream)) => {
            let streamed = async {
                let header = wire::ReplyHeader {
                    status: Status::Stream,
                    payload_len: 0,
                };
                send.write_all(&header.encode()).await?;
                stream::write_frames(&mut send, stream).await
            };
            let streamed = match deadline {
                Some(d) => tokio::time::timeout_at(d, streamed)
                    .await
                    .unwrap_or_else(|_| Err(Error::deadline_exceeded(&method, header.timeout()))),
                None => streamed.await,
            };
            if let Err(e) = streamed {
                // The reader went away or the deadline passed; dropping the stream tells its
                // producer.
                tracing::debug!(%peer, %method, error = %e, "reply stream ended early");
                let _ = send.reset(3u32.into());
            }
        }
        Ok(Outcome::Archive(payload)) => reply(&mut send, Ok(payload), faults).await,
        Err(failure) => reply(&mut send, Err(failure), faults).await,
    }
}

/// Sends the outcome of a call, applying an injected fault if one is drawn.
async fn reply(
    send: &mut SendStream,
    outcome: Result<Payload, Failure>,
    faults: Option<Arc<ReplyFaults>>,
) {
    let (status, payload) = match outcome {
        Ok(payload) => (Status::Ok, Ok(payload)),
        Err(Failure::Method(e)) => (Status::MethodError, codec::encode(&e.to_wire())),
        Err(Failure::Server(e)) => (Status::ServerError, codec::encode(&e.to_wire())),
    };
    let payload = match payload {
        Ok(payload) => payload,
        Err(e) => {
            tracing::warn!(error = %e, "could not encode a reply");
            let _ = send.reset(1u32.into());
            return;
        }
    };
    let result = match faults.and_then(|f| f.draw()) {
        None => wire::write_reply(send, status, payload).await,
        Some(ReplyFault::Drop) => {
            let _ = send.reset(0u32.into());
            return;
        }
        Some(ReplyFault::Truncate) => {
            let header = wire::ReplyHeader {
                status,
                payload_len: payload.len() as u64,
            };
            let mut frame = header.encode().to_vec();
            frame.extend_from_slice(&payload);
            frame.truncate((REPLY_HEADER_LEN + payload.len()) / 2);
            async {
                send.write_all(&frame).await?;
                send.finish()?;
                Ok(())
            }
            .await
        }
    };
    if let Err(e) = result {
        tracing::trace!(error = %e, "reply not delivered");
    }
}
