//! The π sampler shared by the bigpi example and the benches.

use bigmachine::{service, Context, Error, Result};

/// The service installed on every machine.
#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct CirclePi;

#[service(vis = pub(crate))]
impl CirclePi {
    /// Samples `n` random points of the unit square; returns how many fall inside the circle
    /// inscribed in it.
    async fn sample(&self, _ctx: &Context, n: u64) -> Result<u64> {
        tokio::task::spawn_blocking(move || sample(n))
            .await
            .map_err(Error::other)
    }
}

/// Samples `n` points on this thread.
pub(crate) fn sample(n: u64) -> u64 {
    let mut rng = fastrand::Rng::new();
    let mut inside = 0;
    for _ in 0..n {
        let (x, y) = (rng.f64() - 0.5, rng.f64() - 0.5);
        inside += u64::from(x * x + y * y <= 0.25);
    }
    inside
}

/// `n` split into `parts` shares that differ by at most one.
pub(crate) fn shares(n: u64, parts: usize) -> Vec<u64> {
    let parts = parts.max(1) as u64;
    (0..parts)
        .map(|i| n / parts + u64::from(i < n % parts))
        .collect()
}
