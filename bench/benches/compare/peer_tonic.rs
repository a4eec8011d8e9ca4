//! tonic gRPC over HTTP/2 with mutual TLS (rustls, ring) from the same authority: unary calls,
//! and server streaming for the stream workload. A pass-through `Bytes` codec stands in for
//! protobuf so the comparison measures the RPC stack, not message encoding.

use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use bigmachine_quic::{Authority, Credentials};
use bytes::{Buf, BufMut, Bytes};
use futures::{Stream, StreamExt};
use http::uri::PathAndQuery;
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{Grpc, NamedService, ServerStreamingService, UnaryService};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, ServerTlsConfig};
use tonic::{Request, Response, Status};

use crate::harness::{chunks, Payload, Peer};
use crate::server;

/// HTTP/2 flow-control windows as large as bigmachine's QUIC ones (8 MiB a stream, 32 MiB a
/// connection): the defaults (64 KiB) would make the bulk rows measure window stalls.
const WINDOW: u32 = 8 << 20;
const CONN_WINDOW: u32 = 32 << 20;

/// Messages are the bytes themselves.
#[derive(Debug, Clone, Copy, Default)]
struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        *self
    }

    fn decoder(&mut self) -> Self {
        *self
    }
}

impl Encoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    ::pem::encode(&::pem::Pem::new(label, der.to_vec()))
}

fn identity(c: &Credentials) -> Identity {
    Identity::from_pem(
        pem("CERTIFICATE", c.cert.as_ref()),
        pem("PRIVATE KEY", c.key.secret_der()),
    )
}

fn u64_of(b: &Bytes) -> u64 {
    u64::from_le_bytes(b.as_ref().try_into().unwrap_or_default())
}

/// A unary method as a plain function of the request's bytes.
struct Unary(fn(Bytes) -> Bytes);

impl UnaryService<Bytes> for Unary {
    type Response = Bytes;
    type Future = Ready<Result<Response<Bytes>, Status>>;

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        ready(Ok(Response::new((self.0)(req.into_inner()))))
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

/// Streams the requested number of bytes in 1 MiB messages.
struct Streamer;

impl ServerStreamingService<Bytes> for Streamer {
    type Response = Bytes;
    type ResponseStream = ChunkStream;
    type Future = Ready<Result<Response<ChunkStream>, Status>>;

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let n = u64_of(req.get_ref());
        let s = futures::stream::iter(chunks(n).map(Ok));
        ready(Ok(Response::new(Box::pin(s) as ChunkStream)))
    }
}

/// What `tonic-build` would generate for the service `bench.Echo`, written out.
#[derive(Debug, Clone, Copy)]
struct EchoServer;

impl NamedService for EchoServer {
    const NAME: &'static str = "bench.Echo";
}

impl tower_service::Service<http::Request<Body>> for EchoServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = Grpc::new(BytesCodec)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX);
            Ok(match req.uri().path() {
                "/bench.Echo/Echo" => grpc.unary(Unary(|b| b), req).await,
                "/bench.Echo/Put" => {
                    let put = |b: Bytes| Bytes::copy_from_slice(&(b.len() as u64).to_le_bytes());
                    grpc.unary(Unary(put), req).await
                }
                "/bench.Echo/Get" => {
                    let get = |b: Bytes| crate::harness::shared(u64_of(&b));
                    grpc.unary(Unary(get), req).await
                }
                "/bench.Echo/Stream" => grpc.server_streaming(Streamer, req).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// Serves until killed.
pub(crate) async fn serve() {
    let creds = server::credentials();
    let incoming =
        tonic::transport::server::TcpIncoming::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .unwrap_or_else(|e| panic!("bind: {e}"))
            .with_nodelay(Some(true));
    server::announce(incoming.local_addr().unwrap_or_else(|e| panic!("{e}")));
    let tls = ServerTlsConfig::new()
        .identity(identity(&creds))
        .client_ca_root(Certificate::from_pem(pem("CERTIFICATE", creds.ca.as_ref())));
    tonic::transport::Server::builder()
        .initial_stream_window_size(Some(WINDOW))
        .initial_connection_window_size(Some(CONN_WINDOW))
        .tls_config(tls)
        .unwrap_or_else(|e| panic!("tls: {e}"))
        .add_service(EchoServer)
        .serve_with_incoming(incoming)
        .await
        .unwrap_or_else(|e| panic!("serve: {e}"));
}

/// One HTTP/2 channel to the server.
pub(crate) struct Client {
    grpc: tonic::client::Grpc<Channel>,
    _server: tokio::process::Child,
}

impl Client {
    pub(crate) async fn start(ca: &Authority, creds: &Credentials) -> Self {
        let (addr, child) = server::spawn("tonic", creds).await;
        let me = ca.issue("client").unwrap_or_else(|e| panic!("{e}"));
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(pem("CERTIFICATE", me.ca.as_ref())))
            .identity(identity(&me))
            .domain_name(bigmachine_quic::SERVER_NAME);
        let channel = Channel::from_shared(format!("https://{addr}"))
            .unwrap_or_else(|e| panic!("uri: {e}"))
            .tls_config(tls)
            .unwrap_or_else(|e| panic!("tls: {e}"))
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(WINDOW))
            .initial_connection_window_size(Some(CONN_WINDOW))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        let grpc = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        Self {
            grpc,
            _server: child,
        }
    }

    async fn unary(&self, path: &'static str, arg: Bytes) -> Bytes {
        let mut grpc = self.grpc.clone();
        grpc.ready().await.unwrap_or_else(|e| panic!("ready: {e}"));
        grpc.unary(
            Request::new(arg),
            PathAndQuery::from_static(path),
            BytesCodec,
        )
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .into_inner()
    }
}

impl Peer for Client {
    async fn echo(&self, msg: &Payload) -> usize {
        self.unary("/bench.Echo/Echo", msg.bytes.clone())
            .await
            .len()
    }

    async fn put(&self, data: &Payload) -> u64 {
        u64_of(&self.unary("/bench.Echo/Put", data.bytes.clone()).await)
    }

    async fn get(&self, n: u64) -> u64 {
        let arg = Bytes::copy_from_slice(&n.to_le_bytes());
        self.unary("/bench.Echo/Get", arg).await.len() as u64
    }

    async fn stream(&self, n: u64) -> Option<u64> {
        let mut grpc = self.grpc.clone();
        grpc.ready().await.unwrap_or_else(|e| panic!("ready: {e}"));
        let arg = Bytes::copy_from_slice(&n.to_le_bytes());
        let mut s = grpc
            .server_streaming(
                Request::new(arg),
                PathAndQuery::from_static("/bench.Echo/Stream"),
                BytesCodec,
            )
            .await
            .unwrap_or_else(|e| panic!("stream: {e}"))
            .into_inner();
        let mut got = 0;
        while let Some(chunk) = s.next().await {
            got += chunk.unwrap_or_else(|e| panic!("stream: {e}")).len() as u64;
        }
        Some(got)
    }

    fn server_pid(&self) -> u32 {
        self._server
            .id()
            .unwrap_or_else(|| panic!("the server exited"))
    }
}
