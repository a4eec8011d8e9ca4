//! The keepalive watchdog: it fires once the latest keepalive's deadline passes without another.

use std::sync::Arc;
use std::time::Duration;

use bigmachine_core::__internal::from_now;
use tokio::sync::watch;
use tokio::time::Instant;

/// Holds the deadline set by the latest keepalive. [`Watchdog::expired`] completes once that
/// deadline passes without being extended.
#[derive(Debug, Clone)]
pub(crate) struct Watchdog {
    deadline: Arc<watch::Sender<Instant>>,
}

impl Watchdog {
    /// A watchdog that expires `grace` from now unless kept alive.
    pub(crate) fn new(grace: Duration) -> Self {
        Self {
            deadline: Arc::new(watch::Sender::new(from_now(grace))),
        }
    }

    /// Extends the deadline to `next` from now.
    pub(crate) fn keepalive(&self, next: Duration) {
        // `next` comes from the wire: any length is taken without overflow.
        self.deadline.send_replace(from_now(next));
    }

    /// The current deadline.
    pub(crate) fn deadline(&self) -> Instant {
        *self.deadline.borrow()
    }

    /// Completes when the deadline passes without a keepalive; returns how long the machine had
    /// been kept alive for by the last one.
    pub(crate) async fn expired(&self) {
        let mut rx = self.deadline.subscribe();
        loop {
            let deadline = *rx.borrow_and_update();
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    if *rx.borrow() <= Instant::now() {
                        return;
                    }
                }
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn expires_only_without_keepalives() {
        let w = Watchdog::new(Duration::from_secs(10));
        let expired = w.clone();
        let task = tokio::spawn(async move { expired.expired().await });
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(8)).await;
            assert!(!task.is_finished(), "kept alive, must not expire");
            w.keepalive(Duration::from_secs(10));
        }
        let before = Instant::now();
        let _ = task.await;
        assert_eq!(before.elapsed(), Duration::from_secs(10));
    }
}
