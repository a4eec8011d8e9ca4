//! Reply faults injected by a server, for tests of failure handling (the test system's
//! `faults` setting). A dropped reply resets the call's stream; a truncated reply ends it halfway.
//! Callers see both as [`crate::Kind::Net`] errors of [`crate::Severity::Temporary`] severity.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// What happens to one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyFault {
    /// The reply is never sent: the stream is reset.
    Drop,
    /// Half the reply is sent, then the stream ends.
    Truncate,
}

/// Faults applied to the replies of user services (never to the supervisor's, so machines stay
/// up), each with a probability, drawn from a seeded generator so a failing test can be replayed.
#[derive(Debug)]
pub struct ReplyFaults {
    drop: f64,
    truncate: f64,
    rng: Mutex<fastrand::Rng>,
    injected: AtomicU64,
}

impl ReplyFaults {
    /// Drops a reply with probability `drop`, truncates one with probability `truncate`.
    pub fn new(drop: f64, truncate: f64, seed: u64) -> Self {
        Self {
            drop: drop.clamp(0.0, 1.0),
            truncate: truncate.clamp(0.0, 1.0),
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            injected: AtomicU64::new(0),
        }
    }

    /// Draws the fate of the next reply.
    pub(crate) fn draw(&self) -> Option<ReplyFault> {
        let x = self.rng.lock().unwrap_or_else(|e| e.into_inner()).f64();
        let fault = if x < self.drop {
            Some(ReplyFault::Drop)
        } else if x < self.drop + self.truncate {
            Some(ReplyFault::Truncate)
        } else {
            None
        };
        if fault.is_some() {
            self.injected.fetch_add(1, Ordering::Relaxed);
        }
        fault
    }

    /// How many faults were injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }
}
