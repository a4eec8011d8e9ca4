//! Keeping machines alive: the settings, the bookkeeping (which takes time as an input and does
//! no I/O, so its rules are tested without waiting), and the driver's keepalive loop.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Kind, Result};
use crate::link::State;
use crate::machine::Machine;

/// How the driver keeps a machine alive, and how soon it gives up on one.
///
/// ```
/// # use std::time::Duration;
/// let mut keepalive = bigmachine_core::KeepaliveConfig::default();
/// keepalive.period = Duration::from_millis(200);
/// keepalive.timeout = Duration::from_secs(2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeepaliveConfig {
    /// Time between keepalive calls. Default: 10 s (each system sets its own).
    pub period: Duration,
    /// A machine that has not answered a keepalive for this long is Stopped. A machine that has
    /// not received one for this long plus a `period` and an `rpc_timeout` exits (so it never
    /// outlives its driver by more, and its driver, which gives up first, is the one that says
    /// why). Default: 60 s.
    pub timeout: Duration,
    /// Time allowed to each keepalive call. Default: 10 s.
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
pub(crate) const KEEPALIVE_REPLY_TIMES: usize = 10;

/// Keepalive bookkeeping for one machine: when it last answered, and its recent reply times.
#[derive(Debug, Clone)]
struct Tracker {
    timeout: Duration,
    last_ok: Instant,
    replies: VecDeque<Duration>,
}

impl Tracker {
    /// A tracker whose machine is deemed alive at `now`.
    fn new(timeout: Duration, now: Instant) -> Self {
        Self {
            timeout,
            last_ok: now,
            replies: VecDeque::with_capacity(KEEPALIVE_REPLY_TIMES),
        }
    }

    /// Records a reply to a keepalive sent at `sent` and received at `now`.
    fn on_reply(&mut self, sent: Instant, now: Instant) {
        self.last_ok = now;
        if self.replies.len() == KEEPALIVE_REPLY_TIMES {
            self.replies.pop_back();
        }
        self.replies.push_front(now.saturating_duration_since(sent));
    }

    /// When the machine is lost if it has not answered by then.
    fn deadline(&self) -> Instant {
        crate::deadline::saturating_after(self.last_ok, self.timeout)
    }

    /// Recent reply latencies, most recent first.
    fn reply_times(&self) -> Vec<Duration> {
        self.replies.iter().copied().collect()
    }
}

/// Keeps `machine` alive: keepalives (an owned machine) or pings (a dialed one) every period;
/// tells `failed` of every one that fails. Returns the error that ends the machine once it has
/// been silent for the timeout.
pub(crate) async fn keep_alive(
    machine: &Machine,
    cfg: KeepaliveConfig,
    owned: bool,
    failed: &(dyn Fn(SocketAddr) + Sync),
) -> Error {
    let supervisor = machine.supervisor();
    // The machine waits longer than the driver, so that the driver decides a machine is lost
    // (and says so) before the machine gives up and exits, which its system would report as a
    // mere exit.
    let window = cfg
        .timeout
        .saturating_add(cfg.period)
        .saturating_add(cfg.rpc_timeout);
    let next_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    // Panics of the machine the driver has heard of (a count that changes, up, or down for a
    // new process after an exec, means news), and whether it is asking for the last.
    let heard = Arc::new((AtomicU64::new(0), AtomicBool::new(false)));
    let send = || async {
        if owned {
            let call = supervisor.keepalive(&next_ms).internal();
            let reply = call.timeout(cfg.rpc_timeout).await?;
            if reply.panics != heard.0.load(Ordering::Relaxed)
                && !heard.1.swap(true, Ordering::AcqRel)
            {
                // Asked apart, so the keepalive's time and fate stay its own; best effort (the
                // next keepalive asks again).
                let (machine, heard) = (machine.clone(), heard.clone());
                tokio::spawn(async move {
                    let supervisor = machine.supervisor();
                    let last = supervisor.last_panic(&()).internal();
                    if let Ok(Some(panic)) = last.timeout(cfg.rpc_timeout).await {
                        tracing::warn!(machine = %machine.addr(), panic = %panic.summary(), "machine recorded a panic");
                        heard.0.store(panic.count, Ordering::Relaxed);
                        machine.set_last_panic(panic);
                    }
                    heard.1.store(false, Ordering::Release);
                });
            }
            Ok(())
        } else {
            let call = supervisor.ping(&0).internal();
            call.timeout(cfg.rpc_timeout).await.map(drop)
        }
    };
    let lost = run(
        cfg,
        &machine.addr().to_string(),
        send,
        |reply, next| match reply {
            Ok(times) => machine.kept_alive(Some(times), next),
            Err(e) => {
                // A booting machine refuses connections while it re-executes: expected, so
                // heard of only at debug level.
                if machine.link().state() == State::Running {
                    tracing::warn!(machine = %machine.addr(), error = %e, "keepalive failed");
                } else {
                    tracing::debug!(
                        machine = %machine.addr(), error = %e,
                        "keepalive failed while booting"
                    );
                }
                failed(machine.addr());
                machine.kept_alive(None, next);
            }
        },
        || machine.link().is_stopped(),
    )
    .await;
    match machine.last_panic() {
        // A machine lost with a panic on record: the panic may be why.
        Some(panic) if !machine.link().is_stopped() => {
            let mut named = Error::new(
                lost.kind(),
                format!(
                    "{}; the last panic it recorded: {}",
                    lost.message(),
                    panic.summary()
                ),
            )
            .with_severity(lost.severity());
            if let Some(cause) = lost.cause() {
                named = named.caused_by(cause.clone());
            }
            named
        }
        _ => lost,
    }
}

/// The keepalive loop: `send` every period, `report` after each try (the reply times when it
/// succeeded, its error when it failed, and when the next is due), until the machine has not
/// answered for the timeout (a try still waiting then is abandoned) or `stopped` says it was
/// stopped meanwhile.
async fn run<S, Fut>(
    cfg: KeepaliveConfig,
    name: &str,
    mut send: S,
    mut report: impl FnMut(std::result::Result<Vec<Duration>, &Error>, Instant),
    stopped: impl Fn() -> bool,
) -> Error
where
    S: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut tracker = Tracker::new(cfg.timeout, Instant::now());
    // The last failure, to name as the cause when the machine is lost.
    let mut last_failure: Option<Error> = None;
    let lost = |tracker: &Tracker, cause: Option<Error>| {
        let silent = Instant::now().saturating_duration_since(tracker.last_ok);
        let lost = Error::new(
            Kind::Unavailable,
            format!("machine {name} failed keepalives for {silent:?}"),
        );
        match cause {
            Some(cause) => lost.caused_by(cause),
            None => lost,
        }
    };
    loop {
        let sent = Instant::now();
        let deadline = tracker.deadline();
        // A try still waiting at the deadline is abandoned (one sent exactly at it, at once);
        // one sent past it (a period longer than the timeout) has its own time, and its
        // failure decides.
        let reply = if deadline >= sent {
            tokio::select! {
                reply = send() => reply,
                () = tokio::time::sleep_until(deadline) => return lost(&tracker, last_failure),
            }
        } else {
            send().await
        };
        let now = Instant::now();
        let next = crate::deadline::saturating_after(sent, cfg.period);
        match reply {
            Ok(()) => {
                tracker.on_reply(sent, now);
                last_failure = None;
                report(Ok(tracker.reply_times()), next);
            }
            // Stopped meanwhile (shut down, or lost): its reason is recorded; nothing to report.
            Err(e) if stopped() => return e,
            Err(e) if now >= tracker.deadline() => return lost(&tracker, Some(e)),
            Err(e) => {
                report(Err(&e), next);
                last_failure = Some(e);
            }
        }
        tokio::time::sleep_until(next).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn the_deadline_is_the_timeout_after_the_last_reply() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut k = Tracker::new(10 * s, t0);
        assert_eq!(k.deadline(), t0 + 10 * s);
        k.on_reply(t0 + 8 * s, t0 + 9 * s);
        assert_eq!(k.deadline(), t0 + 19 * s, "a reply resets the clock");
    }

    #[test]
    fn keeps_the_latest_reply_times_first() {
        let t0 = Instant::now();
        let mut k = Tracker::new(Duration::from_secs(1), t0);
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

    fn config() -> KeepaliveConfig {
        KeepaliveConfig {
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            rpc_timeout: Duration::from_millis(500),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_machine_is_lost_after_the_timeout_not_before() {
        // Answers the first three keepalives, then never again (each failure takes the rpc
        // timeout).
        let sent = AtomicU32::new(0);
        let started = Instant::now();
        let mut reports = 0;
        let err = run(
            config(),
            "m",
            || {
                let n = sent.fetch_add(1, Ordering::Relaxed);
                async move {
                    if n < 3 {
                        Ok(())
                    } else {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        Err(Error::temporary(Kind::DeadlineExceeded, "no reply"))
                    }
                }
            },
            |_, _| reports += 1,
            || false,
        )
        .await;
        assert_eq!(err.kind(), Kind::Unavailable);
        assert!(err.to_string().contains("failed keepalives"), "{err}");
        assert!(
            err.to_string().contains("no reply"),
            "the last failure is not named: {err}"
        );
        // Last reply at t=2 s: lost at 7 s exactly, during the try sent at 7 s (the tries
        // sent at 3, 4, 5 and 6 s failed, each reported).
        assert_eq!(started.elapsed(), Duration::from_millis(7000));
        assert_eq!(sent.load(Ordering::Relaxed), 8);
        assert_eq!(reports, 7, "every try but the abandoned one is reported");
    }

    /// Runs the loop for `within` against a machine that answers every keepalive at once;
    /// asserts it is never lost; returns how many keepalives were sent.
    async fn answered_throughout(cfg: KeepaliveConfig, within: Duration) -> u32 {
        let sent = AtomicU32::new(0);
        let lost = run(
            cfg,
            "m",
            || {
                sent.fetch_add(1, Ordering::Relaxed);
                async { Ok(()) }
            },
            |_, _| {},
            || false,
        );
        let outcome = tokio::time::timeout(within, lost).await;
        assert!(
            outcome.is_err(),
            "a machine answering every keepalive was lost"
        );
        sent.load(Ordering::Relaxed)
    }

    #[tokio::test(start_paused = true)]
    async fn a_period_longer_than_the_timeout_still_tries_before_giving_up() {
        let cfg = KeepaliveConfig {
            period: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            rpc_timeout: Duration::from_secs(1),
        };
        let sent = answered_throughout(cfg, Duration::from_secs(100)).await;
        assert!(sent >= 10, "{sent} keepalives in 100 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_machine_that_answers_is_kept_for_ever() {
        let sent = answered_throughout(config(), Duration::from_secs(3600)).await;
        // One a second; the one due at the hour itself may or may not go before the timeout.
        assert!(
            (3600..=3601).contains(&sent),
            "{sent} keepalives in an hour"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopped_machine_ends_the_loop_at_its_first_failure() {
        let started = Instant::now();
        let err = run(
            config(),
            "m",
            || async { Err(Error::canceled("machine shut down")) },
            |_, _| {},
            || true,
        )
        .await;
        assert_eq!(err.kind(), Kind::Canceled);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
