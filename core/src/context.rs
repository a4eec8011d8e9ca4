//! The context a method runs in: its deadline, its cancellation, who called it, and when its
//! reply was delivered.

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bigmachine_quic::Identity;
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
    caller: Option<Arc<Identity>>,
}

impl Context {
    /// A context with no deadline and no peer (for calling methods directly, in tests).
    pub fn background() -> Self {
        Self {
            deadline: None,
            cancel: CancellationToken::new(),
            peer: None,
            caller: None,
        }
    }

    pub(crate) fn for_call(
        deadline: Option<Instant>,
        peer: SocketAddr,
        caller: Arc<Identity>,
    ) -> Self {
        Self {
            deadline,
            cancel: CancellationToken::new(),
            peer: Some(peer),
            caller: Some(caller),
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

    /// Who called, as the caller's verified certificate states (the driver, or a machine and
    /// its name), if the call came over the network.
    pub fn caller(&self) -> Option<&Identity> {
        self.caller.as_deref()
    }

    /// A future that completes once this call's reply has reached the caller (its transport
    /// acknowledged every byte), with `true`, or once it is known that it never will (the call
    /// failed to reply, the caller went away, the connection was lost), with `false`. For a
    /// method that must act after its caller has the reply, such as one that ends its own
    /// process: ask in the method itself, before it returns (not in a task it spawned), then
    /// await the future wherever suits.
    ///
    /// Asked anywhere else, or of a context that belongs to no call (see
    /// [`Context::background`]), it completes at once with `false`.
    pub fn reply_delivered(&self) -> impl Future<Output = bool> + Send + 'static {
        let watch = match self.peer {
            Some(_) => REPLY
                .try_with(|slot| slot.borrow_mut().watch().clone())
                .ok(),
            None => None,
        };
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

tokio::task_local! {
    /// The reply watch of the call whose handler is being polled: created only when the method
    /// asks for it, so that calls that do not ask cost nothing.
    static REPLY: RefCell<ReplySlot>;
}

/// Runs a call's handler where [`Context::reply_delivered`] can find the call; returns the
/// handler's output and the call's [`ReplySlot`] (holding a watch if the method asked).
pub(crate) fn with_reply_slot<F: Future>(handler: F) -> WithReplySlot<F> {
    WithReplySlot {
        scoped: REPLY.scope(RefCell::new(ReplySlot(None)), handler),
    }
}

pin_project_lite::pin_project! {
    /// The future of [`with_reply_slot`]: written by hand so that the handler's future is
    /// stored once (an `async fn` would hold it both as its argument and as its awaitee, and
    /// every call's task carries it).
    pub(crate) struct WithReplySlot<F: Future> {
        #[pin]
        scoped: tokio::task::futures::TaskLocalFuture<RefCell<ReplySlot>, F>,
    }
}

impl<F: Future> Future for WithReplySlot<F> {
    type Output = (F::Output, ReplySlot);

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let mut scoped = self.project().scoped;
        let output = std::task::ready!(scoped.as_mut().poll(cx));
        let slot = scoped
            .take_value()
            .map_or(ReplySlot(None), RefCell::into_inner);
        Poll::Ready((output, slot))
    }
}

const PENDING: u8 = 0;
const DELIVERED: u8 = 1;
const LOST: u8 = 2;

/// Whether a call's reply was delivered, for [`Context::reply_delivered`]. Settled once
/// (later settlements are ignored).
#[derive(Debug, Default)]
pub(crate) struct ReplyWatch {
    outcome: AtomicU8,
    notify: Notify,
}

impl ReplyWatch {
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

/// A call's place for its [`ReplyWatch`]: empty unless the method asked. However the call
/// ends, dropping the slot settles a watch nobody settled as lost, so no waiter waits for ever.
#[derive(Debug)]
pub(crate) struct ReplySlot(Option<Arc<ReplyWatch>>);

impl ReplySlot {
    /// The watch, created on first use.
    fn watch(&mut self) -> &Arc<ReplyWatch> {
        self.0.get_or_insert_with(Default::default)
    }

    /// The watch, if the method asked for one.
    pub(crate) fn asked(&self) -> Option<&ReplyWatch> {
        self.0.as_deref()
    }
}

impl Drop for ReplySlot {
    fn drop(&mut self) {
        if let Some(watch) = &self.0 {
            watch.settle(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call_context() -> Context {
        let caller = Identity {
            role: bigmachine_quic::Role::Machine,
            name: "test".into(),
        };
        Context::for_call(
            None,
            SocketAddr::from(([127, 0, 0, 1], 1)),
            Arc::new(caller),
        )
    }

    // The futures are awaited after their call's handler ended, as methods use them.
    #[allow(clippy::async_yields_async)]
    #[tokio::test]
    async fn reply_delivered_resolves_once_settled() {
        let ctx = call_context();
        let (delivered, slot) = with_reply_slot(async { ctx.reply_delivered() }).await;
        let watch = slot.asked().map(|w| w as *const ReplyWatch);
        assert!(watch.is_some(), "asking creates the watch");
        let waiter = tokio::spawn(delivered);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        if let Some(w) = slot.asked() {
            w.settle(true);
            w.settle(false); // ignored: settled once
        }
        assert!(matches!(waiter.await, Ok(true)));
    }

    #[allow(clippy::async_yields_async)]
    #[tokio::test]
    async fn an_unsettled_watch_is_lost_when_its_call_ends() {
        let ctx = call_context();
        let (delivered, slot) = with_reply_slot(async { ctx.reply_delivered() }).await;
        drop(slot);
        assert!(!delivered.await);
        let ((), slot) = with_reply_slot(async {}).await;
        assert!(slot.asked().is_none(), "no watch unless asked");
        assert!(!ctx.reply_delivered().await, "asked outside its call");
        assert!(!Context::background().reply_delivered().await);
    }
}
