//! tarpc with bincode over plain TCP (no TLS): what a Rust user reaches for first. It has no
//! streams, so its stream column is n/a.

use std::net::{Ipv4Addr, SocketAddr};

use bigmachine_quic::Credentials;
use futures::StreamExt;
use serde_bytes::ByteBuf;
use tarpc::serde_transport::tcp;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::{client, context};

use crate::harness::{Payload, Peer};
use crate::server;

/// The comparison's service in tarpc's terms.
#[tarpc::service]
trait Bench {
    /// Returns its argument.
    async fn echo(msg: ByteBuf) -> ByteBuf;
    /// Returns the argument's length.
    async fn take(data: ByteBuf) -> u64;
    /// Returns `n` bytes.
    async fn give(n: u64) -> ByteBuf;
}

#[derive(Clone)]
struct Server;

impl Bench for Server {
    async fn echo(self, _: context::Context, msg: ByteBuf) -> ByteBuf {
        msg
    }

    async fn take(self, _: context::Context, data: ByteBuf) -> u64 {
        data.len() as u64
    }

    async fn give(self, _: context::Context, n: u64) -> ByteBuf {
        ByteBuf::from(vec![0x5au8; n as usize])
    }
}

/// Serves until killed.
pub(crate) async fn serve() {
    let mut incoming = tcp::listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), Bincode::default)
        .await
        .unwrap_or_else(|e| panic!("listen: {e}"));
    incoming.config_mut().max_frame_length(usize::MAX);
    server::announce(incoming.local_addr());
    while let Some(transport) = incoming.next().await {
        let Ok(transport) = transport else { continue };
        tokio::spawn(
            BaseChannel::with_defaults(transport)
                .execute(Server.serve())
                .for_each(|call| async {
                    tokio::spawn(call);
                }),
        );
    }
}

/// One tarpc client over one TCP connection.
pub(crate) struct Client {
    client: BenchClient,
    prepared: std::sync::Mutex<Option<ByteBuf>>,
    _server: tokio::process::Child,
}

impl Client {
    pub(crate) async fn start(creds: &Credentials) -> Self {
        let (addr, child) = server::spawn("tarpc", creds).await;
        let mut connect = tcp::connect(addr, Bincode::default);
        connect.config_mut().max_frame_length(usize::MAX);
        let transport = connect.await.unwrap_or_else(|e| panic!("connect: {e}"));
        let client = BenchClient::new(client::Config::default(), transport).spawn();
        Self {
            client,
            prepared: std::sync::Mutex::default(),
            _server: child,
        }
    }
}

impl Peer for Client {
    async fn echo(&self, msg: &Payload) -> usize {
        self.client
            .echo(context::current(), ByteBuf::from(msg.vec.clone()))
            .await
            .unwrap_or_else(|e| panic!("echo: {e}"))
            .len()
    }

    fn prepare_put(&self, data: &Payload) {
        *self.prepared.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(ByteBuf::from(data.vec.clone()));
    }

    async fn put(&self, data: &Payload) -> u64 {
        let arg = self
            .prepared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let arg = arg.unwrap_or_else(|| ByteBuf::from(data.vec.clone()));
        self.client
            .take(context::current(), arg)
            .await
            .unwrap_or_else(|e| panic!("take: {e}"))
    }

    async fn get(&self, n: u64) -> u64 {
        self.client
            .give(context::current(), n)
            .await
            .unwrap_or_else(|e| panic!("give: {e}"))
            .len() as u64
    }

    async fn stream(&self, _n: u64) -> Option<u64> {
        None
    }

    fn server_pid(&self) -> u32 {
        self._server
            .id()
            .unwrap_or_else(|| panic!("the server exited"))
    }
}
