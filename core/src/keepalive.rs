//! Keepalive settings and bookkeeping. The bookkeeping takes time as an input and does no I/O,
//! so its rules are tested without waiting.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// How the driver keeps a machine alive, and how soon it gives up on one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepaliveConfig {
    /// Time between keepalive calls.
    pub period: Duration,
    /// A machine that has not answered a keepalive for this long is Stopped; a machine that has
    /// not received one for this long exits (so it never outlives its driver by more).
    pub timeout: Duration,
    /// Time allowed to each keepalive call.
    pub rpc_timeout: Duration,
}

impl Default for KeepaliveConfig {
    fn default() -> Self {
        Self {
            period: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
            rpc_timeout: Duration::from_secs(10),
        }
    }
}

/// How many keepalive reply latencies a machine keeps.
pub const KEEPALIVE_REPLY_TIMES: usize = 10;

/// Keepalive bookkeeping for one machine: when it last answered, and its recent reply times.
#[derive(Debug, Clone)]
pub struct KeepaliveTracker {
    timeout: Duration,
    last_ok: Instant,
    replies: VecDeque<Duration>,
}

impl KeepaliveTracker {
    /// A tracker whose machine is deemed alive at `now`.
    pub fn new(timeout: Duration, now: Instant) -> Self {
        Self {
            timeout,
            last_ok: now,
            replies: VecDeque::with_capacity(KEEPALIVE_REPLY_TIMES),
        }
    }

    /// Records a reply to a keepalive sent at `sent` and received at `now`.
    pub fn on_reply(&mut self, sent: Instant, now: Instant) {
        self.last_ok = now;
        if self.replies.len() == KEEPALIVE_REPLY_TIMES {
            self.replies.pop_back();
        }
        self.replies.push_front(now.saturating_duration_since(sent));
    }

    /// After a failed keepalive at `now`: how long the machine has been silent, if that is at
    /// least the timeout (the machine is then lost).
    pub fn expired(&self, now: Instant) -> Option<Duration> {
        let silent = now.saturating_duration_since(self.last_ok);
        (silent >= self.timeout).then_some(silent)
    }

    /// Recent reply latencies, most recent first.
    pub fn reply_times(&self) -> Vec<Duration> {
        self.replies.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_only_after_the_timeout_of_silence() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut k = KeepaliveTracker::new(10 * s, t0);
        assert_eq!(k.expired(t0 + 9 * s), None);
        k.on_reply(t0 + 8 * s, t0 + 9 * s);
        assert_eq!(k.expired(t0 + 18 * s), None, "a reply resets the clock");
        assert_eq!(k.expired(t0 + 19 * s), Some(10 * s));
    }

    #[test]
    fn keeps_the_latest_reply_times_first() {
        let t0 = Instant::now();
        let mut k = KeepaliveTracker::new(Duration::from_secs(1), t0);
        for i in 0..(KEEPALIVE_REPLY_TIMES as u64 + 5) {
            k.on_reply(t0, t0 + Duration::from_millis(i));
        }
        let times = k.reply_times();
        assert_eq!(times.len(), KEEPALIVE_REPLY_TIMES);
        assert_eq!(
            times[0],
            Duration::from_millis(KEEPALIVE_REPLY_TIMES as u64 + 4)
        );
    }
}
