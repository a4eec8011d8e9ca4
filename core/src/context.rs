//! The context a method runs in: its deadline, its cancellation, who called it, and when its
//! reply was delivered.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The context of one incoming call, passed to every service method.
///
/// A method that calls other machines passes it on with [`crate::Call::context`], so that the
/// caller's deadline and cancellation reach those calls too. When the caller goes away (it
/// dropped its call, or the deadline passed), the method's future is dropped; the token
/// ([`Context::cancelled`]) lets tasks the method spawned notice it.
#[derive(Debug, Clone)]
pub struct Context {
    deadline: Option<Instant>,
    cancel: CancellationToken,
    peer: Option<SocketAddr>,
    reply: Option<Arc<ReplyWatch>>,
}

impl Context {
    /// A context with no deadline and no peer (for calling methods directly, in tests).
    pub fn background() -> Self {
        Self {
            deadline: None,
            cancel: CancellationToken::new(),
            peer: None,
            reply: None,
        }
    }

    pub(crate) fn for_call(
        deadline: Option<Instant>,
        peer: SocketAddr,
        reply: Arc<ReplyWatch>,
    ) -> Self {
        Self {
            deadline,
            cancel: CancellationToken::new(),
            peer: Some(peer),
            reply: Some(reply),
        }
    }

    /// When the caller stops waiting, if it set a deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The time left before the deadline (zero once it has passed), if there is one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Whether the call was canceled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Completes when the call is canceled.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// The token canceled with the call, to hand to spawned tasks.
    pub fn token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// The address of the calling endpoint, if the call came over the network.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// A future that completes once this call's reply has reached the caller (its transport
    /// acknowledged every byte), with `true`, or once it is known that it never will (the call
    /// failed to reply, the caller went away, the connection was lost), with `false`. For a
    /// method that must act after its caller has the reply, such as one that ends its own
    /// process: ask before the method returns, then await the future in a task of its own.
    ///
    /// A context that belongs to no call (see [`Context::background`]) completes at once with
    /// `false`.
    pub fn reply_delivered(&self) -> impl Future<Output = bool> + Send + 'static {
        let watch = self.reply.clone();
        if let Some(w) = &watch {
            w.wanted.store(true, Ordering::Release);
        }
        async move {
            match watch {
                Some(w) => w.settled().await,
                None => false,
            }
        }
    }
}

impl Default for Context {
    fn default() -> Self {
        Self::background()
    }
}

const PENDING: u8 = 0;
const DELIVERED: u8 = 1;
const LOST: u8 = 2;

/// Whether a call's reply was delivered, for [`Context::reply_delivered`]. The server settles it
/// once (later settlements are ignored), and as lost if it is dropped unsettled.
#[derive(Debug, Default)]
pub(crate) struct ReplyWatch {
    wanted: AtomicBool,
    outcome: AtomicU8,
    notify: Notify,
}

impl ReplyWatch {
    /// Whether a method asked to know when its reply is delivered (the server then waits for the
    /// caller's acknowledgement, which it otherwise does not).
    pub(crate) fn wanted(&self) -> bool {
        self.wanted.load(Ordering::Acquire)
    }

    /// Records whether the reply was delivered and wakes the waiters.
    pub(crate) fn settle(&self, delivered: bool) {
        let outcome = if delivered { DELIVERED } else { LOST };
        if self
            .outcome
            .compare_exchange(PENDING, outcome, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.notify.notify_waiters();
        }
    }

    async fn settled(&self) -> bool {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.outcome.load(Ordering::Acquire) {
                PENDING => notified.await,
                outcome => return outcome == DELIVERED,
            }
        }
    }
}

/// Settles a call's [`ReplyWatch`] as lost unless it was settled before, however the call's
/// task ends (an aborted task included).
#[derive(Debug)]
pub(crate) struct SettleOnDrop(pub(crate) Arc<ReplyWatch>);

impl Drop for SettleOnDrop {
    fn drop(&mut self) {
        self.0.settle(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reply_delivered_resolves_once_settled() {
        let watch = Arc::new(ReplyWatch::default());
        let ctx = Context::for_call(None, SocketAddr::from(([127, 0, 0, 1], 1)), watch.clone());
        let delivered = ctx.reply_delivered();
        assert!(watch.wanted());
        let waiter = tokio::spawn(delivered);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        watch.settle(true);
        watch.settle(false); // ignored: settled once
        assert!(matches!(waiter.await, Ok(true)));
        assert!(ctx.reply_delivered().await, "a later ask sees the outcome");
    }

    #[tokio::test]
    async fn an_unsettled_watch_is_lost_when_dropped() {
        let watch = Arc::new(ReplyWatch::default());
        let ctx = Context::for_call(None, SocketAddr::from(([127, 0, 0, 1], 1)), watch.clone());
        drop(SettleOnDrop(watch));
        assert!(!ctx.reply_delivered().await);
        assert!(!Context::background().reply_delivered().await);
    }
}
