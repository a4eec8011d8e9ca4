//! This library: a driver and one local machine (another process of this binary).

use bigmachine::local::LocalSystem;
use bigmachine::{
    service, Archived, Blob, ByteStream, Context, Machine, Result, Services, State, B,
};

use crate::harness::{chunks, Payload, Peer};

/// The service the machine runs.
#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct Echo;

#[service]
impl Echo {
    async fn echo(&self, _ctx: &Context, msg: Vec<u8>) -> Result<Vec<u8>> {
        Ok(msg)
    }

    async fn take(&self, _ctx: &Context, data: Archived<Vec<u8>>) -> Result<u64> {
        Ok(data.len() as u64)
    }

    async fn give(&self, _ctx: &Context, n: u64) -> Result<Blob> {
        Ok(Blob::from(crate::harness::shared(n)))
    }

    async fn stream(&self, _ctx: &Context, n: u64) -> Result<ByteStream> {
        Ok(ByteStream::from_stream(futures::stream::iter(
            chunks(n).map(Ok),
        )))
    }

    async fn allocs(&self, _ctx: &Context, _arg: ()) -> Result<u64> {
        Ok(crate::alloc::count())
    }
}

/// The driver's side.
pub(crate) struct Client {
    b: B,
    machine: Machine,
    pid: u32,
}

impl Client {
    /// A driver and one machine; `metrics: false` starts the machine with its counting of
    /// calls turned off (`BIGMACHINE_METRICS=off`), to price it.
    pub(crate) async fn start(metrics: bool) -> Self {
        let mut system = LocalSystem::builder();
        if !metrics {
            system = system.env(bigmachine_supervisor::ENV_METRICS, "off");
        }
        if let Some(n) = crate::workers() {
            system = system.maxprocs(n);
        }
        let b = B::new(system.build()).unwrap_or_else(|e| panic!("driver: {e}"));
        let machine = b
            .start(1, Services::new().with("Echo", Echo))
            .await
            .unwrap_or_else(|e| panic!("start: {e}"))
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no machine"));
        let state = machine.wait(State::Running).await;
        assert_eq!(state, State::Running, "{:?}", machine.err());
        let pid = machine
            .info()
            .await
            .unwrap_or_else(|e| panic!("info: {e}"))
            .pid;
        Self { b, machine, pid }
    }

    /// Allocations made so far by the machine's process.
    async fn machine_allocs(&self) -> u64 {
        self.machine
            .call("Echo.allocs", &())
            .await
            .unwrap_or_else(|e| panic!("allocs: {e}"))
    }

    /// The machine process's allocations per sequential echo of `size` bytes, over `calls` calls
    /// (the count's own call is subtracted by counting one empty round first).
    pub(crate) async fn machine_allocs_per_echo(&self, calls: usize, size: usize) -> f64 {
        let a = self.machine_allocs().await;
        let b = self.machine_allocs().await;
        let msg = Payload::new(size);
        for _ in 0..calls {
            self.echo(&msg).await;
        }
        let c = self.machine_allocs().await;
        (c - b).saturating_sub(b - a) as f64 / calls as f64
    }

    pub(crate) async fn shutdown(self) {
        self.b.shutdown().await;
    }
}

impl Peer for Client {
    async fn echo(&self, msg: &Payload) -> usize {
        let reply: Vec<u8> = self
            .machine
            .call("Echo.echo", &msg.vec)
            .await
            .unwrap_or_else(|e| panic!("echo: {e}"));
        reply.len()
    }

    async fn put(&self, data: &Payload) -> u64 {
        // Sent from the shared buffer as it is, as the quinn floor sends it.
        self.machine
            .call("Echo.take", &Blob::from(data.bytes.clone()))
            .await
            .unwrap_or_else(|e| panic!("take: {e}"))
    }

    async fn get(&self, n: u64) -> u64 {
        let reply: Archived<Vec<u8>> = self
            .machine
            .call("Echo.give", &n)
            .await
            .unwrap_or_else(|e| panic!("give: {e}"));
        reply.len() as u64
    }

    async fn stream(&self, n: u64) -> Option<u64> {
        let mut s: ByteStream = self
            .machine
            .call("Echo.stream", &n)
            .await
            .unwrap_or_else(|e| panic!("stream: {e}"));
        let mut got = 0;
        while let Some(chunk) = s.next_chunk().await {
            got += chunk.unwrap_or_else(|e| panic!("stream: {e}")).len() as u64;
        }
        Some(got)
    }

    fn server_pid(&self) -> u32 {
        self.pid
    }
}
