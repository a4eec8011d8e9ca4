//! A token-bucket limit on requests to the EC2 API, shared by every request the system makes
//! (launches, the monitor's descriptions, terminations), so that a burst of failures cannot
//! turn into a burst of API calls.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// Allows `rate` requests a second on average, and up to `burst` at once after a quiet spell
/// (the generic cell rate algorithm: each request moves a theoretical arrival time one interval
/// on, and may go once it is within `burst - 1` intervals of it).
#[derive(Debug)]
pub(crate) struct Limiter {
    interval: Duration,
    burst: u32,
    arrival: Mutex<Instant>,
}

impl Limiter {
    /// A limiter of `rate` requests a second (at least one an hour), `burst` at once (at least
    /// one).
    pub(crate) fn new(rate: f64, burst: u32) -> Self {
        let rate = if rate.is_finite() {
            rate.max(1.0 / 3600.0)
        } else {
            1.0
        };
        Self {
            interval: Duration::from_secs_f64(1.0 / rate),
            burst: burst.max(1),
            arrival: Mutex::new(Instant::now()),
        }
    }

    /// Waits until a request may go.
    pub(crate) async fn acquire(&self) {
        let ready = {
            let mut arrival = self.arrival.lock().await;
            let now = Instant::now();
            let at = (*arrival).max(now);
            *arrival = at + self.interval;
            at.checked_sub(self.interval * (self.burst - 1))
                .map_or(now, |ready| ready.max(now))
        };
        tokio::time::sleep_until(ready).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_rate() {
        let limiter = Limiter::new(1.0, 2);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let t0 = Instant::now();
        let mut at = Vec::new();
        for _ in 0..6 {
            limiter.acquire().await;
            at.push((Instant::now() - t0).as_millis());
        }
        // Two at once, then one a second.
        assert_eq!(at, [0, 0, 1000, 2000, 3000, 4000]);
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_the_burst_plus_the_rate_in_any_window() {
        let limiter = std::sync::Arc::new(Limiter::new(20.0, 2));
        let t0 = Instant::now();
        let times = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let (limiter, times) = (limiter.clone(), times.clone());
                tokio::spawn(async move {
                    limiter.acquire().await;
                    times
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(Instant::now() - t0);
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        let mut times = times.lock().unwrap_or_else(|e| e.into_inner()).clone();
        times.sort();
        // 100 requests at 20/s after a burst of 2: the last at 98 × 50 ms.
        assert_eq!(times.last().copied(), Some(Duration::from_millis(4900)));
        for (i, t) in times.iter().enumerate() {
            let within_a_second = times[i..]
                .iter()
                .take_while(|u| **u < *t + Duration::from_secs(1))
                .count();
            assert!(
                within_a_second <= 22,
                "{within_a_second} requests in a second"
            );
        }
    }
}
